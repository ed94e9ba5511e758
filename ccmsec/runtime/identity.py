"""Who a peer is: the ccmsec identity its certificate states, and the TLS identity a process holds.

Every certificate of the internal cluster CA names exactly one identity, in one URI subject
alternative name:

    spiffe://ccmsec/<role>/<node>

`role` is a service role (callmanager, capf, ...) or a client role (`cli` for the command line,
`admin-api` for the HTTPS administration API that runs inside callmanager), `node` the instance.
A server decides who calls from the certificate alone, through `identity_of` — the one parser.
A certificate with no such URI, two of them, another trust domain, an unknown role or a malformed
node states no identity and is refused, whatever else it says (its CN and DNS names are ignored).

A process holds only its own identity: a folder with `tls.crt`, `tls.key` (0600) and `ca.crt`
(the cluster CA certificate, never its key). Services only load it (`load_identity`); issuing is
the job of what holds the CA key (`ccmsec.cluster.pki`, used by `ccmsec up` and `ccmsec pki issue`).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from ccmsec.runtime.settings import ROLES as SERVICE_ROLES

TRUST_DOMAIN = "ccmsec"
SCHEME = "spiffe"
CLIENT_ROLES = ("cli", "admin-api")
IDENTITY_ROLES = (*SERVICE_ROLES, *CLIENT_ROLES)
_NODE = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62})\Z")
_MAX_URI = 256

CERT_FILE, KEY_FILE, CA_FILE = "tls.crt", "tls.key", "ca.crt"


class IdentityError(ValueError):
    """A certificate or folder that states no valid ccmsec identity; the message says why."""


@dataclass(frozen=True)
class Identity:
    role: str
    node: str

    @property
    def uri(self) -> str:
        return f"{SCHEME}://{TRUST_DOMAIN}/{self.role}/{self.node}"

    def __str__(self) -> str:
        return f"{self.role}/{self.node}"


def make_identity(role: str, node: str) -> Identity:
    """Validated (role, node); raises IdentityError."""
    if role not in IDENTITY_ROLES:
        raise IdentityError(f"unknown role {role!r}; expected one of {', '.join(IDENTITY_ROLES)}")
    if not isinstance(node, str) or not _NODE.match(node):
        raise IdentityError(f"bad node name {node!r}: 1-63 of a-z 0-9 . _ -, starting with a letter or digit")
    return Identity(role, node)


def parse_identity_uri(uri: str) -> Identity:
    prefix = f"{SCHEME}://{TRUST_DOMAIN}/"
    if len(uri) > _MAX_URI:
        raise IdentityError("identity URI too long")
    if not uri.startswith(prefix):
        raise IdentityError(f"identity URI {uri[:80]!r} is not in trust domain {prefix}")
    parts = uri[len(prefix):].split("/")
    if len(parts) != 2:
        raise IdentityError(f"identity URI {uri[:80]!r} is not {prefix}<role>/<node>")
    return make_identity(*parts)


def identity_of(cert: x509.Certificate, *, purpose: str | None = None) -> Identity:
    """The identity a certificate states (raises IdentityError).

    purpose "client" / "server" also requires the matching extended key usage, so that a
    server-only certificate never passes as a caller (TLS checks this too; this keeps the rule
    in the one parser).
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise IdentityError("certificate has no subject alternative names (no identity URI)") from None
    except ValueError as exc:
        raise IdentityError(f"certificate extensions unreadable: {exc}") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if not uris:
        raise IdentityError("certificate has no identity URI")
    if len(uris) > 1:
        raise IdentityError(f"certificate has {len(uris)} URIs; an identity certificate has exactly one")
    if purpose is not None:
        wanted = {"client": ExtendedKeyUsageOID.CLIENT_AUTH, "server": ExtendedKeyUsageOID.SERVER_AUTH}[purpose]
        try:
            usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            raise IdentityError("certificate has no extended key usage") from None
        if wanted not in usages:
            raise IdentityError(f"certificate is not for {purpose} authentication")
    return parse_identity_uri(uris[0])


class IdentityCache:
    """PEM bytes of a peer certificate -> its Identity (or the IdentityError), parsed once.

    A connection presents the same bytes on every call, so authorization costs one dict look-up
    per call. Bounded: cleared when full (certificates are few; an attacker cycling certificates
    only costs itself parsing time).
    """

    def __init__(self, limit: int = 4096):
        self._limit = limit
        self.known: dict[bytes, Identity] = {}          # PEM -> Identity
        # The peer's verified subject alternative names (gRPC `peer_identities()`) -> the Identity
        # its certificate was parsed to, read directly on the per-call fast path: reading the names
        # costs well under a microsecond, the whole auth context with the PEM about 25 (see
        # docs/performance.md). Only names of a certificate that parsed to an identity are put
        # here; the identity is its one URI among those names, and TLS has checked the chain.
        self.by_names: dict[tuple, Identity] = {}
        self._refused: dict[bytes, IdentityError] = {}

    def remember_names(self, names, identity: Identity) -> None:
        """Remember the peer names of a certificate `get` parsed to `identity`."""
        key = tuple(names or ())
        if key and identity.uri.encode() in key:
            if len(self.by_names) >= self._limit:
                self.by_names.clear()
            self.by_names[key] = identity

    def get(self, pem: bytes) -> Identity:
        found = self.known.get(pem)
        if found is not None:
            return found
        error = self._refused.get(pem)
        if error is None:
            try:
                found = identity_of(x509.load_pem_x509_certificate(pem), purpose="client")
            except IdentityError as exc:
                error = exc
            except ValueError as exc:
                error = IdentityError(f"unreadable certificate: {exc}")
            if len(self.known) + len(self._refused) >= self._limit:
                self.known.clear()
                self._refused.clear()
                self.by_names.clear()
            if found is not None:
                self.known[pem] = found
                return found
            self._refused[pem] = error
        raise error


@dataclass(frozen=True)
class TlsIdentity:
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes
    cert_path: Path
    key_path: Path
    ca_path: Path

    @property
    def identity(self) -> Identity:
        return identity_of(x509.load_pem_x509_certificate(self.cert_pem))

    @property
    def folder(self) -> Path:
        return self.cert_path.parent


# --- where identities live --------------------------------------------------------------------

def identities_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "identities"


def service_identity_dir(data_dir: Path, node: str) -> Path:
    """DATA/identities/services/<node>: the service's own certificate, key and NATS credentials."""
    return identities_dir(data_dir) / "services" / node


def admin_api_identity_dir(service_dir: Path) -> Path:
    """The administration API's identity, kept inside the callmanager's own folder (same process)."""
    return Path(service_dir) / "admin-api"


def client_identity_dir(data_dir: Path, name: str) -> Path:
    """DATA/identities/clients/<name>: command line, benches, tests."""
    return identities_dir(data_dir) / "clients" / name


def pki_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "pki"


def load_identity(folder: Path) -> TlsIdentity:
    """Load an identity folder (no CA key needed, none opened). Raises IdentityError with the reason."""
    folder = Path(folder)
    paths = folder / CERT_FILE, folder / KEY_FILE, folder / CA_FILE
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise IdentityError(f"no identity in {folder} (missing {', '.join(missing)}); "
                            "it is issued by `ccmsec up` or `ccmsec pki issue`")
    key_mode = stat.S_IMODE(os.stat(paths[1]).st_mode)
    if key_mode & 0o077:
        raise IdentityError(f"{paths[1]} is readable by others (mode {key_mode:o}); it must be 0600")
    try:
        cert_pem, key_pem, ca_pem = (p.read_bytes() for p in paths)
    except OSError as exc:
        raise IdentityError(f"cannot read identity in {folder}: {exc.strerror}") from None
    try:
        identity_of(x509.load_pem_x509_certificate(cert_pem))
    except ValueError as exc:
        raise IdentityError(f"{paths[0]}: {exc}") from None
    return TlsIdentity(cert_pem, key_pem, ca_pem, *paths)


# --- issuing (needs the cluster CA key: the runner, the CLI, tests) ---------------------------

def ensure_cluster_ca(data_dir: Path):
    """The cluster CA of a data directory, created on first use. Issuer side only."""
    from ccmsec.cluster import pki

    return pki.ensure_cluster_ca(data_dir)


def service_identity(data_dir: Path, role: str, node: str, host: str) -> TlsIdentity:
    """Issue (or re-use) the server+client identity of one service node into its folder."""
    from ccmsec.cluster import pki

    return pki.issue_service_identity(data_dir, role, node, host)


def client_identity(data_dir: Path, name: str = "cli") -> TlsIdentity:
    """The client-only `cli` identity named `name` (the command line's, a bench's, a test's)."""
    from ccmsec.cluster import pki

    return pki.issue_client_identity(data_dir, name)


def ensure_private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path

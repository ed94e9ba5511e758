"""The cluster's issuer: the internal cluster CA and the identities it gives out.

Only what issues certificates opens the CA key (`DATA/pki/cluster-ca.key`): the local runner
(`ccmsec up` issues every service its identity before starting it), `ccmsec pki issue` (the
one-shot init step of compose gives each container only its own folder) and the command line for
its own `cli` identity. A service only loads its folder (`ccmsec.runtime.identity.load_identity`).

An identity folder holds `tls.crt` (with the `spiffe://ccmsec/<role>/<node>` URI), `tls.key`
(0600) and `ca.crt` (the CA certificate); folders are 0700. The folder of every identity that
connects to the event bus (each service, the CLI) also holds `nats.nk`, its own nkey seed (0600,
BUS-1); the NATS server's configuration (`nats_config`) names only the public keys. Issuing is idempotent: a folder whose
certificate still names the same identity, carries the wanted names, has the wanted key usages,
was signed by this CA and stays valid for `RENEW_BEFORE` (30 days) more is kept; otherwise it is
re-issued (so `ccmsec up` renews an identity before it expires).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
from pathlib import Path
from typing import Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID

from ccmsec.fsutil import atomic_write, file_lock
from ccmsec.runtime import bus_policy
from ccmsec.pki import ca as ca_mod
from ccmsec.runtime.identity import (
    CA_FILE, CERT_FILE, KEY_FILE, IdentityError, TlsIdentity, admin_api_identity_dir,
    client_identity_dir, identity_of, load_identity, make_identity, pki_dir, service_identity_dir,
)

CA_CERT, CA_KEY = "cluster-ca.crt", "cluster-ca.key"
# A kept certificate must stay valid this long: one closer to its end (or past it) is issued again.
RENEW_BEFORE = dt.timedelta(days=30)
_WILDCARDS = ("0.0.0.0", "::", "")


def _private_dir(path: Path) -> Path:
    """0700, or — a folder the local runner shares with its services' group (setgid, as DATA/pki is
    under service users: ccmsec.cluster.accounts) — that group's read access kept, the world's removed."""
    path.mkdir(parents=True, exist_ok=True)
    st = path.stat()
    os.chmod(path, 0o2750 if st.st_mode & stat.S_ISGID else 0o700)
    return path


def _lock(data_dir: Path):
    return file_lock(_private_dir(pki_dir(data_dir)) / ".lock")


def ensure_cluster_ca(data_dir: Path) -> ca_mod.Issued:
    """The cluster CA of `data_dir`, created once (under a lock, so concurrent callers agree)."""
    d = _private_dir(pki_dir(data_dir))
    crt, key = d / CA_CERT, d / CA_KEY
    with _lock(data_dir):
        if crt.exists() and key.exists():
            return ca_mod.load_pair(crt, key)
        if crt.exists() or key.exists():  # half a CA: never silently replace the cluster's CA
            have, lacking = (crt, key) if crt.exists() else (key, crt)
            raise IdentityError(f"{have} exists but {lacking} does not: issue from where the "
                                "cluster CA is kept (or remove both to start a new cluster)")
        issued = ca_mod.create_ca(ca_mod.name("ccmsec cluster CA", "internal"), ca_mod.new_key("ec256"))
        ca_mod.save_pair(issued, crt, key)
        return issued


def _current(folder: Path, uri: str, dns: set[str], ips: set[str], server: bool, client: bool,
             ca_pem: bytes) -> bool:
    """True when the folder's certificate can be kept as it is."""
    try:
        held = load_identity(folder)
    except IdentityError:
        return False
    if held.ca_pem != ca_pem:
        return False
    try:
        cert = x509.load_pem_x509_certificate(held.cert_pem)
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
        if identity_of(cert).uri != uri:
            return False
        if cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc) < RENEW_BEFORE:
            return False  # expired or about to: kept, it would fail every TLS handshake
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    want_usages = ({ExtendedKeyUsageOID.SERVER_AUTH} if server else set()) | (
        {ExtendedKeyUsageOID.CLIENT_AUTH} if client else set())
    return (usages == want_usages and dns <= set(san.get_values_for_type(x509.DNSName))
            and ips <= {str(a) for a in san.get_values_for_type(x509.IPAddress)})


def issue_identity(data_dir: Path, role: str, node: str, out_dir: Path, *, dns: Iterable[str] = (),
                   ips: Iterable[str] = (), server: bool = True, client: bool = True) -> TlsIdentity:
    """Issue (or keep) the identity `role/node` into `out_dir`, signed by the cluster CA of `data_dir`."""
    ident = make_identity(role, node)
    dns_set = {d for d in dns if d}
    ip_set = {str(ipaddress.ip_address(a)) for a in ips if a not in _WILDCARDS}
    out_dir = Path(out_dir)
    ca_cert = pki_dir(data_dir) / CA_CERT
    if ca_cert.exists() and _current(out_dir, ident.uri, dns_set, ip_set, server, client, ca_cert.read_bytes()):
        if role in bus_policy.BUS_ROLES:
            ensure_nats_seed(out_dir)
        return load_identity(out_dir)  # nothing to issue: the CA key stays closed
    cluster_ca = ensure_cluster_ca(data_dir)
    with _lock(data_dir):
        if not _current(out_dir, ident.uri, dns_set, ip_set, server, client, cluster_ca.pem):
            issued = ca_mod.issue_with_new_key(
                cluster_ca, ca_mod.name(f"{ident.role} {ident.node}", "ccmsec internal"), "ec256",
                dns_names=sorted(dns_set), ip_addresses=sorted(ip_set), uris=[ident.uri],
                server=server, client=client,
            )
            _private_dir(out_dir)
            atomic_write(out_dir / KEY_FILE, issued.key_pem, mode=0o600)
            atomic_write(out_dir / CERT_FILE, issued.pem)
            atomic_write(out_dir / CA_FILE, cluster_ca.pem)
        _private_dir(out_dir)
    if role in bus_policy.BUS_ROLES:
        ensure_nats_seed(out_dir)
    return load_identity(out_dir)


def issue_service_identity(data_dir: Path, role: str, node: str, host: str = "", *,
                           out_dir: Path | None = None, dns: Iterable[str] = (),
                           ips: Iterable[str] = (), admin_api: bool = True) -> TlsIdentity:
    """A service node's server+client identity (DNS names: role, node, localhost and `dns`;
    addresses: `host` and `ips`). A callmanager publisher (`admin_api`) also gets the `admin-api`
    identity of the HTTPS administration API inside its folder: the API's server certificate and
    its client certificate towards peers (so policies tell an administrator's act from call
    control's). A subscriber mounts no administration API and gets none: a compromised subscriber
    must not hold an administrator's credential."""
    out = Path(out_dir) if out_dir is not None else service_identity_dir(data_dir, node)
    names = {role, node, "localhost", *dns}
    addresses = [host, *ips]
    held = issue_identity(data_dir, role, node, out, dns=names, ips=addresses)
    if role == "callmanager" and admin_api:
        issue_identity(data_dir, "admin-api", node, admin_api_identity_dir(out),
                       dns=names, ips=[*addresses, "127.0.0.1"])
    return held


def issue_client_identity(data_dir: Path, name: str = "cli", *, out_dir: Path | None = None) -> TlsIdentity:
    """A client-only `cli` identity (`cli/<name>`): the command line's, a bench's, a test's."""
    out = Path(out_dir) if out_dir is not None else client_identity_dir(data_dir, name)
    return issue_identity(data_dir, "cli", name, out, dns=[name], server=False, client=True)


def issue_local_cluster(cluster) -> None:
    """Everything the local runner gives out before it starts anything: each service node its
    identity (at its loopback address) and the command line its `cli` identity."""
    from ccmsec.runtime.identity import service_identity_dir

    folders = []
    for inst in cluster.instances:
        issue_service_identity(cluster.data_dir, inst.role, inst.node, inst.host, admin_api=inst.publisher)
        folders.append(service_identity_dir(cluster.data_dir, inst.node))
    issue_client_identity(cluster.data_dir, "cli")
    folders.append(client_identity_dir(cluster.data_dir, "cli"))
    from ccmsec.cluster.topology import NATS_PORT

    conf = nats_config(cluster.data_dir, folders, listen=f"{cluster.nats_host}:{NATS_PORT}",
                       store_dir=str(cluster.data_dir / "nats"), server_name=f"ccmsec-{cluster.base}")
    path = local_nats_config_path(cluster.data_dir)
    _private_dir(path.parent)
    atomic_write(path, conf.encode(), mode=0o600)


# --- event bus credentials (issue 9 §3, BUS-1) -----------------------------------------------

NATS_ADMIN_SEED = "nats-admin.nk"


def _new_seed() -> bytes:
    import nkeys

    return nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)


def public_key_of(seed: bytes) -> str:
    import nkeys

    try:
        return nkeys.from_seed(bytearray(seed)).public_key.decode()
    except Exception as exc:  # nkeys raises its own errors for a malformed seed
        raise IdentityError(f"not an nkey seed: {type(exc).__name__}") from None


def ensure_nats_seed(folder: Path) -> str:
    """The nkey seed of an identity folder, created once (0600); returns its public key."""
    path = Path(folder) / "nats.nk"
    if path.is_file():
        try:
            return public_key_of(path.read_bytes().strip())
        except IdentityError:
            pass  # unreadable: replaced below
    seed = _new_seed()
    atomic_write(path, seed + b"\n", mode=0o600)
    return public_key_of(seed)


def nats_admin_seed_path(data_dir: Path) -> Path:
    """The bus operator's seed (every permission: stream administration). Kept with the CA key in
    DATA/pki, never in a service's folder."""
    return pki_dir(data_dir) / NATS_ADMIN_SEED


def ensure_nats_admin(data_dir: Path) -> str:
    _private_dir(pki_dir(data_dir))
    with _lock(data_dir):
        path = nats_admin_seed_path(data_dir)
        if not path.is_file():
            atomic_write(path, _new_seed() + b"\n", mode=0o600)
        return public_key_of(path.read_bytes().strip())


def bus_user_of(folder: Path) -> bus_policy.BusUser:
    """The bus user an identity folder holds: its role and node (from its certificate) and the
    public key of its seed."""
    held = load_identity(folder)
    ident = held.identity
    if ident.role not in bus_policy.BUS_ROLES:
        raise IdentityError(f"{folder}: {ident} does not connect to the event bus")
    seed = Path(folder) / "nats.nk"
    if not seed.is_file():
        raise IdentityError(f"{folder} has no nats.nk (issue it again with `ccmsec pki issue`)")
    return bus_policy.BusUser(ident.role, ident.node, public_key_of(seed.read_bytes().strip()))


def nats_config(data_dir: Path, folders: Iterable[Path], *, listen: str, store_dir: str,
                server_name: str) -> str:
    """The NATS server configuration for the identities in `folders` plus the bus operator (whose
    seed stays in DATA/pki): users by public key, each with its role's permissions, no anonymous
    user (BUS-1, BUS-2, BUS-4)."""
    users = [bus_policy.BusUser("admin", "operator", ensure_nats_admin(data_dir))]
    users += [bus_user_of(f) for f in folders]
    return bus_policy.server_config(users, listen=listen, store_dir=store_dir, server_name=server_name)


def local_nats_config_path(data_dir: Path) -> Path:
    return Path(data_dir) / "run" / "nats.conf"

"""Named CLI contexts: how the command line reaches a cluster that is not the local runner's.

A context is a folder `CONFIG/contexts/<name>/` (CONFIG: $CCMSEC_CONFIG_DIR or the per-user
config directory) holding `context.json` (the administration API's URL and the user), `ca.crt`
(the cluster CA certificate that verifies the API) and `password` (mode 0600; the folder 0700).
The context in use is $CCMSEC_CONTEXT, else the one named in CONFIG/current-context, else none —
then commands find the local runner's cluster through --data as before.

A context made from a compose cluster's client bundle (`ccmsec compose client-bundle`) also holds
`cluster/`, laid out like a cluster data folder: the command line's own `cli` identity
(identities/clients/cli, key and NATS nkey seed 0600), the CA certificate and `run/endpoints.json`
with the host side of the published ports (the event bus's as `nats_url`). The commands that need a service's gRPC (mutual TLS) use it as their data
folder when no --data or $CCMSEC_DATA_DIR is given.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature

from ccmsec.fsutil import atomic_write

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
MAX_FILE = 64 * 1024


class ContextError(ValueError):
    """A context that cannot be used; the message says why."""


@dataclass(frozen=True)
class Context:
    name: str
    url: str
    user: str
    folder: Path

    @property
    def cafile(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def password_file(self) -> Path:
        return self.folder / "password"

    @property
    def cluster_dir(self) -> Path:
        """The data folder for gRPC commands (from a client bundle), whether or not there is one."""
        return self.folder / "cluster"

    @property
    def reaches_grpc(self) -> bool:
        return (self.cluster_dir / "run" / "endpoints.json").is_file()

    def password(self) -> str:
        try:
            mode = os.stat(self.password_file).st_mode & 0o777
            if mode & 0o077:
                raise ContextError(f"{self.password_file} is readable by others (mode {mode:o}); it must be 0600")
            with open(self.password_file, "rb") as fh:
                raw = fh.read(MAX_FILE)
        except OSError as exc:
            raise ContextError(f"context {self.name}: cannot read {self.password_file}: {exc.strerror}") from None
        return raw.decode("utf-8", "replace").rstrip("\r\n")


def config_dir() -> Path:
    env = os.environ.get("CCMSEC_CONFIG_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_config_dir("ccmsec"))


def _folder(name: str) -> Path:
    if not NAME.match(name or ""):
        raise ContextError(f"bad context name {name!r}: 1-63 of letters, digits, '.', '_', '-'")
    return config_dir() / "contexts" / name


def _read_bounded(path: Path) -> bytes:
    with open(path, "rb") as fh:
        data = fh.read(MAX_FILE + 1)
    if len(data) > MAX_FILE:
        raise ContextError(f"{path} is larger than {MAX_FILE} bytes")
    return data


def save(name: str, url: str, ca_pem: bytes, password: str, user: str = "admin") -> Context:
    """Create or replace a context (the password file 0600, the folder 0700)."""
    if not url.startswith("https://"):
        raise ContextError(f"administration API URL must be https://, got {url!r}")
    try:  # saved only if it can be used: a host, a port in range, text
        url.encode("utf-8")
        parts = urlsplit(url)
        if not parts.hostname:
            raise ValueError("no host")
        parts.port  # noqa: B018  (raises ValueError when out of range or not a number)
    except (ValueError, UnicodeError) as exc:
        raise ContextError(f"administration API URL {url!r} is not a valid URL: {exc}") from None
    if b"-----BEGIN CERTIFICATE-----" not in ca_pem:
        raise ContextError("the CA file holds no PEM certificate")
    if not password or "\n" in password:
        raise ContextError("the password must be one non-empty line")
    folder = _folder(name)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    atomic_write(folder / "password", (password + "\n").encode(), mode=0o600)
    atomic_write(folder / "ca.crt", ca_pem)
    atomic_write(folder / "context.json", json.dumps({"url": url.rstrip("/"), "user": user}, indent=2).encode())
    return load(name)


BUNDLE_FORMAT = "ccmsec-client-bundle/1"
_IDENTITY_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
NATS_URL = re.compile(r"nats://[A-Za-z0-9.:\[\]_-]{1,253}:[0-9]{1,5}")


def save_bundle(name: str, bundle: dict, url: str | None = None) -> Context:
    """A context from a compose cluster's client bundle: the administration API (URL, CA, user,
    password) and `cluster/` for the gRPC commands (the cli identity, the published ports)."""
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise ContextError(f"not a client bundle (expected format {BUNDLE_FORMAT!r}; make one with "
                           "`docker-compose run --rm -T cli compose client-bundle`)")
    try:
        ca, password, identity = str(bundle["ca"]), str(bundle["password"]), dict(bundle["identity"])
        services = {str(role): dict(svc) for role, svc in dict(bundle["services"]).items()}
        url = url or str(bundle["admin_url"])
        user = str(bundle.get("user") or "admin")
        nats_url = bundle.get("nats_url")
    except (KeyError, TypeError, ValueError) as exc:
        raise ContextError(f"client bundle: missing or malformed field {exc}") from None
    if nats_url is not None:
        # the event bus's published port; the cli identity's nkey (nats.nk) is what it admits
        if not isinstance(nats_url, str) or not NATS_URL.fullmatch(nats_url):
            raise ContextError(f"client bundle: nats_url must be nats://HOST:PORT, got {nats_url!r}")
        if "nats.nk" not in identity:
            raise ContextError("client bundle: a nats_url needs the identity's nkey seed nats.nk")
    if not {"tls.crt", "tls.key", "ca.crt"} <= set(identity):
        raise ContextError("client bundle: the identity needs tls.crt, tls.key and ca.crt")
    for role, svc in services.items():
        if not isinstance(svc.get("host"), str) or not isinstance(svc.get("grpc_port"), int):
            raise ContextError(f"client bundle: service {role!r} needs host and grpc_port")
    for fname, text in identity.items():
        if not _IDENTITY_FILE.match(fname) or not isinstance(text, str):
            raise ContextError(f"client bundle: bad identity file name {fname!r}")
    _check_issued_by_ca(identity, ca)
    ctx = save(name, url, ca.encode(), password, user)
    target = ctx.cluster_dir
    shutil.rmtree(target, ignore_errors=True)  # a replaced bundle leaves nothing of the old one
    ident = target / "identities" / "clients" / "cli"
    for folder in (target, ident.parent.parent, ident.parent, ident, target / "pki", target / "run"):
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
    for fname, text in identity.items():
        private = fname.endswith((".key", ".nk"))
        atomic_write(ident / fname, text.encode(), mode=0o600 if private else 0o644)
    atomic_write(target / "pki" / "cluster-ca.crt", ca.encode())
    endpoints = {"admin_url": url.rstrip("/"), "services": services,
                 **({"nats_url": nats_url} if nats_url else {})}
    atomic_write(target / "run" / "endpoints.json", json.dumps(endpoints, indent=2, sort_keys=True).encode())
    return ctx


def _check_issued_by_ca(identity: dict, ca_pem: str) -> None:
    """The bundle's identity must come from the bundle's CA (and carry that CA as its ca.crt)."""
    from cryptography import x509

    try:
        ca = x509.load_pem_x509_certificate(ca_pem.encode())
        cert = x509.load_pem_x509_certificate(identity["tls.crt"].encode())
        own_ca = x509.load_pem_x509_certificate(identity["ca.crt"].encode())
    except (ValueError, AttributeError):
        raise ContextError("client bundle: the CA or the identity is not a PEM certificate") from None
    if own_ca != ca:
        raise ContextError("client bundle: the identity's ca.crt is not the bundle's CA")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ContextError("client bundle: the identity's certificate is not issued by the bundle's CA") from None


def load(name: str) -> Context:
    folder = _folder(name)
    try:
        doc = json.loads(_read_bounded(folder / "context.json"))
    except FileNotFoundError:
        raise ContextError(f"no context named {name!r} (see `ccmsec context list`)") from None
    except (OSError, ValueError) as exc:
        raise ContextError(f"context {name}: unreadable context.json: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("url"), str) or not isinstance(doc.get("user"), str):
        raise ContextError(f"context {name}: context.json needs the strings url and user")
    return Context(name, doc["url"], doc["user"], folder)


def names() -> list[str]:
    root = config_dir() / "contexts"
    try:
        return sorted(p.name for p in root.iterdir() if (p / "context.json").is_file())
    except FileNotFoundError:
        return []


def current_name() -> str | None:
    env = os.environ.get("CCMSEC_CONTEXT")
    if env is not None:
        return env or None  # CCMSEC_CONTEXT= (empty) means: none, whatever the file says
    try:
        name = _read_bounded(config_dir() / "current-context").decode().strip()
    except (OSError, ContextError):
        return None
    return name or None


def use(name: str | None) -> None:
    if name is not None:
        load(name)  # refuses an unknown name
    atomic_write(config_dir() / "current-context", ((name or "") + "\n").encode())


def remove(name: str) -> None:
    ctx = load(name)
    shutil.rmtree(ctx.cluster_dir, ignore_errors=True)
    for f in ("password", "ca.crt", "context.json"):
        (ctx.folder / f).unlink(missing_ok=True)
    ctx.folder.rmdir()
    if current_name() == name and os.environ.get("CCMSEC_CONTEXT") is None:
        use(None)


def active() -> Context | None:
    name = current_name()
    return load(name) if name else None

"""Named CLI contexts: how the command line reaches a cluster that is not the local runner's.

A context is a folder `CONFIG/contexts/<name>/` (CONFIG: $CCMSEC_CONFIG_DIR or the per-user
config directory) holding `context.json` (the administration API's URL and the user), `ca.crt`
(the cluster CA certificate that verifies the API) and `password` (mode 0600; the folder 0700).
The context in use is $CCMSEC_CONTEXT, else the one named in CONFIG/current-context, else none —
then commands find the local runner's cluster through --data as before.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

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
    for f in ("password", "ca.crt", "context.json"):
        (ctx.folder / f).unlink(missing_ok=True)
    ctx.folder.rmdir()
    if current_name() == name and os.environ.get("CCMSEC_CONTEXT") is None:
        use(None)


def active() -> Context | None:
    name = current_name()
    return load(name) if name else None

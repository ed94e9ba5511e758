"""Security tokens (SAST) that sign trust lists, the manufacturer CA, and plain file signers.

A `SecurityToken` is anything with a name, a certificate and `sign(data, digest)`. Today there is
one kind, the `SoftwareToken`: an RSA 2048 key and an X.509 certificate issued by the
manufacturer CA, kept as PKCS#12 encrypted under the token password (`<dir>/<name>.p12`, with the
public certificate alongside as `<name>.crt` so tokens can be listed without their password).

Like the hardware token it stands in for, fifteen wrong passwords lock it for good: the failure
counter lives next to the token (`<name>.state`, JSON, written atomically under a file lock) and a
locked token is refused even with the right password.

Hardware tokens (LATER-6) plug in behind the same ABC: `Pkcs11Token` is the seam and currently
refuses with `TokenNotSupportedError`.
"""

from __future__ import annotations

import abc
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from ccmsec.formats.ctl import Digest
from ccmsec.fsutil import atomic_write, file_lock
from ccmsec.pki.ca import Issued, create_ca, issue_with_new_key, load_pair, name, save_pair

MAX_PASSWORD_FAILURES = 15
TOKEN_KEY_KIND = "rsa2048"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class TokenError(Exception):
    """Base class for token problems; the message is meant for the administrator."""


class TokenNotFoundError(TokenError):
    pass


class TokenExistsError(TokenError):
    pass


class TokenPasswordError(TokenError):
    """Wrong password; `remaining` attempts are left before the token locks."""

    def __init__(self, message: str, remaining: int):
        super().__init__(message)
        self.remaining = remaining


class TokenLockedError(TokenError):
    """Too many wrong passwords: the token is unusable for good."""


class TokenNotSupportedError(TokenError):
    pass


def _hash(digest: Digest | hashes.HashAlgorithm) -> hashes.HashAlgorithm:
    return digest if isinstance(digest, hashes.HashAlgorithm) else Digest(digest).hash()


def _rsa_sign(key, data: bytes, digest: Digest | hashes.HashAlgorithm) -> bytes:
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TokenError("only RSA keys can sign trust lists and signed files")
    return key.sign(data, padding.PKCS1v15(), _hash(digest))


class SecurityToken(abc.ABC):
    """A SAST token: signs trust lists (CTL-1). Satisfies `ccmsec.formats.ctl.Signer`."""

    @property
    @abc.abstractmethod
    def name(self) -> str: ...

    @property
    @abc.abstractmethod
    def certificate(self) -> x509.Certificate: ...

    @abc.abstractmethod
    def sign(self, data: bytes, digest: Digest) -> bytes:
        """RSA PKCS#1 v1.5 signature over `data`."""


class SoftwareToken(SecurityToken):
    """A token whose key lives in an encrypted PKCS#12 file. Obtain one with `open_token`."""

    def __init__(self, name: str, certificate: x509.Certificate, key: rsa.RSAPrivateKey):
        self._name = name
        self._certificate = certificate
        self._key = key

    @property
    def name(self) -> str:
        return self._name

    @property
    def certificate(self) -> x509.Certificate:
        return self._certificate

    def sign(self, data: bytes, digest: Digest) -> bytes:
        return _rsa_sign(self._key, data, digest)

    def __repr__(self) -> str:
        return f"SoftwareToken({self._name!r}, serial={self._certificate.serial_number:x})"


class Pkcs11Token(SecurityToken):
    """Seam for hardware tokens through PKCS#11 (LATER-6); not implemented yet.

    A real implementation would open `module_path`, log in to the slot whose token label is
    `label` with the PIN, find the certificate and key objects, and sign with CKM_SHA*_RSA_PKCS.
    The token itself then enforces its lockout; nothing else in the code needs to change.
    """

    def __init__(self, module_path: str, label: str, pin: str):
        raise TokenNotSupportedError(
            f"hardware tokens through PKCS#11 are not supported yet (module {module_path}, "
            f"token {label!r}); use a software token (`ccmsec token create`)"
        )

    @property
    def name(self) -> str:  # pragma: no cover - unreachable until implemented
        raise TokenNotSupportedError("hardware tokens are not supported yet")

    @property
    def certificate(self) -> x509.Certificate:  # pragma: no cover
        raise TokenNotSupportedError("hardware tokens are not supported yet")

    def sign(self, data: bytes, digest: Digest) -> bytes:  # pragma: no cover
        raise TokenNotSupportedError("hardware tokens are not supported yet")


# --- storage ----------------------------------------------------------------------------------
def _check_name(token_name: str) -> str:
    if not _NAME_RE.match(token_name):
        raise TokenError(f"invalid token name {token_name!r}: use 1-64 letters, digits, '.', '_' "
                         "or '-', starting with a letter or digit")
    return token_name


def _paths(store_dir: Path, token_name: str) -> tuple[Path, Path, Path, Path]:
    store, base = Path(store_dir), _check_name(token_name)  # names may contain dots
    return (store / f"{base}.p12", store / f"{base}.crt", store / f"{base}.state",
            store / f"{base}.lock")




@dataclass(frozen=True)
class TokenState:
    failures: int = 0
    locked: bool = False


def _read_state(path: Path) -> TokenState:
    try:
        raw = json.loads(path.read_text())
        return TokenState(int(raw["failures"]), bool(raw["locked"]))
    except FileNotFoundError:
        return TokenState()
    except (ValueError, KeyError, TypeError):
        # A damaged counter must not reopen a locked token: treat it as locked.
        return TokenState(MAX_PASSWORD_FAILURES, True)


def _write_state(path: Path, state: TokenState) -> None:
    atomic_write(path, json.dumps({"failures": state.failures, "locked": state.locked}).encode(),
                 mode=0o600)


def _encryption(password: bytes) -> serialization.KeySerializationEncryption:
    return (serialization.PrivateFormat.PKCS12.encryption_builder()
            .kdf_rounds(100_000)
            .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
            .hmac_hash(hashes.SHA256())
            .build(password))


def create_software_token(store_dir: Path, token_name: str, password: str,
                          manufacturer_ca: Issued) -> SoftwareToken:
    """A new token: RSA 2048 key, certificate `CN=SAST-<name>` from the manufacturer CA."""
    p12_path, crt_path, state_path, lock_path = _paths(Path(store_dir), token_name)
    if not password:
        raise TokenError("a token password must not be empty")
    with file_lock(lock_path):
        if p12_path.exists():
            raise TokenExistsError(f"token {token_name!r} already exists in {store_dir}")
        issued = issue_with_new_key(
            manufacturer_ca, name(f"SAST-{token_name}", org_unit="SAST", org="ccmsec"),
            TOKEN_KEY_KIND, server=False, client=False, days=3650,
        )
        blob = pkcs12.serialize_key_and_certificates(
            name=token_name.encode(), key=issued.key, cert=issued.cert, cas=[manufacturer_ca.cert],
            encryption_algorithm=_encryption(password.encode()),
        )
        _write_state(state_path, TokenState())
        atomic_write(crt_path, issued.pem)
        atomic_write(p12_path, blob, mode=0o600)  # last: its presence means "token exists"
    return SoftwareToken(token_name, issued.cert, issued.key)  # type: ignore[arg-type]


def open_token(store_dir: Path, token_name: str, password: str) -> SoftwareToken:
    """Unlock a token. Wrong password: TokenPasswordError (and one failure counted);
    fifteen failures: TokenLockedError from then on, whatever the password."""
    p12_path, _, state_path, lock_path = _paths(Path(store_dir), token_name)
    with file_lock(lock_path):
        if not p12_path.exists():
            raise TokenNotFoundError(f"no token {token_name!r} in {store_dir}")
        state = _read_state(state_path)
        if state.locked:
            raise TokenLockedError(f"token {token_name!r} is locked after "
                                   f"{MAX_PASSWORD_FAILURES} wrong passwords")
        try:
            key, cert, _ = pkcs12.load_key_and_certificates(p12_path.read_bytes(),
                                                            password.encode())
        except ValueError:
            failures = state.failures + 1
            locked = failures >= MAX_PASSWORD_FAILURES
            _write_state(state_path, TokenState(failures, locked))
            if locked:
                raise TokenLockedError(
                    f"wrong password for token {token_name!r}; it is now locked after "
                    f"{MAX_PASSWORD_FAILURES} wrong passwords") from None
            remaining = MAX_PASSWORD_FAILURES - failures
            raise TokenPasswordError(f"wrong password for token {token_name!r} "
                                     f"({remaining} attempts left before it locks)",
                                     remaining) from None
        if state.failures:
            _write_state(state_path, TokenState())
    if not isinstance(key, rsa.RSAPrivateKey) or cert is None:
        raise TokenError(f"token {token_name!r} does not hold an RSA key and certificate")
    return SoftwareToken(token_name, cert, key)


@dataclass(frozen=True)
class TokenInfo:
    """What can be known about a token without its password."""

    name: str
    certificate: x509.Certificate
    failures: int
    locked: bool


def token_info(store_dir: Path, token_name: str) -> TokenInfo:
    p12_path, crt_path, state_path, _ = _paths(Path(store_dir), token_name)
    if not p12_path.exists() or not crt_path.exists():
        raise TokenNotFoundError(f"no token {token_name!r} in {store_dir}")
    state = _read_state(state_path)
    try:
        cert = x509.load_pem_x509_certificate(crt_path.read_bytes())
    except ValueError as exc:  # callers report TokenError to the administrator, not a traceback
        raise TokenError(f"{crt_path} is not a certificate ({exc}); restore it from the token "
                         "or from backup") from None
    return TokenInfo(token_name, cert, state.failures, state.locked)


def list_tokens(store_dir: Path) -> list[TokenInfo]:
    store = Path(store_dir)
    if not store.is_dir():
        return []
    return [token_info(store, p.stem) for p in sorted(store.glob("*.p12"))
            if _NAME_RE.match(p.stem) and (store / f"{p.stem}.crt").exists()]


# --- manufacturer CA and MICs ---------------------------------------------------------------------
MANUFACTURER_CA_SUBJECT = name("ccmsec Manufacturing CA", org_unit="Manufacturing", org="ccmsec")


def ensure_manufacturer_ca(pki_dir: Path, key_dir: Path | None = None) -> Issued:
    """`<pki_dir>/manufacturer-ca.{crt,key}`: created once, kept apart from the cluster CA. With
    `key_dir` (phone-sim's own folder in compose) the key is kept there, the certificate where
    every service reads it."""
    pki_dir = Path(pki_dir)
    cert_path = pki_dir / "manufacturer-ca.crt"
    key_path = Path(key_dir if key_dir is not None else pki_dir) / "manufacturer-ca.key"
    with file_lock(pki_dir / ".manufacturer-ca.lock"):
        if cert_path.exists() and key_path.exists():
            return load_pair(cert_path, key_path)
        if cert_path.exists() or key_path.exists():
            raise TokenError(f"half of the manufacturer CA is missing; restore both {cert_path} "
                             f"and {key_path}")
        key_path.parent.mkdir(parents=True, exist_ok=True)
        ca = create_ca(MANUFACTURER_CA_SUBJECT, days=7300)
        save_pair(ca, cert_path, key_path)
        return ca


def issue_mic(manufacturer_ca: Issued, device_name: str, key_kind: str = "rsa2048") -> Issued:
    """A manufacturer-installed certificate (CERT-1) for a phone, e.g. `SEP0011223344AA`."""
    return issue_with_new_key(manufacturer_ca, name(device_name, org_unit="MIC", org="ccmsec"),
                              key_kind, server=False, client=True, days=7300)


# --- plain file signers ---------------------------------------------------------------------------
_LOADED_KEYS: dict[bytes, tuple[x509.Certificate, rsa.RSAPrivateKey]] = {}
_MAX_LOADED_KEYS = 16  # a process signs with a handful of keys; keep the cache bounded


class FileSigner:
    """An X.509 certificate and its private key used as a signer (e.g. the TFTP signing key).

    Picklable for process pools: it pickles as DER bytes, and each process loads a given key only
    once (the parsed key is cached per process by fingerprint).
    """

    def __init__(self, certificate: x509.Certificate, key: rsa.RSAPrivateKey):
        if not isinstance(key, rsa.RSAPrivateKey):
            raise TokenError("a file signer needs an RSA key")
        self._certificate = certificate
        self._key = key

    @classmethod
    def from_issued(cls, issued: Issued) -> "FileSigner":
        return cls(issued.cert, issued.key)  # type: ignore[arg-type]

    @classmethod
    def from_files(cls, cert_path: Path, key_path: Path) -> "FileSigner":
        return cls.from_issued(load_pair(cert_path, key_path))

    @property
    def certificate(self) -> x509.Certificate:
        return self._certificate

    def sign(self, data: bytes, digest: Digest) -> bytes:
        return _rsa_sign(self._key, data, digest)

    def __getstate__(self) -> dict:
        return {
            "cert": self._certificate.public_bytes(serialization.Encoding.DER),
            "key": self._key.private_bytes(serialization.Encoding.DER,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()),
        }

    def __setstate__(self, state: dict) -> None:
        fingerprint = hashlib.sha256(state["cert"] + state["key"]).digest()
        loaded = _LOADED_KEYS.get(fingerprint)
        if loaded is None:
            key = serialization.load_der_private_key(state["key"], password=None)
            cert = x509.load_der_x509_certificate(state["cert"])
            loaded = (cert, key)  # type: ignore[assignment]
            if len(_LOADED_KEYS) >= _MAX_LOADED_KEYS:
                _LOADED_KEYS.clear()
            _LOADED_KEYS[fingerprint] = loaded  # type: ignore[assignment]
        self._certificate, self._key = loaded

    def __repr__(self) -> str:
        return f"FileSigner(serial={self._certificate.serial_number:x})"

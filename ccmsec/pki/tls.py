"""`ssl.SSLContext` factories for the phone-facing TLS services.

Three flavours:

* ordinary TLS (CTL provider, CAPF): TLS 1.2+, the library's default strong ciphers;
* SCCP **authenticated** (AUTH-7): TLS 1.2 with a NULL cipher — records carry a MAC but no
  encryption, so signalling is readable on the wire yet cannot be altered in transit. OpenSSL 3 only
  offers NULL suites at `@SECLEVEL=0`; TLS 1.3 has none, so these contexts pin TLS 1.2;
* SCCP **encrypted** (ENC-1): TLS 1.2 with AES suites.

Mode per device: the device name is only known after the handshake (it arrives in Register), so
the call-control server offers *both* NULL and AES suites and the phone offers only the suites
of its configured mode. After Register the server compares the negotiated cipher with the
device's configured mode (`check_transport_for_mode`) and refuses a mismatch, so a device set to
encrypted can never stay registered over an integrity-only channel.

Mutual authentication (AUTH-2): the SCCP server requires a client certificate chaining to the
CAPF CA (LSC) or the manufacturer CA (MIC). The phone trusts exactly the CallManager certificates
of its CTL (self-signed `ccmserver.cer`, loaded as trust anchors with partial-chain verification,
no host-name check) and, after the handshake, `peer_is_one_of` pins the presented certificate to
those CTL entries. A phone holding both an LSC and a MIC presents the LSC (CERT-2).
"""

from __future__ import annotations

import os
import ssl
import stat
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ccmsec.domain import DeviceSecurityMode
from ccmsec.pki.ca import Issued, key_to_pem

# Integrity-only suites (RSA key exchange; the phones of the period used RSA certificates).
NULL_CIPHERS = ("NULL-SHA256", "NULL-SHA")
# Encrypting suites; forward-secret ones first.
AES_CIPHERS = (
    "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-AES128-SHA256",
    "AES128-GCM-SHA256", "AES128-SHA256", "AES256-SHA256", "AES128-SHA",
)


# What an SCCP connection provides is spelled as the device security mode it can carry:
# non-secure = TCP 2000 without TLS, authenticated = TLS with a NULL cipher, encrypted = TLS with AES.
SccpTransportMode = DeviceSecurityMode


# LATER-8 legacy TLS: what phones of the source's era speak — TLS 1.0 with AES128-SHA
# (encrypted) or NULL-SHA (authenticated). Off unless the cluster enables it: TLS 1.0 uses
# CBC without explicit IVs and MD5/SHA-1 in its handshake, weaknesses later versions removed.
LEGACY_CIPHERS = ("AES128-SHA", "NULL-SHA")


def enable_legacy_tls(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """Let TLS 1.0 clients with AES128-SHA or NULL-SHA in (on top of what the context already
    offers). For the listeners phones reach — SCCP 2443, CAPF 3804 — when the cluster's legacy
    TLS setting is on; everything else stays TLS 1.2."""
    names = [c["name"] for c in ctx.get_ciphers() if c["protocol"] != "TLSv1.3"]
    names += [n for n in LEGACY_CIPHERS if n not in names]
    with warnings.catch_warnings():  # TLS 1.0 is deprecated: that is the point of the setting
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers(_cipher_string(names))
    return ctx


class TransportModeMismatch(ValueError):
    """The negotiated transport does not match the device's configured security mode."""


def _cipher_string(names: Iterable[str]) -> str:
    return ":".join(names) + ":@SECLEVEL=0"


def _pem_certs(certs: Iterable[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certs)


def _load_identity(ctx: ssl.SSLContext, identity: Issued,
                   chain: Sequence[x509.Certificate] = ()) -> None:
    # ssl only loads keys from files; the temporary directory lives for this call only.
    with tempfile.TemporaryDirectory(prefix="ccmsec-tls-") as tmp:
        cert_path = Path(tmp) / "cert.pem"
        key_path = Path(tmp) / "key.pem"
        cert_path.write_bytes(identity.pem + _pem_certs(chain).encode("ascii"))
        key_path.touch(mode=0o600)
        key_path.write_bytes(key_to_pem(identity.key))
        ctx.load_cert_chain(cert_path, key_path)


class KeylogError(ValueError):
    """A key-log file that cannot safely take session secrets (the message says why)."""


def _prepare_keylog(path: str | Path) -> None:
    """Make sure `path` may take session secrets: created 0600; an existing file of ours is made
    0600 before a secret goes in (OpenSSL would create it with the process's umask, usually
    world-readable). Another user's file is never chmod-ed — that is theirs to set (and fails
    unless we are root): one already 0600 is used as it is (its owner reads it, e.g. Wireshark's
    user), one readable by others is refused. Only a regular file: a device (`/dev/null` is
    root's, so root "tightened" it to 0600 and broke every other user's writes) or a FIFO (its
    open waits for a reader: a hang) is refused untouched. Raises KeylogError, never a bare OSError."""
    try:
        # O_NONBLOCK: a FIFO without a reader is refused at once (ENXIO), not waited on
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o600)
    except OSError as exc:
        raise KeylogError(f"cannot open the key log {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        mode = stat.S_IMODE(st.st_mode)
        if not stat.S_ISREG(st.st_mode):
            raise KeylogError(f"the key log {path} is not a regular file: session secrets go only "
                              "into a file (use another path)")
        if st.st_uid == os.geteuid():
            if mode != 0o600:
                os.fchmod(fd, 0o600)
        elif mode & 0o077:
            raise KeylogError(
                f"the key log {path} belongs to another user (uid {st.st_uid}) and is readable by "
                f"others (mode {mode:04o}): it would expose TLS session secrets — make it 0600 "
                "(its owner can: chmod 600) or use another path")
    except OSError as exc:
        raise KeylogError(f"cannot secure the key log {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def enable_keylog(ctx: ssl.SSLContext, path: str | Path) -> ssl.SSLContext:
    """Write NSS key-log lines (for tshark `-o tls.keylog_file:`). Test/diagnostic use only.
    The file holds session secrets: see `_prepare_keylog`; KeylogError when it cannot be used."""
    _prepare_keylog(path)
    ctx.keylog_filename = str(path)
    return ctx


KEYLOG_ENV = "SSLKEYLOGFILE"


def new_context(protocol: int) -> ssl.SSLContext:
    """Every TLS context of the project starts here (or passes through `apply_keylog_env`), so
    that all of them honour `SSLKEYLOGFILE` the way browsers do: Wireshark then decrypts SCCP on
    2443, CAPF on 3804, the CTL Provider on 2444 and the HTTPS API. `ssl.SSLContext()` itself
    ignores the variable; only `ssl.create_default_context()` reads it."""
    return apply_keylog_env(ssl.SSLContext(protocol))


def apply_keylog_env(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """Log this context's session secrets to `$SSLKEYLOGFILE` when it is set, under the same
    rules as `enable_keylog`. A path that cannot be used never stops a service (diagnostics
    only): the context then logs nothing."""
    path = os.environ.get(KEYLOG_ENV)
    if path:
        try:
            _prepare_keylog(path)
            ctx.keylog_filename = path
        except KeylogError:
            pass
    return ctx


# -- ordinary TLS (CTL provider, CAPF) ------------------------------------------------------------

def server_context(identity: Issued, *, chain: Sequence[x509.Certificate] = (),
                   client_cas: Sequence[x509.Certificate] = (),
                   require_client_cert: bool = False) -> ssl.SSLContext:
    ctx = new_context(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_identity(ctx, identity, chain)
    if client_cas:
        ctx.load_verify_locations(cadata=_pem_certs(client_cas))
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    elif require_client_cert:
        raise ValueError("require_client_cert needs at least one client CA")
    return ctx


def client_context(trusted: Sequence[x509.Certificate], *, identity: Issued | None = None,
                   check_hostname: bool = False) -> ssl.SSLContext:
    """A client that trusts exactly `trusted` (CAs or self-signed server certificates)."""
    if not trusted:
        raise ValueError("a TLS client needs at least one trusted certificate")
    ctx = new_context(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.load_verify_locations(cadata=_pem_certs(trusted))
    if identity is not None:
        _load_identity(ctx, identity)
    return ctx


# -- SCCP over TLS --------------------------------------------------------------------------------

def sccp_server_context(identity: Issued, client_cas: Sequence[x509.Certificate], *,
                        allow: Iterable[SccpTransportMode] = (SccpTransportMode.AUTHENTICATED,
                                                              SccpTransportMode.ENCRYPTED),
                        legacy_tls: bool = False) -> ssl.SSLContext:
    """Call control's SCCP/TLS listener (2443): mutual TLS 1.2 offering NULL and AES suites.

    `client_cas`: the CAPF CA (LSCs) and the manufacturer CA (MICs) — AUTH-2, CERT-2.
    `legacy_tls` (LATER-8): also TLS 1.0 with AES128-SHA / NULL-SHA, for phones of that era.
    """
    if not client_cas:
        raise ValueError("the SCCP TLS server needs the CAPF and/or manufacturer CA")
    allow = set(allow)
    ciphers: list[str] = []
    if SccpTransportMode.AUTHENTICATED in allow:
        ciphers += NULL_CIPHERS
    if SccpTransportMode.ENCRYPTED in allow:
        ciphers += AES_CIPHERS
    if not ciphers:
        raise ValueError("allow at least one of authenticated / encrypted")
    ctx = new_context(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(_cipher_string(ciphers))
    ctx.options |= ssl.OP_NO_TICKET  # no resumption: every connection proves its certificate
    _load_identity(ctx, identity)
    ctx.load_verify_locations(cadata=_pem_certs(client_cas))
    ctx.verify_mode = ssl.CERT_REQUIRED
    if legacy_tls:
        enable_legacy_tls(ctx)
    return ctx


def choose_phone_certificate(lsc: Issued | None, mic: Issued | None) -> Issued:
    """CERT-2: the LSC takes precedence over the MIC when both are installed."""
    if lsc is not None:
        return lsc
    if mic is not None:
        return mic
    raise ValueError("AUTH-6: the phone holds neither an LSC nor a MIC; no TLS to call control")


def sccp_phone_context(mode: SccpTransportMode | str, ccm_certificates: Sequence[x509.Certificate],
                       *, lsc: Issued | None = None, mic: Issued | None = None) -> ssl.SSLContext:
    """The phone's SCCP/TLS client context for its configured security mode.

    `ccm_certificates`: the CallManager entries of the phone's CTL (AUTH-6 needs at least one).
    Offers only the suites of `mode`, presents the LSC if present else the MIC (CERT-2).
    """
    mode = SccpTransportMode.parse(mode)
    if mode is SccpTransportMode.NON_SECURE:
        raise ValueError("a non-secure device does not use TLS to call control")
    if not ccm_certificates:
        raise ValueError("AUTH-6: no CallManager certificate in the CTL; no TLS to call control")
    identity = choose_phone_certificate(lsc, mic)
    ctx = new_context(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(_cipher_string(
        NULL_CIPHERS if mode is SccpTransportMode.AUTHENTICATED else AES_CIPHERS))
    ctx.check_hostname = False  # the CTL, not DNS, names call control
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # self-signed ccmserver.cer as anchor
    ctx.load_verify_locations(cadata=_pem_certs(ccm_certificates))
    _load_identity(ctx, identity)
    return ctx


# -- after the handshake --------------------------------------------------------------------------

def transport_mode_of(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> SccpTransportMode:
    """What the negotiated connection actually provides."""
    if ssl_object is None:
        return SccpTransportMode.NON_SECURE
    cipher = ssl_object.cipher()
    if cipher is None:
        raise TransportModeMismatch("TLS handshake not complete")
    return transport_mode_of_cipher(cipher[0])


def transport_mode_of_cipher(cipher_name: str) -> SccpTransportMode:
    """DEV-1: TLS with a NULL cipher is authenticated, TLS with AES is encrypted.

    Any other suite (ChaCha20, 3DES, Camellia, ARIA, an anonymous ADH/AECDH one, an empty name)
    is neither and raises TransportModeMismatch — it must never count as encrypted by default.
    The SCCP contexts offer only NULL_CIPHERS and AES_CIPHERS, so this is the guard for a context
    that someday offers more.
    """
    parts = cipher_name.replace("_", "-").split("-")
    if parts[0] in ("ADH", "AECDH"):
        raise TransportModeMismatch(f"TLS cipher {cipher_name} is anonymous: the peer is not "
                                    "authenticated (DEV-1)")
    if "NULL" in parts:
        return SccpTransportMode.AUTHENTICATED
    if any(p in ("AES", "AES128", "AES256") for p in parts):
        return SccpTransportMode.ENCRYPTED
    raise TransportModeMismatch(f"TLS cipher {cipher_name or '(none)'} is neither AES (encrypted) nor "
                                "NULL (authenticated) (DEV-1)")


def check_transport_for_mode(device_mode: SccpTransportMode | str,
                             transport: SccpTransportMode | str) -> None:
    """Refuse a device whose connection does not match its configured mode.

    Non-secure devices use plain TCP; authenticated devices TLS with a NULL cipher (AUTH-7);
    encrypted devices TLS with AES (ENC-1). Raises TransportModeMismatch.
    """
    device_mode = SccpTransportMode.parse(device_mode)
    transport = SccpTransportMode.parse(transport)
    if device_mode is not transport:
        raise TransportModeMismatch(
            f"device is configured {device_mode.value} but connected over a "
            f"{transport.value} transport"
        )


def peer_certificate(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> x509.Certificate | None:
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der) if der else None


def peer_is_one_of(ssl_object: ssl.SSLObject | ssl.SSLSocket,
                   certificates: Iterable[x509.Certificate]) -> bool:
    """Pin: the server certificate must be byte-for-byte one of the CTL's CallManager entries."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return False
    return any(c.public_bytes(serialization.Encoding.DER) == der for c in certificates)

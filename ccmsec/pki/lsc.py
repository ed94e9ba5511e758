"""Locally Significant Certificates (LSC): the CAPF CA, LSC issuance and chain checks.

Design: ONE CAPF certificate, `DATA/pki/capf.{crt,key}`, as on the real system. It is a CA
certificate (basicConstraints CA:TRUE pathlen:0, keyCertSign) that signs every LSC and is also the
CAPF TLS server certificate; phones pin it from the CTL (CERT-3) rather than checking a host name.
MICs are checked against the manufacturer CA, which is kept apart (CERT-1).
"""

from __future__ import annotations

import datetime as _dt
import functools
import ipaddress
from pathlib import Path
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import (
    Criticality, ExtensionPolicy, PolicyBuilder, Store, VerificationError,
)

from ccmsec.fsutil import file_lock
from ccmsec.pki.ca import Issued, create_ca, issue, load_pair, name, new_key, save_pair
from ccmsec.wire.capf import CapfAuthError, CertType

CAPF_CERT = "capf.crt"
CAPF_KEY = "capf.key"
LSC_DAYS = 5 * 365
RSA_SIZES = (1024, 2048, 4096)
EC_CURVES = ("secp256r1", "secp384r1", "secp521r1")


class LscError(ValueError):
    """An LSC (or MIC) failed a check; the message names which one."""


# --------------------------------------------------------------------------------------------
# The CAPF certificate




def capf_key_path(pki_dir: str | Path, key_dir: str | Path | None = None) -> Path:
    """Where the CAPF key is: `key_dir` (a folder only CAPF has, in compose) or next to capf.crt."""
    return Path(key_dir if key_dir is not None else pki_dir) / CAPF_KEY


def ensure_capf_ca(pki_dir: str | Path, *, dns_names: Sequence[str] = ("localhost",),
                   ip_addresses: Sequence[str] = ("127.0.0.1",), key_kind: str = "rsa2048",
                   key_dir: str | Path | None = None) -> Issued:
    """Load DATA/pki/capf.{crt,key}, creating them once. Never re-created when present (CHK-2:
    the CTL built after CAPF activation keeps naming this certificate). With `key_dir` the key is
    kept there instead of beside the certificate every service reads."""
    pki = Path(pki_dir)
    # Several services may ask at once on a fresh cluster: one creates, the others load.
    with file_lock(pki / ".capf.lock"):
        return _load_or_create_capf(pki, dns_names, ip_addresses, key_kind, capf_key_path(pki, key_dir))


def _load_or_create_capf(pki: Path, dns_names: Sequence[str], ip_addresses: Sequence[str],
                         key_kind: str, key_path: Path) -> Issued:
    cert_path = pki / CAPF_CERT
    if cert_path.exists() and key_path.exists():
        return load_pair(cert_path, key_path)
    if cert_path.exists() != key_path.exists():
        raise LscError(f"half a CAPF pair: need both {cert_path} and {key_path}")
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key = new_key(key_kind)
    base = create_ca(name("CAPF", org_unit="CAPF"), key=key, days=3650, path_length=0)
    # Rebuild with a SAN so the same certificate serves TLS (create_ca adds none).
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    builder = (
        x509.CertificateBuilder()
        .subject_name(base.cert.subject).issuer_name(base.cert.subject)
        .public_key(key.public_key()).serial_number(base.cert.serial_number)
        .not_valid_before(base.cert.not_valid_before_utc).not_valid_after(base.cert.not_valid_after_utc)
    )
    for ext in base.cert.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    capf = Issued(builder.sign(key, hashes.SHA256()), key)
    save_pair(capf, cert_path, key_path)
    return capf


def capf_certificate_pem(pki_dir: str | Path) -> bytes:
    """The CAPF certificate as copied to every server and put in the CTL (CERT-3)."""
    return (Path(pki_dir) / CAPF_CERT).read_bytes()


# --------------------------------------------------------------------------------------------
# Issuing


def _check_phone_key(public_key) -> None:
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size not in RSA_SIZES:
            raise LscError(f"RSA key of {public_key.key_size} bits; LSCs take {RSA_SIZES}")
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name not in EC_CURVES:
            raise LscError(f"EC curve {public_key.curve.name} not supported for LSCs")
    else:
        raise LscError("LSC key must be RSA or EC")


def issue_lsc(capf_ca: Issued, device_name: str, public_key, *, days: int = LSC_DAYS) -> x509.Certificate:
    """An LSC for the phone's key: CN = device name, clientAuth + serverAuth, signed by CAPF."""
    if isinstance(public_key, (bytes, bytearray)):
        public_key = serialization.load_der_public_key(bytes(public_key))
    _check_phone_key(public_key)
    return issue(capf_ca, name(device_name, org_unit="LSC"), public_key, days=days,
                 server=True, client=True)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class LscIssuer:
    """The CapfIssuer the CAPF server session uses: signs LSCs, checks LSC / MIC authentication."""

    def __init__(self, capf_ca: Issued, manufacturer_roots: Iterable[x509.Certificate] = (), *,
                 days: int = LSC_DAYS):
        self.capf_ca = capf_ca
        self.manufacturer_roots = list(manufacturer_roots)
        self.days = days
        # Offline CA: LSCs from the imported third-party CA authenticate too (auth mode lsc).
        self.third_party_roots: list[x509.Certificate] = []

    async def issue_lsc(self, device_name: str, public_key_der: bytes) -> bytes:
        # Signed on the caller's loop: the capf service spreads the CAPF port (and so the
        # signing) over acceptor processes, one per core (ccmsec_capf.acceptors).
        cert = issue_lsc(self.capf_ca, device_name, public_key_der, days=self.days)
        return cert.public_bytes(serialization.Encoding.DER)

    def verify_device_certificate(self, device_name: str, cert_type: CertType, cert: x509.Certificate) -> None:
        try:
            if cert_type is CertType.LSC:
                verify_lsc_any(cert, [self.capf_ca.cert, *self.third_party_roots], device_name=device_name)
            else:
                if not self.manufacturer_roots:
                    raise LscError("no manufacturer CA configured to check MICs")
                verify_mic_chain(cert, self.manufacturer_roots, device_name=device_name)
        except LscError as exc:
            raise CapfAuthError(f"{cert_type.name} refused: {exc}") from None

    def classify_device_certificate(self, device_name: str, cert: x509.Certificate, claimed: CertType) -> CertType:
        """Which of the device's certificates `cert` is, judged by the CA it chains to — the label
        a phone puts on it is only tried first (standard clients label every certificate LSC)."""
        claimed = CertType(claimed)
        other = CertType.MIC if claimed is CertType.LSC else CertType.LSC
        try:
            self.verify_device_certificate(device_name, claimed, cert)
            return claimed
        except CapfAuthError as first:
            try:
                self.verify_device_certificate(device_name, other, cert)
            except CapfAuthError:
                raise first from None
            return other


# --------------------------------------------------------------------------------------------
# Verification (cryptography.x509.verification, client-certificate profile)


def _common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


# Phone certificates carry no subjectAltName (identity is the CN), so the Web PKI end-entity
# profile is relaxed on that one point; EKU clientAuth etc. stay enforced. Built once: policies
# are immutable, and call control checks every registering phone's certificate with them.
_EE_POLICY = ExtensionPolicy.webpki_defaults_ee().may_be_present(
    x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
_CA_POLICY = ExtensionPolicy.webpki_defaults_ca()


@functools.lru_cache(maxsize=32)
def _store(roots: tuple[x509.Certificate, ...]) -> Store:
    """The trust store of these roots (immutable; reused for every certificate they check)."""
    return Store(list(roots))


def _verify_client_chain(cert: x509.Certificate, roots: Sequence[x509.Certificate],
                         intermediates: Sequence[x509.Certificate], what: str,
                         at: _dt.datetime | None) -> list[x509.Certificate]:
    builder = PolicyBuilder().store(_store(tuple(roots))).time(at or _dt.datetime.now(_dt.timezone.utc))
    builder = builder.extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
    verifier = builder.max_chain_depth(2).build_client_verifier()
    try:
        return list(verifier.verify(cert, list(intermediates)).chain)
    except VerificationError as exc:
        raise LscError(f"{what} does not chain to its CA: {exc}") from None


def verify_lsc_chain(cert: x509.Certificate, capf_ca: x509.Certificate, *, device_name: str | None = None,
                     at: _dt.datetime | None = None) -> list[x509.Certificate]:
    """The LSC is issued by the CAPF CA (or an imported third-party CA passed as `capf_ca`)."""
    chain = _verify_client_chain(cert, [capf_ca], [], "LSC", at)
    if device_name is not None and _common_name(cert) != device_name:
        raise LscError(f"LSC CN {_common_name(cert)!r} is not device {device_name!r}")
    return chain


def verify_mic_chain(cert: x509.Certificate, manufacturer_roots: Sequence[x509.Certificate], *,
                     device_name: str | None = None, intermediates: Sequence[x509.Certificate] = (),
                     at: _dt.datetime | None = None) -> list[x509.Certificate]:
    """The MIC is issued by the manufacturer CA. Its CN is the device name, or ends with
    "-<device name>" as in manufacturer MICs (e.g. CP-7960G-SEP0011…)."""
    chain = _verify_client_chain(cert, manufacturer_roots, intermediates, "MIC", at)
    if device_name is not None:
        cn = _common_name(cert)
        if cn != device_name and not cn.endswith("-" + device_name):
            raise LscError(f"MIC CN {cn!r} is not device {device_name!r}")
    return chain


# --------------------------------------------------------------------------------------------
# Offline-CA mode: the phone's key goes to a third-party CA as a CSR; its answer is imported.


def build_lsc_csr(device_name: str, private_key) -> x509.CertificateSigningRequest:
    """A CSR for the phone's key (signed by that key, so the CA sees proof of possession)."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_name)]))
        .sign(private_key, hashes.SHA256())
    )


def import_third_party_lsc(cert: x509.Certificate, csr: x509.CertificateSigningRequest, device_name: str,
                           issuing_ca: x509.Certificate) -> x509.Certificate:
    """Accept a certificate signed by a third-party CA only when it answers this CSR."""
    if not csr.is_signature_valid:
        raise LscError("CSR signature is invalid")
    def spki(k) -> bytes:
        return k.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if spki(cert.public_key()) != spki(csr.public_key()):
        raise LscError("imported certificate is not for the CSR's key")
    if _common_name(cert) != device_name:
        raise LscError(f"imported certificate CN {_common_name(cert)!r} is not device {device_name!r}")
    try:
        cert.verify_directly_issued_by(issuing_ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise LscError(f"imported certificate is not signed by the given CA: {exc!r}") from None
    verify_lsc_chain(cert, issuing_ca, device_name=device_name)
    return cert


# The third-party CA of offline mode: one CA certificate, imported by the administrator
# (`ccmsec capf set-ca FILE` → `Capf/SetThirdPartyCa`) and kept in CAPF's own folder, DATA/capf,
# which only CAPF writes (in compose a volume only CAPF mounts read-write). Nobody else reads the
# file: call control and phone-sim ask CAPF (`Capf/GetThirdPartyCa`), so no other role can make
# call control trust a CA by writing a file (issue 9 §1).
THIRD_PARTY_CA = "lsc-third-party-ca.crt"
# Where it was kept before, next to capf.crt in the folder every service could write: never read
# again (a file there may have been planted); CAPF only warns when it finds one.
LEGACY_THIRD_PARTY_CA = ("pki", THIRD_PARTY_CA)
MAX_CERT_FILE = 64 * 1024


def capf_state_dir(data_dir: str | Path) -> Path:
    """DATA/capf: CAPF's own files (the third-party CA)."""
    return Path(data_dir) / "capf"


def third_party_ca_path(capf_dir: str | Path) -> Path:
    return Path(capf_dir) / THIRD_PARTY_CA


def load_one_certificate(data: bytes, what: str = "file") -> x509.Certificate:
    """Exactly one X.509 certificate, PEM or DER; LscError naming the problem otherwise."""
    if not data:
        raise LscError(f"{what} is empty")
    if len(data) > MAX_CERT_FILE:
        raise LscError(f"{what} is {len(data)} bytes; a certificate file is at most {MAX_CERT_FILE}")
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
            if len(certs) != 1:
                raise LscError(f"{what} holds {len(certs)} certificates; exactly one expected")
            return certs[0]
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        if isinstance(exc, LscError):
            raise
        raise LscError(f"{what} is not an X.509 certificate (PEM or DER)") from None


def check_third_party_ca(cert: x509.Certificate, at: _dt.datetime | None = None) -> None:
    """A CA certificate able to sign LSCs, valid now."""
    now = at or _dt.datetime.now(_dt.timezone.utc)
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise LscError("the third-party CA certificate has no basicConstraints (CA:TRUE needed)") from None
    if not bc.ca:
        raise LscError("the certificate is not a CA certificate (basicConstraints CA:FALSE)")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.key_cert_sign:
            raise LscError("the CA certificate's keyUsage does not allow signing certificates")
    except x509.ExtensionNotFound:
        pass
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise LscError(f"the CA certificate is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} "
                       f"to {cert.not_valid_after_utc:%Y-%m-%d})")


def save_third_party_ca(capf_dir: str | Path, cert: x509.Certificate) -> Path:
    """CAPF alone calls this, with its own folder (`capf_state_dir`)."""
    from ccmsec.fsutil import atomic_write

    check_third_party_ca(cert)
    path = third_party_ca_path(capf_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, _pem(cert))
    return path


def load_third_party_ca(capf_dir: str | Path) -> x509.Certificate | None:
    """CAPF's stored third-party CA (CAPF reads it; every other role asks CAPF)."""
    path = third_party_ca_path(capf_dir)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return load_one_certificate(data, str(path))


def verify_lsc_any(cert: x509.Certificate, anchors: Sequence[x509.Certificate], *, device_name: str | None = None,
                   at: _dt.datetime | None = None) -> list[x509.Certificate]:
    """verify_lsc_chain against whichever anchor issued the LSC (CAPF CA or the third-party CA)."""
    errors = []
    for anchor in anchors:
        try:
            return verify_lsc_chain(cert, anchor, device_name=device_name, at=at)
        except LscError as exc:
            errors.append(str(exc))
    raise LscError("; ".join(errors) or "no LSC trust anchor configured")


def pem_bundle(certs: Iterable[x509.Certificate]) -> bytes:
    return b"".join(_pem(c) for c in certs)

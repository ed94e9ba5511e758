"""Certificate authorities and certificate issuing, on top of `cryptography`.

Used for the internal cluster CA (service mTLS), the manufacturer CA (MICs, token certificates),
the CAPF CA (LSCs) and the self-signed server certificates. No crypto primitive is written here.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ccmsec.fsutil import atomic_write

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def new_key(kind: str = "rsa2048") -> PrivateKey:
    """kind: rsa1024 | rsa2048 | rsa4096 | ec256."""
    if kind.startswith("rsa"):
        bits = int(kind[3:])
        if bits not in (1024, 2048, 4096):
            raise ValueError(f"unsupported RSA size: {bits}")
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    if kind == "ec256":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"unsupported key type: {kind!r} (rsa1024, rsa2048, rsa4096, ec256)")


def name(common_name: str, org_unit: str = "ccmsec", org: str = "ccmsec", **extra: str) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if org_unit:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, org_unit))
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    for oid_name, value in extra.items():
        attrs.append(x509.NameAttribute(getattr(NameOID, oid_name.upper()), value))
    return x509.Name(attrs)


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)


def _sig_hash(key: PrivateKey) -> hashes.HashAlgorithm:
    return hashes.SHA256()


@dataclass
class Issued:
    cert: x509.Certificate
    key: PrivateKey

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return key_to_pem(self.key)


def key_to_pem(key: PrivateKey, password: bytes | None = None) -> bytes:
    enc = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def create_ca(subject: x509.Name, key: PrivateKey | None = None, days: int = 3650,
              path_length: int | None = 0) -> Issued:
    """A self-signed CA certificate (basicConstraints CA:TRUE, keyCertSign, cRLSign)."""
    key = key or new_key("rsa2048")
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return Issued(builder.sign(key, _sig_hash(key)), key)


def issue(
    ca: Issued,
    subject: x509.Name,
    public_key,
    *,
    days: int = 825,
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
    uris: Iterable[str] = (),
    server: bool = True,
    client: bool = True,
    extra_extensions: Iterable[tuple[x509.ExtensionType, bool]] = (),
    serial: int | None = None,
) -> x509.Certificate:
    """Sign an end-entity certificate for `public_key` with the CA."""
    now = _now()
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    is_rsa = isinstance(public_key, rsa.RSAPublicKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(min(now + _dt.timedelta(days=days), ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=is_rsa,
                data_encipherment=False, key_agreement=not is_rsa, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    sans += [x509.UniformResourceIdentifier(u) for u in uris]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    for ext, critical in extra_extensions:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(ca.key, _sig_hash(ca.key))


def issue_with_new_key(ca: Issued, subject: x509.Name, key_kind: str = "rsa2048", **kw) -> Issued:
    key = new_key(key_kind)
    return Issued(issue(ca, subject, key.public_key(), **kw), key)


def self_signed(subject: x509.Name, key: PrivateKey, *, days: int = 1825,
                dns_names: Iterable[str] = (), ip_addresses: Iterable[str] = ()) -> x509.Certificate:
    """A self-signed end-entity certificate (e.g. ccmserver.cer, CERT-5)."""
    pseudo_ca = Issued(
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(1).not_valid_before(_now()).not_valid_after(_now() + _dt.timedelta(days=days))
        .sign(key, _sig_hash(key)),
        key,
    )
    return issue(pseudo_ca, subject, key.public_key(), days=days, dns_names=dns_names,
                 ip_addresses=ip_addresses)


def fingerprint_sha256(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def save_pair(issued: Issued, cert_path: Path, key_path: Path) -> None:
    atomic_write(key_path, issued.key_pem, mode=0o600)
    atomic_write(cert_path, issued.pem)


def load_pair(cert_path: Path, key_path: Path) -> Issued:
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    return Issued(cert, key)  # type: ignore[arg-type]


def guid() -> str:
    return str(uuid.uuid4())

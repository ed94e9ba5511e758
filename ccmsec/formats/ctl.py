"""Certificate trust lists (`CTLFile.tlv`) and the signed-file header they share
with `.sgn` files (§2).

Layout: a header (version, header length, signer info, signature info, signature, file name,
timestamp, 0x0D padding to a multiple of 4) followed by records up to the end of the file. The
signature covers every byte of the file except the signature TLV itself.

Sans-IO: `build_ctl` takes records and a signer and returns bytes; `parse_ctl` takes bytes and
returns a `CtlFile`; `verify_ctl` checks the signature against the file's own token record.
The header code here is the only header implementation; `ccmsec.formats.sgn` reuses it.
"""

from __future__ import annotations

import datetime as _dt
import enum
import functools
import ipaddress
from dataclasses import dataclass, field
from typing import Iterable, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from ccmsec.formats import tlv
from ccmsec.formats.tlv import PADDING_TAG, Tlv, TlvError

# Later releases of the phones fail to load trust lists above 64 KB.
MAX_CTL_SIZE = 64 * 1024
CTL_VERSION = (1, 2)
CTL_FILE_NAME = "CTLFile.tlv"
SIGNATURE_ALGORITHM_RSA = 0


class CtlFormatError(ValueError):
    """The bytes are not a well-formed trust list / signed file (the message names the problem)."""


class CtlBuildError(ValueError):
    """The inputs cannot make a valid trust list (too large, signer not listed, ...)."""


class SignatureError(ValueError):
    """A signature is missing, made by an unknown signer, or does not verify."""


class CtlSignatureError(SignatureError):
    """A trust list's signature cannot be verified with its own token record."""


class Digest(enum.IntEnum):
    """Header tag 8: the digest the RSA PKCS#1 v1.5 signature is made over."""

    SHA1 = 1
    SHA256 = 2
    SHA512 = 3

    def hash(self) -> hashes.HashAlgorithm:
        return {Digest.SHA1: hashes.SHA1, Digest.SHA256: hashes.SHA256,
                Digest.SHA512: hashes.SHA512}[self]()

    @property
    def label(self) -> str:
        return {Digest.SHA1: "SHA-1", Digest.SHA256: "SHA-256", Digest.SHA512: "SHA-512"}[self]


class Modulus(enum.IntEnum):
    """Header tag 11: the RSA modulus size of the signer's key."""

    RSA512 = 0
    RSA1024 = 1
    RSA2048 = 2
    RSA4096 = 3

    @property
    def bits(self) -> int:
        return 512 << self.value

    @property
    def signature_length(self) -> int:
        return self.bits // 8

    @classmethod
    def from_bits(cls, bits: int) -> "Modulus":
        for code in cls:
            if code.bits == bits:
                return code
        raise CtlBuildError(f"unsupported RSA key size for a signer: {bits} bits "
                            "(512, 1024, 2048 or 4096)")


class Role(enum.IntEnum):
    """Record tag 4: what a listed certificate is trusted for."""

    TOKEN = 0  # SAST: signs trust lists
    CCM = 1
    CCM_TFTP = 2
    TFTP = 3
    CAPF = 4
    APP_SERVER = 7
    TVS = 21

    @property
    def label(self) -> str:
        return _ROLE_LABELS[self]


_ROLE_LABELS = {
    Role.TOKEN: "SAST", Role.CCM: "CCM", Role.CCM_TFTP: "CCM+TFTP", Role.TFTP: "TFTP",
    Role.CAPF: "CAPF", Role.APP_SERVER: "APP-SERVER", Role.TVS: "TVS",
}


class Signer(Protocol):
    """Anything that can sign a trust list or a file: a security token, a file-backed key."""

    @property
    def certificate(self) -> x509.Certificate: ...

    def sign(self, data: bytes, digest: Digest) -> bytes:
        """RSA PKCS#1 v1.5 signature of `data` with the given digest."""
        ...


# --- header tags (the signed-file header) -------------------------------------------------------
H_VERSION, H_LENGTH, H_SIGNER_INFO, H_SIGNER_NAME, H_SERIAL, H_ISSUER = 1, 2, 3, 4, 5, 6
H_SIGNATURE_INFO, H_DIGEST, H_ALGORITHM_INFO, H_ALGORITHM, H_MODULUS = 7, 8, 9, 10, 11
H_SIGNATURE, H_FILE_NAME, H_TIMESTAMP, H_SIGNER_VERSION = 12, 14, 15, 28
_CONTAINERS = {
    H_SIGNER_INFO: frozenset({H_SIGNER_NAME, H_SERIAL, H_ISSUER}),
    H_SIGNATURE_INFO: frozenset({H_DIGEST, H_ALGORITHM_INFO}),
    H_ALGORITHM_INFO: frozenset({H_ALGORITHM, H_MODULUS}),
}
_TOP_LEVEL = frozenset({H_SIGNER_INFO, H_SIGNATURE_INFO, H_SIGNATURE, H_FILE_NAME, H_TIMESTAMP,
                        H_SIGNER_VERSION})
_ENCRYPTION_TAGS = range(16, 28)
_HEADER_TAG_NAMES = {
    H_SIGNER_NAME: "signer name", H_SERIAL: "signer serial number", H_ISSUER: "issuer name",
    H_DIGEST: "digest algorithm", H_ALGORITHM: "signature algorithm",
    H_MODULUS: "signature modulus", H_SIGNATURE: "signature", H_FILE_NAME: "file name",
    H_TIMESTAMP: "timestamp",
}

# --- record tags ------------------------------------------------------------------------------
R_LENGTH, R_DNS_NAME, R_SUBJECT, R_ROLE, R_ISSUER, R_SERIAL, R_PUBLIC_KEY = 1, 2, 3, 4, 5, 6, 7
R_SIGNATURE, R_CERTIFICATE, R_IP, R_CERT_HASH, R_HASH_ALGORITHM = 8, 9, 10, 11, 12
_REQUIRED_RECORD_TAGS = {R_ROLE: "role", R_SERIAL: "serial number", R_CERTIFICATE: "certificate"}


# --- distinguished names ------------------------------------------------------------------------
_DN_ORDER = [
    (NameOID.COMMON_NAME, "CN"), (NameOID.ORGANIZATIONAL_UNIT_NAME, "OU"),
    (NameOID.ORGANIZATION_NAME, "O"), (NameOID.LOCALITY_NAME, "L"),
    (NameOID.STATE_OR_PROVINCE_NAME, "ST"), (NameOID.COUNTRY_NAME, "C"),
]
_DN_KNOWN = {oid for oid, _ in _DN_ORDER}


def dn_string(name: x509.Name) -> str:
    """`CN=…;OU=…;O=…;L=…;ST=…;C=…` as in captured trust lists; other attributes follow."""
    parts = [f"{short}={attr.value}" for oid, short in _DN_ORDER
             for attr in name.get_attributes_for_oid(oid)]
    parts += [f"{attr.rfc4514_attribute_name}={attr.value}" for attr in name
              if attr.oid not in _DN_KNOWN]
    return ";".join(parts)


def serial_bytes(serial: int) -> bytes:
    """A certificate serial as raw big-endian bytes (minimal length, at least one byte)."""
    return serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big")


# --- header -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SignedHeader:
    """The header shared by trust lists and signed files."""

    version: tuple[int, int]
    signer_name: str
    signer_serial: bytes
    signer_issuer: str
    digest: Digest
    modulus: Modulus
    signature: bytes = field(repr=False)
    file_name: str
    timestamp: int
    signer_version: tuple[int, int] | None = None
    signature_algorithm: int = SIGNATURE_ALGORITHM_RSA
    length: int = 0  # header length (tag 2), signature and padding included

    @property
    def time(self) -> _dt.datetime:
        return _dt.datetime.fromtimestamp(self.timestamp, _dt.timezone.utc)


@dataclass(frozen=True)
class SignedContainer:
    """A parsed file made of a signed header and a body (records or payload)."""

    header: SignedHeader
    raw: bytes = field(repr=False)
    signature_span: tuple[int, int]  # [start, end) of the signature TLV inside `raw`

    def signed_bytes(self) -> bytes:
        """Every byte of the file except the signature TLV: exactly what the signer signed."""
        start, end = self.signature_span
        return self.raw[:start] + self.raw[end:]


@functools.lru_cache(maxsize=64)
def _signer_block(certificate: x509.Certificate, digest: Digest) -> tuple[bytes, Modulus]:
    """Signer-info and signature-info TLVs for one signer; cached because a TFTP server signs
    thousands of files with the same key and this is the only costly part of the header."""
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise CtlBuildError("the signer's key must be RSA (signature algorithm 0 is RSA only)")
    modulus = Modulus.from_bits(key.key_size)
    signer_info = tlv.encode(H_SIGNER_INFO, b"".join([
        tlv.encode_text(H_SIGNER_NAME, dn_string(certificate.subject)),
        tlv.encode(H_SERIAL, serial_bytes(certificate.serial_number)),
        tlv.encode_text(H_ISSUER, dn_string(certificate.issuer)),
    ]))
    algorithm_info = tlv.encode(H_ALGORITHM_INFO,
                                tlv.encode_u8(H_ALGORITHM, SIGNATURE_ALGORITHM_RSA)
                                + tlv.encode_u8(H_MODULUS, modulus))
    signature_info = tlv.encode(H_SIGNATURE_INFO, tlv.encode_u8(H_DIGEST, digest) + algorithm_info)
    return signer_info + signature_info, modulus


def build_signed(version: tuple[int, int], body: bytes, signer: Signer, *, file_name: str,
                 timestamp: int, digest: Digest = Digest.SHA1,
                 signer_version: tuple[int, int] | None = None,
                 max_size: int | None = None) -> bytes:
    """Header + body, signed. The signature TLV goes where the file-name TLV begins."""
    digest = Digest(digest)
    if not file_name:
        raise CtlBuildError("the file name (header tag 14) must not be empty")
    if not 0 <= timestamp <= 0xFFFFFFFF:
        raise CtlBuildError(f"timestamp {timestamp} does not fit in 32 bits")
    try:
        block, modulus = _signer_block(signer.certificate, digest)
        before_signature = b"".join([
            tlv.encode(H_VERSION, bytes(version)),
            tlv.encode_u16(H_LENGTH, 0),  # patched below once the length is known
            tlv.encode(H_SIGNER_VERSION, bytes(signer_version)) if signer_version else b"",
            block,
        ])
        after_signature = tlv.encode_text(H_FILE_NAME, file_name) + tlv.encode_u32(H_TIMESTAMP,
                                                                                   timestamp)
    except ValueError as exc:  # TlvError, or a version byte out of range
        raise CtlBuildError(str(exc)) from None
    signature_tlv_length = 3 + modulus.signature_length
    unpadded = len(before_signature) + signature_tlv_length + len(after_signature)
    after_signature += bytes([PADDING_TAG]) * (-unpadded % 4)
    header_length = unpadded + (-unpadded % 4)
    if header_length > 0xFFFF:
        raise CtlBuildError(f"header would be {header_length} bytes, over the 65535-byte limit")
    total = header_length + len(body)
    if max_size is not None and total > max_size:
        raise CtlBuildError(f"file would be {total} bytes, over the {max_size}-byte limit")
    # The header-length value sits right after the version TLV (5 bytes) and its own tag/length.
    before_signature = (before_signature[:8] + header_length.to_bytes(2, "big")
                        + before_signature[10:])
    signature = signer.sign(before_signature + after_signature + body, digest)
    if len(signature) != modulus.signature_length:
        raise CtlBuildError(f"signer returned a {len(signature)}-byte signature, expected "
                            f"{modulus.signature_length} for a {modulus.bits}-bit key")
    return b"".join([before_signature, tlv.encode(H_SIGNATURE, signature), after_signature, body])


def parse_header(data: bytes) -> tuple[SignedHeader, tuple[int, int]]:
    """The header at the start of `data` and the span of its signature TLV.

    Raises CtlFormatError naming the problem. The body starts at `header.length`.
    """
    try:
        return _parse_header(data)
    except TlvError as exc:
        raise CtlFormatError(f"header: {exc}") from None


def _parse_header(data: bytes) -> tuple[SignedHeader, tuple[int, int]]:
    try:
        first = tlv.read_tlv(data, 0, len(data))
    except TlvError as exc:
        raise CtlFormatError(f"not a signed trust-list or .sgn file: {exc}") from None
    if first.tag != H_VERSION or len(first.value) != 2:
        raise CtlFormatError("not a signed trust-list or .sgn file: it does not start with a "
                             "2-byte version TLV (tag 1)")
    second = tlv.read_tlv(data, first.end, len(data))
    if second.tag != H_LENGTH:
        raise CtlFormatError("header: expected the header-length TLV (tag 2), "
                             f"found tag {second.tag}")
    length = tlv.decode_uint(second, 2)
    if length < second.end or length > len(data):
        raise CtlFormatError(f"header: header length {length} is outside the file "
                             f"({len(data)} bytes)")
    if length % 4:
        raise CtlFormatError(f"header: header length {length} is not a multiple of 4")
    fields: dict[int, Tlv] = {}
    for item in tlv.iter_tlvs(data, second.end, length, allow_padding=True):
        if item.padding:
            continue
        _collect_header_item(data, item, _TOP_LEVEL, fields)
    missing = [name for tag, name in _HEADER_TAG_NAMES.items() if tag not in fields]
    if missing:
        raise CtlFormatError(f"header: missing {', '.join(missing)}")
    try:
        digest = Digest(tlv.decode_uint(fields[H_DIGEST], 1))
    except ValueError:
        raise CtlFormatError("header: unknown digest algorithm "
                             f"{fields[H_DIGEST].value.hex()}") from None
    algorithm = tlv.decode_uint(fields[H_ALGORITHM], 1)
    if algorithm != SIGNATURE_ALGORITHM_RSA:
        raise CtlFormatError(f"header: unsupported signature algorithm {algorithm} (0 = RSA)")
    try:
        modulus = Modulus(tlv.decode_uint(fields[H_MODULUS], 1))
    except ValueError:
        raise CtlFormatError("header: unknown signature modulus code "
                             f"{fields[H_MODULUS].value.hex()}") from None
    signature = fields[H_SIGNATURE]
    if len(signature.value) != modulus.signature_length:
        raise CtlFormatError(f"header: signature is {len(signature.value)} bytes but the modulus "
                             f"code says {modulus.bits}-bit ({modulus.signature_length} bytes)")
    serial = fields[H_SERIAL].value
    if not serial:
        raise CtlFormatError("header: signer serial number is empty")
    signer_version = None
    if H_SIGNER_VERSION in fields:
        if len(fields[H_SIGNER_VERSION].value) != 2:
            raise CtlFormatError("header: signer version (tag 28) must be 2 bytes")
        signer_version = tuple(fields[H_SIGNER_VERSION].value)
    header = SignedHeader(
        version=(first.value[0], first.value[1]),
        signer_name=tlv.decode_text(fields[H_SIGNER_NAME]),
        signer_serial=serial,
        signer_issuer=tlv.decode_text(fields[H_ISSUER]),
        digest=digest,
        modulus=modulus,
        signature=signature.value,
        file_name=tlv.decode_text(fields[H_FILE_NAME]),
        timestamp=tlv.decode_uint(fields[H_TIMESTAMP], 4),
        signer_version=signer_version,  # type: ignore[arg-type]
        signature_algorithm=algorithm,
        length=length,
    )
    return header, (signature.offset, signature.end)


def _collect_header_item(data: bytes, item: Tlv, allowed: frozenset[int],
                         fields: dict[int, Tlv]) -> None:
    if item.tag in _ENCRYPTION_TAGS:
        raise CtlFormatError(f"header: tag {item.tag} belongs to encrypted (.enc.sgn) files, "
                             "which are not supported here")
    if item.tag not in allowed:
        raise CtlFormatError(f"header: unexpected tag {item.tag} at offset {item.offset}")
    if item.tag in fields:
        raise CtlFormatError(f"header: tag {item.tag} appears twice")
    fields[item.tag] = item
    nested = _CONTAINERS.get(item.tag)
    if nested is not None:
        for inner in tlv.iter_tlvs(data, item.offset + 3, item.end):
            _collect_header_item(data, inner, nested, fields)


def verify_signature(container: SignedContainer, certificate: x509.Certificate,
                     error: type[SignatureError] = SignatureError) -> None:
    """Check the container's RSA PKCS#1 v1.5 signature with the certificate's public key."""
    header = container.header
    who = f"{dn_string(certificate.subject)} (serial {certificate.serial_number:x})"
    try:
        key = certificate.public_key()
    except Exception as exc:  # unsupported or malformed key in an otherwise parsable certificate
        raise error(f"certificate {who} has an unusable public key ({exc})") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise error(f"certificate {who} has no RSA key; the file is RSA-signed")
    if key.key_size != header.modulus.bits:
        raise error(f"header says a {header.modulus.bits}-bit signer but certificate {who} "
                    f"has a {key.key_size}-bit key")
    try:
        key.verify(header.signature, container.signed_bytes(), padding.PKCS1v15(),
                   header.digest.hash())
    except InvalidSignature:
        raise error(f"bad signature: the file does not verify with {who}; it was altered "
                    "or signed by someone else") from None


# --- records ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CtlRecord:
    """One trusted certificate and its role (record tags 1-12)."""

    role: Role
    subject: str
    issuer: str
    serial: bytes
    public_key: bytes  # RSA: DER PKCS#1 RSAPublicKey; EC: uncompressed point
    certificate_der: bytes = field(repr=False)
    dns_name: str = ""
    cert_signature: bytes | None = field(default=None, repr=False)  # absent in token records
    ipv4: ipaddress.IPv4Address | None = None
    cert_hash: bytes | None = field(default=None, repr=False)  # tags 11/12: later releases
    hash_algorithm: bytes | None = field(default=None, repr=False)
    # The parsed certificate; loaded from certificate_der when not given.
    certificate: x509.Certificate = field(  # type: ignore[assignment]
        default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.certificate is None:
            try:
                cert = x509.load_der_x509_certificate(self.certificate_der)
                # The DER parser is lazy: touch every field we rely on so that a bad certificate
                # fails here, with a clear error, and not later in verification or listing.
                cert.subject, cert.issuer, cert.serial_number, cert.public_key()
            except Exception as exc:  # any failure of the DER parser means "not a certificate"
                raise CtlFormatError(f"record certificate is not DER X.509: {exc}") from None
            object.__setattr__(self, "certificate", cert)

    def encode(self) -> bytes:
        return self._encoded

    @functools.cached_property
    def _encoded(self) -> bytes:
        # Records are immutable; encoding once keeps rebuilding a CTL close to the RSA cost.
        try:
            body = b"".join([
                tlv.encode_text(R_DNS_NAME, self.dns_name),
                tlv.encode_text(R_SUBJECT, self.subject),
                tlv.encode_u16(R_ROLE, self.role),
                tlv.encode_text(R_ISSUER, self.issuer),
                tlv.encode(R_SERIAL, self.serial),
                tlv.encode(R_PUBLIC_KEY, self.public_key),
                b"" if self.cert_signature is None
                else tlv.encode(R_SIGNATURE, self.cert_signature),
                tlv.encode(R_CERTIFICATE, self.certificate_der),
                b"" if self.ipv4 is None else tlv.encode(R_IP, self.ipv4.packed),
                b"" if self.cert_hash is None else tlv.encode(R_CERT_HASH, self.cert_hash),
                b"" if self.hash_algorithm is None else tlv.encode(R_HASH_ALGORITHM,
                                                                   self.hash_algorithm),
            ])
            return tlv.encode_u16(R_LENGTH, 5 + len(body)) + body
        except TlvError as exc:
            raise CtlBuildError(f"record {self.subject!r}: {exc}") from None


def public_key_bytes(certificate: x509.Certificate) -> bytes:
    """Record tag 7: RSA as DER PKCS#1 RSAPublicKey, EC as an uncompressed point."""
    key = certificate.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.public_bytes(serialization.Encoding.X962,
                                serialization.PublicFormat.UncompressedPoint)
    raise CtlBuildError(f"unsupported key type in certificate {dn_string(certificate.subject)}")


def record_from_certificate(certificate: x509.Certificate, role: Role, dns_name: str = "",
                            ipv4: str | ipaddress.IPv4Address | None = None) -> CtlRecord:
    """A record listing `certificate` in `role` (CTL-3: every field taken from the certificate)."""
    role = Role(role)
    return CtlRecord(
        role=role,
        subject=dn_string(certificate.subject),
        issuer=dn_string(certificate.issuer),
        serial=serial_bytes(certificate.serial_number),
        public_key=public_key_bytes(certificate),
        certificate_der=certificate.public_bytes(serialization.Encoding.DER),
        dns_name="" if role is Role.TOKEN else dns_name,
        cert_signature=None if role is Role.TOKEN else certificate.signature,
        ipv4=None if ipv4 is None else ipaddress.IPv4Address(ipv4),
        certificate=certificate,
    )


def _parse_records(data: bytes, start: int) -> tuple[CtlRecord, ...]:
    records = []
    offset = start
    while offset < len(data):
        number = len(records) + 1
        try:
            if data[offset] != R_LENGTH:
                raise CtlFormatError(f"record {number} at offset {offset} does not start with "
                                     f"the record-length tag 1 (found tag {data[offset]})")
            head = tlv.read_tlv(data, offset, len(data))
            length = tlv.decode_uint(head, 2)
            if length < 5 or offset + length > len(data):
                raise CtlFormatError(f"record {number} at offset {offset}: length {length} is "
                                     f"outside the file ({len(data) - offset} bytes left)")
            records.append(_parse_record(data, head.end, offset + length, number))
        except TlvError as exc:
            raise CtlFormatError(f"record {number}: {exc}") from None
        offset += length
    return tuple(records)


def _parse_record(data: bytes, start: int, end: int, number: int) -> CtlRecord:
    fields: dict[int, Tlv] = {}
    for item in tlv.iter_tlvs(data, start, end):
        if not R_DNS_NAME <= item.tag <= R_HASH_ALGORITHM:
            raise CtlFormatError(f"record {number}: unknown tag {item.tag} at offset {item.offset}")
        if item.tag in fields:
            raise CtlFormatError(f"record {number}: tag {item.tag} appears twice")
        fields[item.tag] = item
    missing = [name for tag, name in _REQUIRED_RECORD_TAGS.items() if tag not in fields]
    if missing:
        raise CtlFormatError(f"record {number}: missing {', '.join(missing)}")
    role_code = tlv.decode_uint(fields[R_ROLE], 2)
    if role_code not in Role._value2member_map_:
        raise CtlFormatError(f"record {number}: unknown role {role_code}")
    role = Role(role_code)
    ipv4 = None
    if R_IP in fields:
        if len(fields[R_IP].value) != 4:
            raise CtlFormatError(f"record {number}: IP address must be 4 bytes (IPv4)")
        ipv4 = ipaddress.IPv4Address(fields[R_IP].value)

    def text(tag: int) -> str:
        return tlv.decode_text(fields[tag]) if tag in fields else ""

    def raw(tag: int) -> bytes | None:
        return fields[tag].value if tag in fields else None

    try:
        record = CtlRecord(
            role=role, subject=text(R_SUBJECT), issuer=text(R_ISSUER),
            serial=fields[R_SERIAL].value, public_key=raw(R_PUBLIC_KEY) or b"",
            certificate_der=fields[R_CERTIFICATE].value, dns_name=text(R_DNS_NAME),
            cert_signature=raw(R_SIGNATURE), ipv4=ipv4, cert_hash=raw(R_CERT_HASH),
            hash_algorithm=raw(R_HASH_ALGORITHM),
        )
    except CtlFormatError as exc:
        raise CtlFormatError(f"record {number}: {exc}") from None
    if record.certificate.serial_number <= 0:  # RFC 5280; serial_bytes cannot encode it either
        raise CtlFormatError(f"record {number}: certificate serial "
                             f"{record.certificate.serial_number} is not positive")
    cert_serial = serial_bytes(record.certificate.serial_number)
    if record.serial.lstrip(b"\x00") != cert_serial.lstrip(b"\x00"):
        raise CtlFormatError(f"record {number}: serial {record.serial.hex()} does not match its "
                             f"certificate's serial {record.certificate.serial_number:x}")
    return record


# --- the trust list -----------------------------------------------------------------------------
@dataclass(frozen=True)
class CtlFile(SignedContainer):
    records: tuple[CtlRecord, ...]

    def records_for_role(self, *roles: Role) -> list[CtlRecord]:
        return [r for r in self.records if r.role in roles]

    def signer_record(self) -> CtlRecord | None:
        """The token record whose serial equals the header serial (the one that must verify)."""
        for record in self.records:
            if record.role is Role.TOKEN and record.serial == self.header.signer_serial:
                return record
        return None


def build_ctl(records: Iterable[CtlRecord], signer: Signer, timestamp: int,
              digest: Digest = Digest.SHA1, *, file_name: str = CTL_FILE_NAME,
              signer_version: tuple[int, int] | None = None,
              version: tuple[int, int] = CTL_VERSION) -> bytes:
    """A signed trust list. The signer must be one of the token records (CTL-1).

    Deterministic: the same records, signer, timestamp and digest give identical bytes.
    """
    records = list(records)
    if not records:
        raise CtlBuildError("a trust list needs at least one record")
    signer_der = signer.certificate.public_bytes(serialization.Encoding.DER)
    if not any(r.role is Role.TOKEN and r.certificate_der == signer_der for r in records):
        raise CtlBuildError("the signer's certificate is not one of the token (SAST) records; "
                            "a trust list must be signed by a token listed in it (CTL-1)")
    body = b"".join(r.encode() for r in records)
    return build_signed(version, body, signer, file_name=file_name, timestamp=timestamp,
                        digest=digest, signer_version=signer_version,
                        max_size=MAX_CTL_SIZE - 1)


def parse_ctl(data: bytes) -> CtlFile:
    """Parse a trust list. Raises CtlFormatError naming the problem; never anything else."""
    data = bytes(data)
    if len(data) >= MAX_CTL_SIZE:
        raise CtlFormatError(f"file is {len(data)} bytes; trust lists must stay under "
                             f"{MAX_CTL_SIZE} bytes")
    header, span = parse_header(data)
    if header.version[0] != 1:
        raise CtlFormatError(f"version {header.version[0]}.{header.version[1]} is not a trust "
                             "list (expected 1.x)")
    records = _parse_records(data, header.length)
    if not records:
        raise CtlFormatError("the trust list has no records")
    return CtlFile(header=header, raw=data, signature_span=span, records=records)


def verify_ctl(ctl_file: CtlFile) -> CtlRecord:
    """Verify the signature with the token record whose serial equals the header serial.

    Returns that record; raises CtlSignatureError naming the problem.
    """
    serial = ctl_file.header.signer_serial.hex()
    signer = ctl_file.signer_record()
    if signer is None:
        others = [r for r in ctl_file.records if r.serial == ctl_file.header.signer_serial]
        if others:
            raise CtlSignatureError(f"the signer (serial {serial}) is listed only as "
                                    f"{others[0].role.label}, not as a token (SAST)")
        raise CtlSignatureError(f"no token (SAST) record has the signer's serial {serial}")
    verify_signature(ctl_file, signer.certificate, CtlSignatureError)
    return signer


# --- human listing --------------------------------------------------------------------------------
def _key_description(certificate: x509.Certificate) -> str:
    try:
        key = certificate.public_key()
    except Exception:
        return "unusable key"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}-bit"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    return type(key).__name__


def header_lines(h: SignedHeader) -> list[str]:
    """The signed header as `Label:  value` lines (shared by `ctl show` and `sgn show`)."""
    lines = [
        f"File Name:         {h.file_name}",
        f"Version:           {h.version[0]}.{h.version[1]}",
        f"Header Length:     {h.length} bytes",
    ]
    if h.signer_version:
        lines.append(f"Signer Version:    {h.signer_version[0]}.{h.signer_version[1]}")
    return lines + [
        f"Signer Name:       {h.signer_name}",
        f"Signer Serial:     {h.signer_serial.hex()}",
        f"Issuer Name:       {h.signer_issuer}",
        f"Digest Algorithm:  {h.digest.label}",
        f"Signature:         RSA {h.modulus.bits}-bit, {len(h.signature)} bytes",
        f"Timestamp:         {h.time:%Y-%m-%d %H:%M:%S} UTC ({h.timestamp})",
    ]


def format_ctl(ctl_file: CtlFile) -> str:
    """A listing like the product's `show ctl`: the header, then every record."""
    lines = header_lines(ctl_file.header) + [f"Records:           {len(ctl_file.records)}"]
    for number, r in enumerate(ctl_file.records, 1):
        cert = r.certificate
        lines += [
            "",
            f"Record {number} of {len(ctl_file.records)}",
            f"  Role:            {r.role.label} ({int(r.role)})",
            f"  DNS Name:        {r.dns_name or '-'}",
            f"  Subject Name:    {r.subject}",
            f"  Issuer Name:     {r.issuer}",
            f"  Serial Number:   {r.serial.hex()}",
            f"  Public Key:      {_key_description(cert)}, {len(r.public_key)} bytes",
            f"  Signature:       "
            + (f"{len(r.cert_signature)} bytes" if r.cert_signature is not None else "-"),
            f"  Certificate:     {len(r.certificate_der)} bytes",
            f"  SHA-1:           {cert.fingerprint(hashes.SHA1()).hex()}",
            f"  SHA-256:         {cert.fingerprint(hashes.SHA256()).hex()}",
            f"  IP Address:      {r.ipv4 or '-'}",
        ]
    return "\n".join(lines) + "\n"


def header_dict(h: SignedHeader) -> dict:
    """The signed header as JSON-ready values (`ctl show --json`, `sgn show --json`)."""
    return {
        "file_name": h.file_name, "version": f"{h.version[0]}.{h.version[1]}",
        "header_length": h.length,
        "signer_version": f"{h.signer_version[0]}.{h.signer_version[1]}" if h.signer_version else None,
        "signer_name": h.signer_name, "signer_serial": h.signer_serial.hex(),
        "issuer_name": h.signer_issuer, "digest_algorithm": h.digest.label,
        "signature_bits": h.modulus.bits, "signature_bytes": len(h.signature),
        "timestamp": h.timestamp, "time": f"{h.time:%Y-%m-%dT%H:%M:%SZ}",
    }


def ctl_dict(ctl_file: CtlFile) -> dict:
    """What `format_ctl` lists, as JSON-ready values."""
    records = []
    for r in ctl_file.records:
        cert = r.certificate
        records.append({
            "role": r.role.label, "role_number": int(r.role), "dns_name": r.dns_name or None,
            "subject": r.subject, "issuer": r.issuer, "serial": r.serial.hex(),
            "public_key": _key_description(cert), "public_key_bytes": len(r.public_key),
            "signature_bytes": len(r.cert_signature) if r.cert_signature is not None else None,
            "certificate_bytes": len(r.certificate_der),
            "sha1": cert.fingerprint(hashes.SHA1()).hex(),
            "sha256": cert.fingerprint(hashes.SHA256()).hex(),
            "ipv4": str(r.ipv4) if r.ipv4 else None,
        })
    return {"header": header_dict(ctl_file.header), "records": records}

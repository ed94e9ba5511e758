"""CAPF protocol (wire-formats §4), sans-IO: frame codec, streaming reader, server and phone sessions.

Frame: `0x55`, command (1 byte), session id (uint32 BE), body length (uint16 BE), then elements as
TLVs (tag 1 byte, length uint16 BE). Nothing here touches a socket: bytes go in, frames / bytes to
send come out. The server session talks to an injected operations store and LSC issuer
(`CapfOperationsStore`, `CapfIssuer`); the phone session carries the phone's own keys.

Reason codes answered on error: 7 (invalid element / operation refused), 9 (unknown device).

Offline-CA mode (issuer "offline"): after the key-generate exchange the server sends a
sign-certificate request (22) naming the subject CN; the phone answers (23) with a PKCS#10 CSR
signed by its new key, carried in the CERTIFICATE element (nested form, type LSC: wire-formats
§4 names no separate CSR element). The server keeps the CSR and ends with retry-later (16, a
RETRY_DELAY element in seconds); when the phone comes back after the third-party CA's
certificate was imported, the usual store-certificate request delivers it.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal, Protocol, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from ccmsec.domain import CapfAuthMode, CapfOperation

PROTOCOL_ID = 0x55
PROTOCOL_VERSION = 3
HEADER = struct.Struct(">BBIH")
HEADER_SIZE = HEADER.size  # 8
ELEMENT_HEADER = struct.Struct(">BH")

# Bounds. A CAPF body holds at most one certificate (RSA-4096 ≈ 1.5 KiB) plus a signature;
# 8 KiB leaves ample room while keeping a hostile peer from making us buffer 64 KiB per frame.
MAX_BODY = 8192
MAX_ELEMENTS = 16
MAX_NAME = 64
MAX_PASSWORD = 64
MAX_REASON_INFO = 256
MAX_RETRY_DELAY = 7 * 24 * 3600  # a week: anything longer is a server error, not a schedule


class Command(enum.IntEnum):
    AUTH_REQUEST = 1
    AUTH_RESPONSE = 2
    KEY_GEN_REQUEST = 3
    KEY_GEN_RESPONSE = 4
    STORE_CERT_REQUEST = 9
    STORE_CERT_RESPONSE = 10
    FETCH_CERT_REQUEST = 11
    FETCH_CERT_RESPONSE = 12
    DELETE_CERT_REQUEST = 13
    DELETE_CERT_RESPONSE = 14
    END_SESSION = 15
    RETRY_LATER = 16
    REQUEST_IN_PROGRESS = 17
    STATUS_REQUEST = 18
    STATUS_RESPONSE = 19
    ABORT_REQUEST = 20
    ABORT_RESPONSE = 21
    SIGN_CERT_REQUEST = 22
    SIGN_CERT_RESPONSE = 23


class Element(enum.IntEnum):
    REASON = 1
    REASON_INFO = 2
    CERT_TYPE = 3
    CERTIFICATE = 4
    CERT_ID = 5
    SIGNED_DATA = 6  # SHA-1
    VERSION = 7
    AUTH_TYPE = 8
    PUBLIC_KEY = 9
    KEY_SIZE = 10
    PASSWORD = 11
    RETRY_DELAY = 12
    DEVICE_NAME = 13
    SUDI_DATA = 16  # sent by newer phones; opaque to us
    KEY_TYPE = 17
    CURVE = 18
    DIGEST_TYPE = 19
    SIGNED_DATA_SHA2 = 20


class Reason(enum.IntEnum):
    NO_ACTION = 0
    OK = 1
    INVALID_ELEMENT = 7
    UNKNOWN_DEVICE = 9


class AuthType(enum.IntEnum):
    NONE = 0
    PASSWORD = 1
    NO_PASSWORD = 2
    LSC = 3
    MIC = 4


class CertType(enum.IntEnum):
    LSC = 1
    MIC = 2


class KeyType(enum.IntEnum):
    RSA = 0
    EC = 1


class Curve(enum.IntEnum):
    P256 = 0
    P384 = 1
    P521 = 2


# Fixed value sizes; any other length for these tags is an invalid element.
_FIXED_SIZE = {
    Element.REASON: 1, Element.CERT_TYPE: 1, Element.VERSION: 1, Element.AUTH_TYPE: 1,
    Element.KEY_SIZE: 2, Element.KEY_TYPE: 1, Element.CURVE: 1, Element.DIGEST_TYPE: 1,
}
_ENUM_VALUE = {
    Element.CERT_TYPE: CertType, Element.AUTH_TYPE: AuthType, Element.KEY_TYPE: KeyType,
    Element.CURVE: Curve,
}
REQUIRED: dict[Command, frozenset[Element]] = {
    Command.AUTH_REQUEST: frozenset({Element.VERSION, Element.AUTH_TYPE}),
    Command.AUTH_RESPONSE: frozenset({Element.VERSION, Element.DEVICE_NAME}),
    Command.KEY_GEN_REQUEST: frozenset({Element.KEY_TYPE}),
    Command.KEY_GEN_RESPONSE: frozenset({Element.PUBLIC_KEY}),
    Command.STORE_CERT_REQUEST: frozenset({Element.CERT_TYPE, Element.CERTIFICATE}),
    Command.STORE_CERT_RESPONSE: frozenset({Element.REASON}),
    Command.FETCH_CERT_RESPONSE: frozenset({Element.CERTIFICATE}),
    Command.DELETE_CERT_RESPONSE: frozenset({Element.REASON}),
    Command.END_SESSION: frozenset({Element.REASON}),
    Command.RETRY_LATER: frozenset({Element.RETRY_DELAY}),
    Command.SIGN_CERT_REQUEST: frozenset({Element.DEVICE_NAME}),
    Command.SIGN_CERT_RESPONSE: frozenset({Element.REASON}),
}


class CapfProtocolError(ValueError):
    """Bad CAPF input; `reason` is the CAPF reason code to end the session with."""

    def __init__(self, message: str, reason: int = Reason.INVALID_ELEMENT):
        super().__init__(message)
        self.reason = int(reason)


class CapfAuthError(ValueError):
    """The phone's credential (auth string, LSC or MIC signature) was refused."""


# ---------------------------------------------------------------------------------------------
# Frames


@dataclass(frozen=True)
class Frame:
    command: Command
    session_id: int
    elements: dict[Element, bytes] = field(default_factory=dict)

    def has(self, tag: Element) -> bool:
        return tag in self.elements

    def raw(self, tag: Element) -> bytes:
        try:
            return self.elements[tag]
        except KeyError:
            raise CapfProtocolError(f"{self.command.name}: missing element {tag.name}") from None

    def u8(self, tag: Element) -> int:
        return self.raw(tag)[0]

    def u16(self, tag: Element) -> int:
        return int.from_bytes(self.raw(tag), "big")

    def text(self, tag: Element) -> str:
        return decode_cstring(self.raw(tag), tag)

    def certificate(self) -> tuple[CertType, bytes]:
        return decode_certificate_element(self.raw(Element.CERTIFICATE))

    def encode(self) -> bytes:
        return encode_frame(self.command, self.session_id, self.elements.items())


def encode_frame(command: int, session_id: int, elements: Iterable[tuple[int, bytes]]) -> bytes:
    body = bytearray()
    count = 0
    for tag, value in elements:
        if len(value) > 0xFFFF:
            raise CapfProtocolError(f"element {tag} too long to encode ({len(value)} bytes)")
        body += ELEMENT_HEADER.pack(int(tag), len(value)) + value
        count += 1
    if len(body) > MAX_BODY or count > MAX_ELEMENTS:
        raise CapfProtocolError(f"frame too large to encode ({len(body)} bytes, {count} elements)")
    if not 0 <= session_id <= 0xFFFFFFFF:
        raise CapfProtocolError(f"session id out of range: {session_id}")
    return HEADER.pack(PROTOCOL_ID, int(command), session_id, len(body)) + bytes(body)


def _parse_header(data: bytes) -> tuple[Command, int, int]:
    proto, command, session_id, length = HEADER.unpack_from(data)
    if proto != PROTOCOL_ID:
        raise CapfProtocolError(f"not a CAPF frame: protocol id 0x{proto:02x}, expected 0x55")
    try:
        cmd = Command(command)
    except ValueError:
        raise CapfProtocolError(f"unknown CAPF command {command}") from None
    if length > MAX_BODY:
        raise CapfProtocolError(f"frame body of {length} bytes exceeds the {MAX_BODY}-byte cap")
    return cmd, session_id, length


def _parse_elements(command: Command, body: bytes) -> dict[Element, bytes]:
    elements: dict[Element, bytes] = {}
    pos = 0
    while pos < len(body):
        if len(elements) >= MAX_ELEMENTS:
            raise CapfProtocolError(f"{command.name}: more than {MAX_ELEMENTS} elements")
        if len(body) - pos < ELEMENT_HEADER.size:
            raise CapfProtocolError(f"{command.name}: truncated element header at offset {pos}")
        tag_num, length = ELEMENT_HEADER.unpack_from(body, pos)
        pos += ELEMENT_HEADER.size
        if length > len(body) - pos:
            raise CapfProtocolError(
                f"{command.name}: element {tag_num} claims {length} bytes, "
                f"only {len(body) - pos} left in the frame"
            )
        try:
            tag = Element(tag_num)
        except ValueError:
            raise CapfProtocolError(f"{command.name}: unknown element tag {tag_num}") from None
        if tag in elements:
            raise CapfProtocolError(f"{command.name}: duplicate element {tag.name}")
        value = bytes(body[pos:pos + length])
        pos += length
        _check_value(command, tag, value)
        elements[tag] = value
    missing = REQUIRED.get(command, frozenset()) - elements.keys()
    if missing:
        names = ", ".join(sorted(t.name for t in missing))
        raise CapfProtocolError(f"{command.name}: missing required element(s) {names}")
    return elements


def _check_value(command: Command, tag: Element, value: bytes) -> None:
    size = _FIXED_SIZE.get(tag)
    if size is not None and len(value) != size:
        raise CapfProtocolError(f"{command.name}: element {tag.name} must be {size} byte(s), got {len(value)}")
    enum_type = _ENUM_VALUE.get(tag)
    if enum_type is not None:
        try:
            enum_type(value[0])
        except ValueError:
            raise CapfProtocolError(f"{command.name}: invalid {tag.name} value {value[0]}") from None
    if tag in (Element.DEVICE_NAME, Element.PASSWORD):
        decode_cstring(value, tag)
    elif tag is Element.CERTIFICATE:
        decode_certificate_element(value)
    elif tag is Element.REASON_INFO and len(value) > MAX_REASON_INFO:
        raise CapfProtocolError(f"{command.name}: REASON_INFO longer than {MAX_REASON_INFO} bytes")
    elif tag is Element.RETRY_DELAY:
        decode_retry_delay(value)


def decode_frame(data: bytes) -> Frame:
    """Decode exactly one whole frame; trailing or missing bytes are errors."""
    if len(data) < HEADER_SIZE:
        raise CapfProtocolError(f"truncated CAPF header: {len(data)} of {HEADER_SIZE} bytes")
    command, session_id, length = _parse_header(data)
    if len(data) != HEADER_SIZE + length:
        raise CapfProtocolError(
            f"CAPF frame length mismatch: header says {length} body bytes, got {len(data) - HEADER_SIZE}"
        )
    return Frame(command, session_id, _parse_elements(command, data[HEADER_SIZE:]))


class FrameReader:
    """Streaming decoder: feed arbitrary chunks, get whole frames. Buffers at most one frame."""

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, chunk: bytes) -> list[Frame]:
        self._buf += chunk
        frames: list[Frame] = []
        while len(self._buf) >= HEADER_SIZE:
            # The header is validated before the body arrives, so the buffer never exceeds
            # HEADER_SIZE + MAX_BODY plus one read's worth.
            _cmd, _sid, length = _parse_header(bytes(self._buf[:HEADER_SIZE]))
            end = HEADER_SIZE + length
            if len(self._buf) < end:
                break
            frames.append(decode_frame(bytes(self._buf[:end])))
            del self._buf[:end]
        return frames

    def at_eof(self) -> None:
        """The stream closed: a half-received frame is an error, never silently dropped."""
        if self._buf:
            raise CapfProtocolError(f"stream ended inside a CAPF frame ({len(self._buf)} bytes pending)")


# ---------------------------------------------------------------------------------------------
# Element value codecs


def encode_cstring(text: str) -> bytes:
    return text.encode("utf-8") + b"\x00"


def decode_cstring(value: bytes, tag: Element) -> str:
    limit = MAX_NAME if tag is Element.DEVICE_NAME else MAX_PASSWORD
    if not value or value[-1] != 0:
        raise CapfProtocolError(f"{tag.name} is not NUL-terminated")
    raw = value[:-1]
    if not raw or len(raw) > limit or b"\x00" in raw:
        raise CapfProtocolError(f"{tag.name} must be 1..{limit} bytes without embedded NUL")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CapfProtocolError(f"{tag.name} is not valid UTF-8") from None
    if tag is Element.DEVICE_NAME and not all(c.isascii() and (c.isalnum() or c in "-_.") for c in text):
        raise CapfProtocolError(f"DEVICE_NAME has characters outside [A-Za-z0-9-_.]: {text!r}")
    return text


def encode_certificate_element(cert_type: CertType, der: bytes) -> bytes:
    # Nested form `01 <len> 00 <type> <DER>`; len covers the `00 <type>` pair and the DER.
    return struct.pack(">BHBB", 1, len(der) + 2, 0, int(cert_type)) + der


def decode_certificate_element(value: bytes) -> tuple[CertType, bytes]:
    if len(value) < 6:
        raise CapfProtocolError(f"CERTIFICATE element too short ({len(value)} bytes)")
    marker, inner, zero, ctype = struct.unpack_from(">BHBB", value)
    if marker != 1 or zero != 0:
        raise CapfProtocolError("CERTIFICATE element has a bad nested header")
    if inner != len(value) - 3:
        raise CapfProtocolError(f"CERTIFICATE nested length {inner} does not match element ({len(value) - 3})")
    try:
        cert_type = CertType(ctype)
    except ValueError:
        raise CapfProtocolError(f"CERTIFICATE has unknown certificate type {ctype}") from None
    return cert_type, bytes(value[5:])


def encode_retry_delay(seconds: int) -> bytes:
    """RETRY_DELAY value: seconds as uint32 BE."""
    if not 1 <= seconds <= MAX_RETRY_DELAY:
        raise CapfProtocolError(f"retry delay {seconds}s outside 1..{MAX_RETRY_DELAY}")
    return int(seconds).to_bytes(4, "big")


def decode_retry_delay(value: bytes) -> int:
    """1..4 bytes BE, 1 second up to a week."""
    if not 1 <= len(value) <= 4:
        raise CapfProtocolError(f"RETRY_DELAY must be 1..4 bytes, got {len(value)}")
    seconds = int.from_bytes(value, "big")
    if not 1 <= seconds <= MAX_RETRY_DELAY:
        raise CapfProtocolError(f"RETRY_DELAY of {seconds}s outside 1..{MAX_RETRY_DELAY}")
    return seconds


def build_csr(device_name: str, private_key) -> bytes:
    """The phone's PKCS#10 request (DER): subject CN = device name, signed by the phone's key
    (proof of possession for the third-party CA)."""
    from cryptography.x509.oid import NameOID

    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_name)]))
        .sign(private_key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )


def decode_csr(der: bytes, device_name: str, public_key_der: bytes | None = None) -> x509.CertificateSigningRequest:
    """Accept a phone's CSR only if it parses, its signature verifies, its only CN is the device
    name, and (when given) its key is the one the phone reported in KEY_GEN_RESPONSE."""
    from cryptography.x509.oid import NameOID

    try:
        csr = x509.load_der_x509_csr(der)
        key = csr.public_key()
        valid = csr.is_signature_valid
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CapfProtocolError(f"SIGN_CERT_RESPONSE: not a DER PKCS#10 request: {exc}") from None
    if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        raise CapfProtocolError("SIGN_CERT_RESPONSE: CSR key must be RSA or EC")
    if not valid:
        raise CapfProtocolError("SIGN_CERT_RESPONSE: CSR signature does not verify with its own key")
    if len(cns) != 1 or cns[0].value != device_name:
        got = [a.value for a in cns]
        raise CapfProtocolError(f"SIGN_CERT_RESPONSE: CSR subject CN {got!r} is not device {device_name!r}")
    if public_key_der is not None and spki_der(key) != public_key_der:
        raise CapfProtocolError("SIGN_CERT_RESPONSE: CSR is not for the key the phone generated")
    return csr


def _u8(v: int) -> bytes:
    return bytes([int(v)])


def _u16(v: int) -> bytes:
    return int(v).to_bytes(2, "big")


# ---------------------------------------------------------------------------------------------
# Key specifications (what the server asks the phone to generate)


@dataclass(frozen=True)
class KeySpec:
    key_type: KeyType
    size: int | None = None     # RSA modulus bits
    curve: Curve | None = None  # EC curve

    @classmethod
    def parse(cls, kind: str) -> "KeySpec":
        """kind as stored in the database: rsa1024 | rsa2048 | rsa4096 | ec256 | ec384 | ec521."""
        table = {
            "rsa1024": cls(KeyType.RSA, 1024), "rsa2048": cls(KeyType.RSA, 2048),
            "rsa4096": cls(KeyType.RSA, 4096), "ec256": cls(KeyType.EC, curve=Curve.P256),
            "ec384": cls(KeyType.EC, curve=Curve.P384), "ec521": cls(KeyType.EC, curve=Curve.P521),
        }
        try:
            return table[kind]
        except KeyError:
            raise ValueError(f"unsupported CAPF key type {kind!r}") from None

    def elements(self) -> list[tuple[Element, bytes]]:
        out = [(Element.KEY_TYPE, _u8(self.key_type))]
        if self.key_type is KeyType.RSA:
            out.append((Element.KEY_SIZE, _u16(self.size or 0)))
        else:
            out.append((Element.CURVE, _u8(self.curve if self.curve is not None else 0)))
        return out

    @classmethod
    def from_frame(cls, frame: Frame) -> "KeySpec":
        key_type = KeyType(frame.u8(Element.KEY_TYPE))
        if key_type is KeyType.RSA:
            size = frame.u16(Element.KEY_SIZE)
            if size not in (1024, 2048, 4096):
                raise CapfProtocolError(f"KEY_GEN_REQUEST: unsupported RSA size {size}")
            return cls(key_type, size=size)
        return cls(key_type, curve=Curve(frame.u8(Element.CURVE)))

    def matches(self, public_key) -> bool:
        if self.key_type is KeyType.RSA:
            return isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size == self.size
        want = {Curve.P256: "secp256r1", Curve.P384: "secp384r1", Curve.P521: "secp521r1"}[self.curve]  # type: ignore[index]
        return isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name == want

    def generate(self):
        if self.key_type is KeyType.RSA:
            return rsa.generate_private_key(public_exponent=65537, key_size=self.size)  # type: ignore[arg-type]
        curve = {Curve.P256: ec.SECP256R1, Curve.P384: ec.SECP384R1, Curve.P521: ec.SECP521R1}[self.curve]  # type: ignore[index]
        return ec.generate_private_key(curve())


def load_public_key(spki_der: bytes):
    try:
        key = serialization.load_der_public_key(spki_der)
    except (ValueError, TypeError) as exc:
        raise CapfProtocolError(f"PUBLIC_KEY is not a DER SubjectPublicKeyInfo: {exc}") from None
    if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        raise CapfProtocolError("PUBLIC_KEY must be RSA or EC")
    return key


def spki_der(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# ---------------------------------------------------------------------------------------------
# Authentication signature: the phone signs device name + its certificate (DER) with that
# certificate's key. SHA-2 (element 20) is what we send; SHA-1 (element 6) is accepted on input.


def auth_signed_payload(device_name: str, cert_der: bytes) -> bytes:
    return device_name.encode("utf-8") + cert_der


def sign_auth(private_key, device_name: str, cert_der: bytes) -> bytes:
    data = auth_signed_payload(device_name, cert_der)
    if isinstance(private_key, rsa.RSAPrivateKey):
        return private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return private_key.sign(data, ec.ECDSA(hashes.SHA256()))


def verify_auth_signature(cert: x509.Certificate, device_name: str, signature: bytes, sha1: bool = False) -> None:
    """Raise CapfAuthError unless `signature` is the certificate key's over device name + cert."""
    data = auth_signed_payload(device_name, cert.public_bytes(serialization.Encoding.DER))
    algo = hashes.SHA1() if sha1 else hashes.SHA256()
    key = cert.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), algo)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(algo))
        else:
            raise CapfAuthError("certificate key is neither RSA nor EC")
    except InvalidSignature:
        raise CapfAuthError("authentication signature does not verify with the presented certificate") from None


# ---------------------------------------------------------------------------------------------
# Interfaces the server session depends on (implemented in ccmsec.db.capf and ccmsec.pki.lsc)

Operation = CapfOperation   # the vocabulary's words; the store may hand over their text
AuthMode = CapfAuthMode


def auth_type_for(mode: CapfAuthMode | str) -> AuthType:
    """The auth type the server asks for when an operation's auth mode needs a credential."""
    return AuthType(CapfAuthMode.parse(mode).to_wire())


def accepted_certificates(mode: CapfAuthMode | str) -> frozenset[CertType]:
    """Which certificate types a certificate-based auth mode accepts (empty otherwise)."""
    return frozenset(CertType(k.to_wire()) for k in CapfAuthMode.parse(mode).accepted_certificates)


@dataclass(frozen=True)
class ScheduledOperation:
    op_id: int
    device_name: str
    operation: Operation
    auth_mode: AuthMode
    key_kind: str                     # e.g. "rsa2048", "ec256"
    issued_der: bytes | None = None   # certificate already issued for this operation (reconnect)
    csr_der: bytes | None = None      # offline CA: the phone's CSR, kept until a certificate is imported


class AuthCheck(enum.Enum):
    OK = "ok"
    WRONG = "wrong"
    LOCKED = "locked"


@dataclass(frozen=True)
class OperationLookup:
    kind: Literal["unknown", "none", "expired", "locked", "scheduled"]
    operation: ScheduledOperation | None = None


class CapfOperationsStore(Protocol):
    async def find_operation(self, device_name: str) -> OperationLookup:
        """The operation to carry out now for this device (marks past-deadline ones expired)."""

    async def check_auth_string(self, op_id: int, candidate: str | None) -> AuthCheck:
        """Compare with the stored hash; count failures and lock after the limit."""

    async def record_auth_failure(self, op_id: int, why: str) -> AuthCheck:
        """Count a failed certificate-based authentication like a wrong auth string."""

    async def record_issued(self, op_id: int, device_name: str, certificate_der: bytes) -> bytes:
        """Tie a freshly issued certificate to the operation, once: returns the certificate that
        is tied to it (the given one, or one an earlier session already tied)."""

    async def mark_done(self, op_id: int, outcome: str, certificate_der: bytes | None = None) -> None:
        """outcome: installed | fetched | deleted."""

    async def mark_failed(self, op_id: int, reason: str) -> None: ...

    async def record_csr(self, op_id: int, device_name: str, csr_der: bytes) -> None:
        """Offline CA: keep the phone's CSR with the operation (state awaiting_ca). Raises
        ValueError if the operation already has a certificate or is no longer active."""


class CapfIssuer(Protocol):
    async def issue_lsc(self, device_name: str, public_key_der: bytes) -> bytes:
        """Sign an LSC (DER) for the phone's public key."""

    def verify_device_certificate(self, device_name: str, cert_type: CertType, cert: x509.Certificate) -> None:
        """Raise CapfAuthError unless `cert` is a valid LSC (CAPF CA) / MIC (manufacturer CA) of the device."""


# ---------------------------------------------------------------------------------------------
# Server session


class ServerState(enum.Enum):
    AWAIT_AUTH = "await-auth"
    AWAIT_CREDENTIAL = "await-credential"
    AWAIT_KEY = "await-key"
    AWAIT_STORE = "await-store"
    AWAIT_FETCH = "await-fetch"
    AWAIT_DELETE = "await-delete"
    AWAIT_CSR = "await-csr"
    DONE = "done"


class CapfServerSession:
    """One phone connection, server side. `start()` then `handle(frame)` until `finished`.

    Each call returns the encoded frames to send, in order. Errors never escape: a bad or
    out-of-order frame ends the session with the reason code it carries.
    """

    def __init__(self, session_id: int, store: CapfOperationsStore, issuer: CapfIssuer, *,
                 issuer_mode: Callable[[], str] | None = None, retry_delay: int = 600):
        self.session_id = session_id
        self.store = store
        self.issuer = issuer
        # "capf" (sign here) or "offline" (CSR to a third-party CA); read when an operation
        # first reaches key generation; an operation holding a CSR stays offline.
        self.issuer_mode = issuer_mode or (lambda: "capf")
        self.retry_delay = retry_delay
        self.retry_after: int | None = None  # set when the session ended with RETRY_LATER
        self._public_key_der: bytes | None = None
        self.state = ServerState.AWAIT_AUTH
        self.op: ScheduledOperation | None = None
        self.device_name: str | None = None
        self.end_reason: int | None = None
        self.error: str | None = None
        self.certificate_der: bytes | None = None  # issued / fetched certificate
        self._key_spec: KeySpec | None = None
        self._progress_seen = False

    @property
    def finished(self) -> bool:
        return self.state is ServerState.DONE

    def _frame(self, command: Command, elements: Sequence[tuple[Element, bytes]] = ()) -> bytes:
        return encode_frame(command, self.session_id, elements)

    def _end(self, reason: int, error: str | None = None) -> list[bytes]:
        self.state = ServerState.DONE
        self.end_reason = int(reason)
        self.error = error
        return [self._frame(Command.END_SESSION, [(Element.REASON, _u8(reason))])]

    def start(self) -> list[bytes]:
        # The server does not know the device yet: ask for identification; the scheduled
        # operation decides later whether a credential is needed (AWAIT_CREDENTIAL).
        return [self._auth_request(AuthType.NONE)]

    def _auth_request(self, auth_type: AuthType) -> bytes:
        return self._frame(Command.AUTH_REQUEST, [
            (Element.VERSION, _u8(PROTOCOL_VERSION)), (Element.AUTH_TYPE, _u8(auth_type)),
        ])

    def refuse(self, reason: int, info: str) -> list[bytes]:
        """End the session before it starts, saying why in a REASON_INFO element (e.g. CHK-2)."""
        text = info.encode("utf-8")[:MAX_REASON_INFO - 1] + b"\x00"
        self.state = ServerState.DONE
        self.end_reason = int(reason)
        self.error = info
        return [self._frame(Command.END_SESSION, [(Element.REASON, _u8(reason)), (Element.REASON_INFO, text)])]

    def abort(self, exc: CapfProtocolError) -> list[bytes]:
        """End the session for a framing error detected outside `handle` (e.g. by FrameReader)."""
        if self.finished:
            return []
        return self._end(exc.reason, str(exc))

    async def handle(self, frame: Frame) -> list[bytes]:
        if self.finished:
            return []
        try:
            if frame.session_id != self.session_id:
                raise CapfProtocolError(
                    f"{frame.command.name}: session id {frame.session_id} is not this session's {self.session_id}"
                )
            if frame.command in (Command.END_SESSION, Command.ABORT_REQUEST):
                self.state = ServerState.DONE
                self.end_reason = frame.u8(Element.REASON) if frame.has(Element.REASON) else None
                self.error = f"phone ended the session ({frame.command.name})"
                return []
            return await self._dispatch(frame)
        except CapfProtocolError as exc:
            return self._end(exc.reason, str(exc))

    async def _dispatch(self, frame: Frame) -> list[bytes]:
        expected = {
            ServerState.AWAIT_AUTH: (Command.AUTH_RESPONSE,),
            ServerState.AWAIT_CREDENTIAL: (Command.AUTH_RESPONSE,),
            ServerState.AWAIT_KEY: (Command.REQUEST_IN_PROGRESS, Command.KEY_GEN_RESPONSE),
            ServerState.AWAIT_STORE: (Command.STORE_CERT_RESPONSE,),
            ServerState.AWAIT_FETCH: (Command.FETCH_CERT_RESPONSE,),
            ServerState.AWAIT_DELETE: (Command.DELETE_CERT_RESPONSE,),
            ServerState.AWAIT_CSR: (Command.SIGN_CERT_RESPONSE,),
        }[self.state]
        if frame.command not in expected:
            names = " or ".join(c.name for c in expected)
            raise CapfProtocolError(f"out of order: got {frame.command.name} while expecting {names}")
        if frame.command is Command.AUTH_RESPONSE:
            return await self._on_auth_response(frame)
        if frame.command is Command.REQUEST_IN_PROGRESS:
            if self._progress_seen:
                raise CapfProtocolError("out of order: second REQUEST_IN_PROGRESS")
            self._progress_seen = True
            return []
        if frame.command is Command.KEY_GEN_RESPONSE:
            return await self._on_public_key(frame)
        if frame.command is Command.STORE_CERT_RESPONSE:
            return await self._on_stored(frame)
        if frame.command is Command.FETCH_CERT_RESPONSE:
            return await self._on_fetched(frame)
        if frame.command is Command.SIGN_CERT_RESPONSE:
            return await self._on_csr(frame)
        return await self._on_deleted(frame)

    async def _on_auth_response(self, frame: Frame) -> list[bytes]:
        version = frame.u8(Element.VERSION)
        if version != PROTOCOL_VERSION:
            raise CapfProtocolError(f"AUTH_RESPONSE: unsupported CAPF version {version}")
        device = frame.text(Element.DEVICE_NAME)
        if self.state is ServerState.AWAIT_CREDENTIAL:
            if device != self.device_name:
                raise CapfProtocolError(f"AUTH_RESPONSE: device name changed from {self.device_name} to {device}")
        else:
            self.device_name = device
            lookup = await self.store.find_operation(device)
            if lookup.kind == "unknown":
                return self._end(Reason.UNKNOWN_DEVICE, f"unknown device {device}")
            if lookup.kind == "locked":
                return self._end(Reason.INVALID_ELEMENT, f"operation for {device} is locked")
            if lookup.kind in ("none", "expired") or lookup.operation is None:
                return self._end(Reason.NO_ACTION, f"nothing to do for {device} ({lookup.kind})")
            self.op = lookup.operation
        op = self.op
        assert op is not None
        mode = CapfAuthMode.parse(op.auth_mode)
        if mode is CapfAuthMode.NULL:
            return self._begin_operation()
        has_credential = (frame.has(Element.PASSWORD) if mode is CapfAuthMode.STRING
                          else frame.has(Element.CERTIFICATE))
        if not has_credential:
            if self.state is ServerState.AWAIT_CREDENTIAL:
                check = await self.store.record_auth_failure(op.op_id, f"no credential for auth mode {mode}")
                return self._end(Reason.INVALID_ELEMENT, f"{device}: credential missing ({check.value})")
            # Ask once more, now naming the auth type the scheduled operation requires.
            self.state = ServerState.AWAIT_CREDENTIAL
            return [self._auth_request(auth_type_for(mode))]
        if mode is CapfAuthMode.STRING:
            check = await self.store.check_auth_string(op.op_id, frame.text(Element.PASSWORD))
            if check is not AuthCheck.OK:
                return self._end(Reason.INVALID_ELEMENT, f"{device}: auth string refused ({check.value})")
            return self._begin_operation()
        try:
            self._verify_certificate_auth(frame, device, mode)
        except CapfAuthError as exc:
            check = await self.store.record_auth_failure(op.op_id, str(exc))
            return self._end(Reason.INVALID_ELEMENT, f"{device}: {exc} ({check.value})")
        return self._begin_operation()

    def _verify_certificate_auth(self, frame: Frame, device: str, mode: str) -> None:
        cert_type, der = frame.certificate()
        if frame.has(Element.CERT_TYPE) and frame.u8(Element.CERT_TYPE) != cert_type:
            raise CapfAuthError("CERT_TYPE element disagrees with the certificate's nested type")
        if cert_type not in accepted_certificates(mode):
            raise CapfAuthError(f"auth mode {mode} does not accept a {cert_type.name}")
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            raise CapfAuthError("authentication certificate is not valid DER X.509") from None
        if frame.has(Element.SIGNED_DATA_SHA2):
            verify_auth_signature(cert, device, frame.raw(Element.SIGNED_DATA_SHA2))
        elif frame.has(Element.SIGNED_DATA):
            verify_auth_signature(cert, device, frame.raw(Element.SIGNED_DATA), sha1=True)
        else:
            raise CapfAuthError("certificate authentication without a signature")
        self.issuer.verify_device_certificate(device, cert_type, cert)

    def _begin_operation(self) -> list[bytes]:
        op = self.op
        assert op is not None
        operation = CapfOperation.parse(op.operation)
        if operation.issues_certificate:
            self._key_spec = KeySpec.parse(op.key_kind)
            self.state = ServerState.AWAIT_KEY
            return [self._frame(Command.KEY_GEN_REQUEST, self._key_spec.elements())]
        if operation is CapfOperation.TROUBLESHOOT:
            self.state = ServerState.AWAIT_FETCH
            return [self._frame(Command.FETCH_CERT_REQUEST)]
        self.state = ServerState.AWAIT_DELETE
        return [self._frame(Command.DELETE_CERT_REQUEST, [(Element.CERT_TYPE, _u8(CertType.LSC))])]

    async def _on_public_key(self, frame: Frame) -> list[bytes]:
        op, spec = self.op, self._key_spec
        assert op is not None and spec is not None
        spki = frame.raw(Element.PUBLIC_KEY)
        public_key = load_public_key(spki)
        if not spec.matches(public_key):
            raise CapfProtocolError(f"KEY_GEN_RESPONSE: public key is not the requested {op.key_kind}")
        canonical = spki_der(public_key)
        if op.issued_der is not None:
            # A previous session of this operation already issued a certificate: resend it
            # for the same key, never issue a second one.
            der = op.issued_der
        elif op.csr_der is not None or self.issuer_mode() == "offline":
            return await self._offline(canonical)
        else:
            fresh = await self.issuer.issue_lsc(op.device_name, canonical)
            der = await self.store.record_issued(op.op_id, op.device_name, fresh)
        cert = x509.load_der_x509_certificate(der)
        if spki_der(cert.public_key()) != canonical:
            await self.store.mark_failed(op.op_id, "a certificate was already issued to a different key")
            return self._end(Reason.INVALID_ELEMENT, "operation already issued a certificate for another key")
        self.certificate_der = der
        self.state = ServerState.AWAIT_STORE
        return [self._frame(Command.STORE_CERT_REQUEST, [
            (Element.CERT_TYPE, _u8(CertType.LSC)),
            (Element.CERTIFICATE, encode_certificate_element(CertType.LSC, der)),
        ])]

    async def _offline(self, canonical: bytes) -> list[bytes]:
        """Offline CA, no certificate imported yet: ask for a CSR, or (already have the CSR
        for this key) tell the phone to come back later."""
        op = self.op
        assert op is not None
        if op.csr_der is not None:
            held = x509.load_der_x509_csr(op.csr_der).public_key()
            if spki_der(held) == canonical:
                return self._retry_later()
            # The phone lost the key of its first CSR: a new CSR replaces it (nothing was issued).
        self._public_key_der = canonical
        self.state = ServerState.AWAIT_CSR
        return [self._frame(Command.SIGN_CERT_REQUEST, [
            (Element.DEVICE_NAME, encode_cstring(op.device_name)),
            (Element.CERT_TYPE, _u8(CertType.LSC)),
        ])]

    def _retry_later(self) -> list[bytes]:
        self.state = ServerState.DONE
        self.retry_after = self.retry_delay
        return [self._frame(Command.RETRY_LATER, [(Element.RETRY_DELAY, encode_retry_delay(self.retry_delay))])]

    async def _on_csr(self, frame: Frame) -> list[bytes]:
        op = self.op
        assert op is not None
        reason = frame.u8(Element.REASON)
        if reason != Reason.OK:
            await self.store.mark_failed(op.op_id, f"phone refused to sign a CSR (reason {reason})")
            return self._end(Reason.INVALID_ELEMENT, f"phone refused the CSR request (reason {reason})")
        cert_type, der = frame.certificate()
        if cert_type is not CertType.LSC:
            raise CapfProtocolError("SIGN_CERT_RESPONSE: CSR must be carried as certificate type LSC")
        decode_csr(der, op.device_name, self._public_key_der)
        try:
            await self.store.record_csr(op.op_id, op.device_name, der)
        except ValueError as exc:
            return self._end(Reason.INVALID_ELEMENT, f"CSR not kept: {exc}")
        return self._retry_later()

    async def _on_stored(self, frame: Frame) -> list[bytes]:
        op = self.op
        assert op is not None
        reason = frame.u8(Element.REASON)
        if reason != Reason.OK:
            await self.store.mark_failed(op.op_id, f"phone refused to store the LSC (reason {reason})")
            return self._end(Reason.INVALID_ELEMENT, f"phone refused the LSC (reason {reason})")
        await self.store.mark_done(op.op_id, "installed", self.certificate_der)
        return self._end(Reason.OK)

    async def _on_fetched(self, frame: Frame) -> list[bytes]:
        op = self.op
        assert op is not None
        _cert_type, der = frame.certificate()
        try:
            x509.load_der_x509_certificate(der)
        except ValueError:
            raise CapfProtocolError("FETCH_CERT_RESPONSE: certificate is not valid DER X.509") from None
        self.certificate_der = der
        await self.store.mark_done(op.op_id, "fetched", der)
        return self._end(Reason.OK)

    async def _on_deleted(self, frame: Frame) -> list[bytes]:
        op = self.op
        assert op is not None
        reason = frame.u8(Element.REASON)
        if reason not in (Reason.OK, Reason.NO_ACTION):  # NO_ACTION: the phone had no LSC
            await self.store.mark_failed(op.op_id, f"phone refused to delete the LSC (reason {reason})")
            return self._end(Reason.INVALID_ELEMENT, f"phone refused the delete (reason {reason})")
        await self.store.mark_done(op.op_id, "deleted")
        return self._end(Reason.OK)


# ---------------------------------------------------------------------------------------------
# Phone side


@dataclass
class PhoneCredentials:
    """What a phone holds. The MIC is fixed at manufacture (CERT-1); CAPF only touches the LSC."""

    device_name: str
    mic_cert: x509.Certificate | None = None
    mic_key: object | None = None
    lsc_cert: x509.Certificate | None = None
    lsc_key: object | None = None
    auth_string: str | None = None
    # The CAPF certificate from the CTL: when set, a stored LSC must be signed by it.
    capf_certificate: x509.Certificate | None = None
    # A key generated for a pending install, kept until its certificate is stored so a
    # reconnect can present the same key.
    pending_key: object | None = None
    key_factory: Callable[[KeySpec], object] | None = None
    # Offline CA: further issuers a stored LSC may come from (the third-party CA certificate).
    lsc_issuers: Sequence[x509.Certificate] = ()

    @property
    def mic(self) -> tuple[x509.Certificate, object] | None:
        return (self.mic_cert, self.mic_key) if self.mic_cert is not None else None


class CapfPhoneSession:
    """The phone's half of one CAPF session. `receive(frame)` returns the frames to send."""

    def __init__(self, phone: PhoneCredentials):
        self.phone = phone
        self.session_id: int | None = None
        self.end_reason: int | None = None
        self.end_info: str | None = None  # the server's REASON_INFO text, when it sent one
        self.finished = False
        self.retry_after: int | None = None  # seconds, when the server said "retry later"
        self.events: list[str] = []  # what happened, for logs and tests

    def _frame(self, command: Command, elements: Sequence[tuple[Element, bytes]] = ()) -> bytes:
        assert self.session_id is not None
        return encode_frame(command, self.session_id, elements)

    def receive(self, frame: Frame) -> list[bytes]:
        if self.finished:
            return []
        if self.session_id is None:
            # A server refusing every session (e.g. CAPF not activated, CHK-2) ends it at once.
            if frame.command not in (Command.AUTH_REQUEST, Command.END_SESSION):
                raise CapfProtocolError(f"phone: first frame must be AUTH_REQUEST, got {frame.command.name}")
            self.session_id = frame.session_id
        elif frame.session_id != self.session_id:
            raise CapfProtocolError(f"phone: session id changed to {frame.session_id}")
        handler = {
            Command.AUTH_REQUEST: self._on_auth_request,
            Command.KEY_GEN_REQUEST: self._on_key_gen,
            Command.STORE_CERT_REQUEST: self._on_store,
            Command.FETCH_CERT_REQUEST: self._on_fetch,
            Command.DELETE_CERT_REQUEST: self._on_delete,
            Command.END_SESSION: self._on_end,
            Command.SIGN_CERT_REQUEST: self._on_sign_request,
            Command.RETRY_LATER: self._on_retry_later,
        }.get(frame.command)
        if handler is None:
            raise CapfProtocolError(f"phone: unexpected {frame.command.name}")
        return handler(frame)

    def _on_end(self, frame: Frame) -> list[bytes]:
        self.finished = True
        self.end_reason = frame.u8(Element.REASON)
        if frame.has(Element.REASON_INFO):
            self.end_info = frame.raw(Element.REASON_INFO).rstrip(b"\x00").decode("utf-8", "replace")
        self.events.append(f"end:{self.end_reason}")
        return []

    def _on_retry_later(self, frame: Frame) -> list[bytes]:
        # The operation waits for something outside the session (a third-party CA): the phone
        # keeps its pending key and connects again after the delay.
        self.finished = True
        self.retry_after = decode_retry_delay(frame.raw(Element.RETRY_DELAY))
        self.events.append(f"retry:{self.retry_after}")
        return []

    def _on_sign_request(self, frame: Frame) -> list[bytes]:
        p = self.phone
        subject = frame.text(Element.DEVICE_NAME)
        if subject != p.device_name:
            return self._refuse(Command.SIGN_CERT_RESPONSE, f"CSR subject {subject} is not this phone")
        if p.pending_key is None:
            return self._refuse(Command.SIGN_CERT_RESPONSE, "no generated key to sign a CSR with")
        self.events.append("csr")
        return [self._frame(Command.SIGN_CERT_RESPONSE, [
            (Element.REASON, _u8(Reason.OK)),
            (Element.CERTIFICATE, encode_certificate_element(CertType.LSC, build_csr(p.device_name, p.pending_key))),
        ])]

    def _on_auth_request(self, frame: Frame) -> list[bytes]:
        version = frame.u8(Element.VERSION)
        if version != PROTOCOL_VERSION:
            raise CapfProtocolError(f"phone: unsupported CAPF version {version}")
        auth_type = AuthType(frame.u8(Element.AUTH_TYPE))
        p = self.phone
        elements: list[tuple[Element, bytes]] = [
            (Element.VERSION, _u8(PROTOCOL_VERSION)),
            (Element.DEVICE_NAME, encode_cstring(p.device_name)),
        ]
        if auth_type is AuthType.PASSWORD and p.auth_string is not None:
            elements.append((Element.PASSWORD, encode_cstring(p.auth_string)))
        elif auth_type in (AuthType.LSC, AuthType.MIC):
            # CERT-2: the LSC takes precedence when the phone holds one and LSC auth is asked.
            if auth_type is AuthType.LSC and p.lsc_cert is not None:
                chosen = (CertType.LSC, p.lsc_cert, p.lsc_key)
            elif p.mic_cert is not None:
                chosen = (CertType.MIC, p.mic_cert, p.mic_key)
            else:
                chosen = None
            if chosen is not None:
                cert_type, cert, key = chosen
                der = cert.public_bytes(serialization.Encoding.DER)
                elements += [
                    (Element.CERT_TYPE, _u8(cert_type)),
                    (Element.CERTIFICATE, encode_certificate_element(cert_type, der)),
                    (Element.SIGNED_DATA_SHA2, sign_auth(key, p.device_name, der)),
                ]
                self.events.append(f"auth:{cert_type.name}")
        return [self._frame(Command.AUTH_RESPONSE, elements)]

    def _on_key_gen(self, frame: Frame) -> list[bytes]:
        spec = KeySpec.from_frame(frame)
        p = self.phone
        key = p.pending_key
        if key is None or not spec.matches(key.public_key()):  # type: ignore[attr-defined]
            key = p.key_factory(spec) if p.key_factory else spec.generate()
            p.pending_key = key
        self.events.append("keygen")
        return [
            self._frame(Command.REQUEST_IN_PROGRESS),
            self._frame(Command.KEY_GEN_RESPONSE, [(Element.PUBLIC_KEY, spki_der(key.public_key()))]),  # type: ignore[attr-defined]
        ]

    def _refuse(self, command: Command, why: str) -> list[bytes]:
        self.events.append(f"refused:{why}")
        return [self._frame(command, [(Element.REASON, _u8(Reason.INVALID_ELEMENT))])]

    def _on_store(self, frame: Frame) -> list[bytes]:
        p = self.phone
        cert_type, der = frame.certificate()
        if cert_type is not CertType.LSC or frame.u8(Element.CERT_TYPE) != CertType.LSC:
            return self._refuse(Command.STORE_CERT_RESPONSE, "CERT-1: the MIC cannot be overwritten")
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            return self._refuse(Command.STORE_CERT_RESPONSE, "certificate is not valid DER")
        key = p.pending_key
        if key is None or spki_der(cert.public_key()) != spki_der(key.public_key()):  # type: ignore[attr-defined]
            return self._refuse(Command.STORE_CERT_RESPONSE, "certificate is not for the generated key")
        issuers = [c for c in (p.capf_certificate, *p.lsc_issuers) if c is not None]
        if issuers and not any(_issued_by(cert, ca) for ca in issuers):
            return self._refuse(Command.STORE_CERT_RESPONSE, "LSC not issued by CAPF nor a trusted LSC issuer")
        p.lsc_cert, p.lsc_key, p.pending_key = cert, key, None
        self.events.append("stored")
        return [self._frame(Command.STORE_CERT_RESPONSE, [(Element.REASON, _u8(Reason.OK))])]

    def _on_fetch(self, frame: Frame) -> list[bytes]:
        p = self.phone
        if p.lsc_cert is not None:
            cert_type, cert = CertType.LSC, p.lsc_cert
        elif p.mic_cert is not None:
            cert_type, cert = CertType.MIC, p.mic_cert
        else:
            return self._refuse(Command.FETCH_CERT_RESPONSE, "no certificate to fetch")
        der = cert.public_bytes(serialization.Encoding.DER)
        self.events.append(f"fetched:{cert_type.name}")
        return [self._frame(Command.FETCH_CERT_RESPONSE, [
            (Element.CERT_TYPE, _u8(cert_type)),
            (Element.CERTIFICATE, encode_certificate_element(cert_type, der)),
        ])]

    def _on_delete(self, frame: Frame) -> list[bytes]:
        p = self.phone
        if frame.has(Element.CERT_TYPE) and frame.u8(Element.CERT_TYPE) == CertType.MIC:
            return self._refuse(Command.DELETE_CERT_RESPONSE, "CERT-1: the MIC cannot be deleted")
        had = p.lsc_cert is not None
        p.lsc_cert = p.lsc_key = None  # only ever the LSC; the MIC stays (CERT-1)
        self.events.append("deleted" if had else "nothing-to-delete")
        reason = Reason.OK if had else Reason.NO_ACTION
        return [self._frame(Command.DELETE_CERT_RESPONSE, [(Element.REASON, _u8(reason))])]


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False

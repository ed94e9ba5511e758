"""The SRST credentials exchange on TLS port 2445 — sans-IO framing of our own design.

In the source system call control fetches the SRST router's self-signed certificate from the
router's "credentials service" on TCP 2445 when an administrator configures security on an SRST
reference (SRST-2, CHK-10); the certificate then travels to the phones inside their configuration
files (CERT-6). The real exchange is not public, so this is a small explicit replacement: the
client asks, the server answers with its certificate or refuses with a reason. TLS underneath
carries the same certificate; the client checks that the answer is the certificate the TLS server
presented, so a proxy cannot hand out another one.

Frame (integers big-endian):

    magic   "SRSC"  4 bytes
    version         1 byte   (1)
    type            1 byte   1 = GetCertificate, 2 = Certificate, 3 = Error
    length          4 bytes  body length, at most MAX_BODY
    body            GetCertificate: UTF-8 name of the asker (at most MAX_TEXT bytes, may be empty)
                    Certificate:    the DER certificate
                    Error:          UTF-8 reason (at most MAX_TEXT bytes)

`FrameReader` turns arbitrary chunks into messages with a bounded buffer; `encode` turns a message
into bytes; `CredentialsServerSession` / `CredentialsClientSession` are the two sides. Every
malformed input raises `CredentialsProtocolError` naming the problem.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Union

from cryptography import x509

MAGIC = b"SRSC"
VERSION = 1
MAX_BODY = 16 * 1024      # a certificate; the cnf.xml element is bounded the same way
MAX_TEXT = 255
_HEADER = struct.Struct(">4sBBI")


class CredentialsProtocolError(ValueError):
    """Bytes that are not a well-formed SRST credentials message."""


class MessageType(enum.IntEnum):
    GET_CERTIFICATE = 1
    CERTIFICATE = 2
    ERROR = 3


@dataclass(frozen=True)
class GetCertificate:
    client: str = ""


@dataclass(frozen=True)
class Certificate:
    der: bytes

    def certificate(self) -> x509.Certificate:
        try:
            return x509.load_der_x509_certificate(self.der)
        except ValueError as exc:
            raise CredentialsProtocolError(f"Certificate: not a DER X.509 certificate ({exc})") from None


@dataclass(frozen=True)
class CredentialsError:
    reason: str


Message = Union[GetCertificate, Certificate, CredentialsError]


def _text(value: str, what: str) -> bytes:
    data = value.encode("utf-8")
    if len(data) > MAX_TEXT:
        raise CredentialsProtocolError(f"{what}: {len(data)} bytes exceed {MAX_TEXT}")
    return data


def encode(message: Message) -> bytes:
    if isinstance(message, GetCertificate):
        kind, body = MessageType.GET_CERTIFICATE, _text(message.client, "GetCertificate client")
    elif isinstance(message, Certificate):
        kind, body = MessageType.CERTIFICATE, bytes(message.der)
        if not body:
            raise CredentialsProtocolError("Certificate: empty")
    elif isinstance(message, CredentialsError):
        kind, body = MessageType.ERROR, _text(message.reason, "Error reason")
    else:
        raise TypeError(f"not an SRST credentials message: {message!r}")
    if len(body) > MAX_BODY:
        raise CredentialsProtocolError(f"body of {len(body)} bytes exceeds {MAX_BODY}")
    return _HEADER.pack(MAGIC, VERSION, kind, len(body)) + body


def _decode_text(body: bytes, what: str) -> str:
    if len(body) > MAX_TEXT:
        raise CredentialsProtocolError(f"{what}: {len(body)} bytes exceed {MAX_TEXT}")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise CredentialsProtocolError(f"{what}: not UTF-8") from None


def decode_body(kind: int, body: bytes) -> Message:
    if kind == MessageType.GET_CERTIFICATE:
        return GetCertificate(_decode_text(body, "GetCertificate client"))
    if kind == MessageType.CERTIFICATE:
        if not body:
            raise CredentialsProtocolError("Certificate: empty")
        return Certificate(body)
    if kind == MessageType.ERROR:
        return CredentialsError(_decode_text(body, "Error reason"))
    raise CredentialsProtocolError(f"unknown message type {kind}")


class FrameReader:
    """Chunks in, messages out; the buffer never holds more than one frame."""

    def __init__(self, max_body: int = MAX_BODY) -> None:
        self.max_body = max_body
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        self._buffer += data
        out: list[Message] = []
        while len(self._buffer) >= _HEADER.size:
            magic, version, kind, length = _HEADER.unpack_from(self._buffer)
            if magic != MAGIC:
                raise CredentialsProtocolError(f"bad magic {bytes(magic)!r} (expected {MAGIC!r})")
            if version != VERSION:
                raise CredentialsProtocolError(f"unsupported version {version} (expected {VERSION})")
            if length > self.max_body:
                raise CredentialsProtocolError(f"body of {length} bytes exceeds {self.max_body}")
            end = _HEADER.size + length
            if len(self._buffer) < end:
                break
            body = bytes(self._buffer[_HEADER.size:end])
            del self._buffer[:end]
            out.append(decode_body(kind, body))
        return out

    @property
    def pending(self) -> int:
        return len(self._buffer)


class CredentialsServerSession:
    """The router's side: one request per connection, answered with `answer` or `refuse`."""

    def __init__(self) -> None:
        self._reader = FrameReader(max_body=MAX_TEXT)  # a request is only a short name
        self.asked: GetCertificate | None = None

    def receive(self, data: bytes) -> GetCertificate | None:
        for message in self._reader.feed(data):
            if not isinstance(message, GetCertificate):
                raise CredentialsProtocolError(f"server expects GetCertificate, got {type(message).__name__}")
            if self.asked is not None:
                raise CredentialsProtocolError("one GetCertificate per connection")
            self.asked = message
        return self.asked

    @staticmethod
    def answer(der: bytes) -> bytes:
        return encode(Certificate(der))

    @staticmethod
    def refuse(reason: str) -> bytes:
        """Any reason, cut to MAX_TEXT bytes of UTF-8 (not characters: a longer encoding raised)."""
        cut = reason.encode("utf-8")[:MAX_TEXT].decode("utf-8", "ignore")
        return encode(CredentialsError(cut))


class CredentialsClientSession:
    """Call control's side: `request()` bytes out, `receive(data)` until an answer comes."""

    def __init__(self, client: str = "callmanager") -> None:
        self.client = client
        self._reader = FrameReader()

    def request(self) -> bytes:
        return encode(GetCertificate(self.client))

    def receive(self, data: bytes) -> Certificate | CredentialsError | None:
        messages = self._reader.feed(data)
        if not messages:
            return None
        message = messages[0]
        if isinstance(message, GetCertificate):
            raise CredentialsProtocolError("client expects Certificate or Error, got GetCertificate")
        return message

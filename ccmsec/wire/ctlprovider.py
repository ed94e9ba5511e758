"""The CTL Provider exchange on TLS port 2444 — sans-IO framing of our own design.

The real CTL Provider protocol between the CTL client and each server is proprietary and not
documented; this is a small, explicit replacement with the same purpose: the client asks a server
for its certificates and roles, the server answers with them or refuses with a reason (e.g. not
activated, CHK-1). Authentication is done by TLS underneath (see services/ctl-provider/README.md).

Frame (all integers big-endian):

    magic  "CTLP"   4 bytes
    version         1 byte   (1)
    type            1 byte   1 = GetCertificates, 2 = Certificates, 3 = Error
    length          4 bytes  body length, at most MAX_BODY
    body            TLVs (ccmsec.formats.tlv: tag 1 byte, length 2 bytes, value)

Bodies:

    GetCertificates: [T_CLIENT text]                       who asks (for the server's log)
    Certificates:    T_SERVER text, T_ENTRY* (at most MAX_ENTRIES), each T_ENTRY holding
                     E_ROLE u16 (CTL record role), E_DNS text, [E_IPV4 4 bytes], E_DER bytes
    Error:           T_CODE u8 (ErrorCode), T_MESSAGE text

`FrameReader` turns arbitrary chunks into messages with a bounded buffer; `encode` turns a message
into bytes; `ProviderServerSession` / `ProviderClientSession` hold the little state each side has.
Every malformed input raises `ProviderProtocolError` naming the problem.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass
from typing import Union

from ccmsec.formats import tlv
from ccmsec.formats.ctl import Role
from ccmsec.formats.tlv import TlvError

MAGIC = b"CTLP"
VERSION = 1
MAX_BODY = 256 * 1024
MAX_ENTRIES = 32
MAX_TEXT = 255
_HEADER = struct.Struct(">4sBBI")

T_CLIENT, T_SERVER, T_ENTRY, T_CODE, T_MESSAGE = 1, 2, 3, 4, 5
E_ROLE, E_DNS, E_IPV4, E_DER = 1, 2, 3, 4


class ProviderProtocolError(ValueError):
    """Bytes that are not a well-formed CTL Provider message (the message names the problem)."""


class MessageType(enum.IntEnum):
    GET_CERTIFICATES = 1
    CERTIFICATES = 2
    ERROR = 3


class ErrorCode(enum.IntEnum):
    NOT_ACTIVATED = 1      # CHK-1: the service must be activated first
    UNAVAILABLE = 2        # a certificate of this server cannot be obtained right now
    BAD_REQUEST = 3
    UNAUTHORIZED = 4


@dataclass(frozen=True)
class CertificateEntry:
    role: Role
    dns_name: str
    ipv4: str | None
    der: bytes


@dataclass(frozen=True)
class GetCertificates:
    client: str = ""


@dataclass(frozen=True)
class Certificates:
    server: str
    entries: tuple[CertificateEntry, ...]


@dataclass(frozen=True)
class ProviderError:
    code: ErrorCode
    message: str


Message = Union[GetCertificates, Certificates, ProviderError]


# --- encoding -------------------------------------------------------------------------------------
def _text(tag: int, value: str, what: str) -> bytes:
    if len(value.encode("utf-8")) > MAX_TEXT:
        raise ProviderProtocolError(f"{what} is longer than {MAX_TEXT} bytes")
    return tlv.encode_text(tag, value)


def _encode_entry(entry: CertificateEntry) -> bytes:
    parts = [tlv.encode_u16(E_ROLE, Role(entry.role)), _text(E_DNS, entry.dns_name, "DNS name")]
    if entry.ipv4:
        parts.append(tlv.encode(E_IPV4, ipaddress.IPv4Address(entry.ipv4).packed))
    parts.append(tlv.encode(E_DER, entry.der))
    return tlv.encode(T_ENTRY, b"".join(parts))


def encode(message: Message) -> bytes:
    """One frame for `message`."""
    try:
        if isinstance(message, GetCertificates):
            kind = MessageType.GET_CERTIFICATES
            body = _text(T_CLIENT, message.client, "client name") if message.client else b""
        elif isinstance(message, Certificates):
            if len(message.entries) > MAX_ENTRIES:
                raise ProviderProtocolError(f"more than {MAX_ENTRIES} certificates in one answer")
            kind = MessageType.CERTIFICATES
            body = _text(T_SERVER, message.server, "server name") + b"".join(
                _encode_entry(e) for e in message.entries)
        elif isinstance(message, ProviderError):
            kind = MessageType.ERROR
            body = (tlv.encode_u8(T_CODE, ErrorCode(message.code))
                    + tlv.encode_text(T_MESSAGE, message.message[:1024].replace("\x00", " ")))
        else:
            raise ProviderProtocolError(f"not a CTL Provider message: {message!r}")
    except (TlvError, ValueError) as exc:
        if isinstance(exc, ProviderProtocolError):
            raise
        raise ProviderProtocolError(f"cannot encode {type(message).__name__}: {exc}") from None
    if len(body) > MAX_BODY:
        raise ProviderProtocolError(f"message body of {len(body)} bytes is over {MAX_BODY}")
    return _HEADER.pack(MAGIC, VERSION, kind, len(body)) + body


# --- decoding -------------------------------------------------------------------------------------
def _items(body: bytes, allowed: dict[int, str], where: str) -> list[tlv.Tlv]:
    try:
        items = list(tlv.iter_tlvs(body))
    except TlvError as exc:
        raise ProviderProtocolError(f"{where}: {exc}") from None
    for item in items:
        if item.tag not in allowed:
            raise ProviderProtocolError(f"{where}: unexpected tag {item.tag}")
    return items


def _single(items: list[tlv.Tlv], tag: int, name: str, where: str, *, required: bool = True):
    found = [i for i in items if i.tag == tag]
    if len(found) > 1:
        raise ProviderProtocolError(f"{where}: {name} appears {len(found)} times")
    if not found:
        if required:
            raise ProviderProtocolError(f"{where}: {name} is missing")
        return None
    return found[0]


def _decode_text(item: tlv.Tlv | None, name: str, where: str) -> str:
    if item is None:
        return ""
    if len(item.value) > MAX_TEXT + 1:
        raise ProviderProtocolError(f"{where}: {name} is longer than {MAX_TEXT} bytes")
    try:
        return tlv.decode_text(item)
    except (TlvError, ValueError) as exc:
        raise ProviderProtocolError(f"{where}: {name}: {exc}") from None


def _decode_entry(value: bytes, number: int) -> CertificateEntry:
    where = f"certificate entry {number}"
    items = _items(value, {E_ROLE: "role", E_DNS: "DNS name", E_IPV4: "IPv4", E_DER: "DER"}, where)
    role_item = _single(items, E_ROLE, "role", where)
    if len(role_item.value) != 2:
        raise ProviderProtocolError(f"{where}: role must be 2 bytes, got {len(role_item.value)}")
    role_number = int.from_bytes(role_item.value, "big")
    try:
        role = Role(role_number)
    except ValueError:
        raise ProviderProtocolError(f"{where}: unknown role {role_number}") from None
    dns = _decode_text(_single(items, E_DNS, "DNS name", where, required=False), "DNS name", where)
    ip_item = _single(items, E_IPV4, "IPv4 address", where, required=False)
    ipv4 = None
    if ip_item is not None:
        if len(ip_item.value) != 4:
            raise ProviderProtocolError(f"{where}: IPv4 address must be 4 bytes, "
                                        f"got {len(ip_item.value)}")
        ipv4 = str(ipaddress.IPv4Address(ip_item.value))
    der = _single(items, E_DER, "certificate", where).value
    if not der:
        raise ProviderProtocolError(f"{where}: empty certificate")
    return CertificateEntry(role, dns, ipv4, bytes(der))


def decode_body(kind: int, body: bytes) -> Message:
    """The message of one frame's type and body."""
    if kind == MessageType.GET_CERTIFICATES:
        items = _items(body, {T_CLIENT: "client"}, "GetCertificates")
        return GetCertificates(_decode_text(_single(items, T_CLIENT, "client name",
                                                    "GetCertificates", required=False),
                                            "client name", "GetCertificates"))
    if kind == MessageType.CERTIFICATES:
        items = _items(body, {T_SERVER: "server", T_ENTRY: "entry"}, "Certificates")
        server = _decode_text(_single(items, T_SERVER, "server name", "Certificates"),
                              "server name", "Certificates")
        raw_entries = [i for i in items if i.tag == T_ENTRY]
        if len(raw_entries) > MAX_ENTRIES:
            raise ProviderProtocolError(f"Certificates: {len(raw_entries)} entries, "
                                        f"at most {MAX_ENTRIES} allowed")
        entries = tuple(_decode_entry(bytes(i.value), n) for n, i in enumerate(raw_entries, 1))
        return Certificates(server, entries)
    if kind == MessageType.ERROR:
        items = _items(body, {T_CODE: "code", T_MESSAGE: "message"}, "Error")
        code_item = _single(items, T_CODE, "error code", "Error")
        if len(code_item.value) != 1:
            raise ProviderProtocolError("Error: error code must be 1 byte")
        try:
            code = ErrorCode(code_item.value[0])
        except ValueError:
            raise ProviderProtocolError(f"Error: unknown error code {code_item.value[0]}") from None
        item = _single(items, T_MESSAGE, "message", "Error", required=False)
        try:
            text = "" if item is None else bytes(item.value).decode("utf-8", "replace")
        except Exception:  # pragma: no cover - decode with "replace" does not fail
            text = ""
        return ProviderError(code, text.rstrip("\x00"))
    raise ProviderProtocolError(f"unknown message type {kind}")


class FrameReader:
    """Feed arbitrary chunks; get whole messages. The buffer never holds more than one frame."""

    def __init__(self, max_body: int = MAX_BODY):
        self._buffer = bytearray()
        self._max_body = max_body

    def feed(self, data: bytes) -> list[Message]:
        self._buffer += data
        messages: list[Message] = []
        while len(self._buffer) >= _HEADER.size:
            magic, version, kind, length = _HEADER.unpack_from(self._buffer)
            if magic != MAGIC:
                raise ProviderProtocolError(f"bad magic {bytes(magic)!r}: not a CTL Provider frame")
            if version != VERSION:
                raise ProviderProtocolError(f"unsupported protocol version {version} "
                                            f"(expected {VERSION})")
            if length > self._max_body:
                raise ProviderProtocolError(f"frame body of {length} bytes is over the "
                                            f"{self._max_body}-byte limit")
            end = _HEADER.size + length
            if len(self._buffer) < end:
                break
            body = bytes(self._buffer[_HEADER.size:end])
            del self._buffer[:end]
            messages.append(decode_body(kind, body))
        return messages

    @property
    def pending(self) -> int:
        return len(self._buffer)


# --- the two sides ----------------------------------------------------------------------------------
class ProviderServerSession:
    """Server side: requests in, answers out. A client may ask several times on one connection."""

    def __init__(self) -> None:
        self._reader = FrameReader(max_body=4096)  # requests are tiny; refuse anything large

    def receive(self, data: bytes) -> list[GetCertificates]:
        requests = []
        for message in self._reader.feed(data):
            if not isinstance(message, GetCertificates):
                raise ProviderProtocolError(f"a client may only send GetCertificates, "
                                            f"got {type(message).__name__}")
            requests.append(message)
        return requests

    @staticmethod
    def answer(server: str, entries: list[CertificateEntry]) -> bytes:
        return encode(Certificates(server, tuple(entries)))

    @staticmethod
    def refuse(code: ErrorCode, message: str) -> bytes:
        return encode(ProviderError(code, message))


class ProviderClientSession:
    """Client side: one request, one answer (Certificates or ProviderError)."""

    def __init__(self, client: str = "ccmsec-ctl-client") -> None:
        self._client = client
        self._reader = FrameReader()
        self.result: Certificates | ProviderError | None = None

    def request(self) -> bytes:
        return encode(GetCertificates(self._client))

    def receive(self, data: bytes) -> Certificates | ProviderError | None:
        for message in self._reader.feed(data):
            if isinstance(message, GetCertificates):
                raise ProviderProtocolError("the server sent a request instead of an answer")
            if self.result is None:
                self.result = message
        return self.result

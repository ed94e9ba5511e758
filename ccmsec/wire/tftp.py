"""TFTP, sans-IO: packet codec, option negotiation and the read-transfer state machines.

Covers RFC 1350 (base protocol), RFC 2347 (option extension, OACK), RFC 2348 (blksize),
RFC 2349 (timeout, tsize) and RFC 7440 (windowsize). Nothing here touches a socket: the
state machines take datagrams and clock readings and hand back datagrams to send, so the
asyncio adapters in `ccmsec.aio.tftp` stay thin and every rule can be tested without I/O.

Addresses are opaque hashable values (the adapters use the `(host, port)` tuples asyncio
gives them). A transfer is bound to one peer address (its TID); a datagram from any other
address gets ERROR 5 and leaves the transfer untouched (RFC 1350 §4).

Choices where the RFCs leave room:
- an option with an unparsable or out-of-range value is ignored (not acknowledged), so the
  transfer falls back to the RFC 1350 default for it, as tftpd-hpa does;
- a blksize or windowsize above the server's maximum is answered with the maximum (RFC 2348,
  RFC 7440 allow the server to answer with a smaller value);
- a timeout above the server's maximum is ignored (RFC 2349 lets the server only echo it), so a
  client cannot hold a transfer slot for up to 255 s per retry;
- duplicate ACKs never trigger retransmission (Sorcerer's Apprentice, RFC 1123 §4.2.3.1);
  only the retransmission timer resends the outstanding window;
- block numbers wrap from 65535 to 0, so transfers of any number of blocks work.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import Hashable

# Opcodes (RFC 1350 §5, RFC 2347).
OP_RRQ = 1
OP_WRQ = 2
OP_DATA = 3
OP_ACK = 4
OP_ERROR = 5
OP_OACK = 6

# Error codes (RFC 1350 appendix, RFC 2347).
ERR_NOT_DEFINED = 0
ERR_FILE_NOT_FOUND = 1
ERR_ACCESS_VIOLATION = 2
ERR_DISK_FULL = 3
ERR_ILLEGAL_OPERATION = 4
ERR_UNKNOWN_TID = 5
ERR_FILE_EXISTS = 6
ERR_NO_SUCH_USER = 7
ERR_OPTION_REFUSED = 8

DEFAULT_BLKSIZE = 512
MIN_BLKSIZE = 8
MAX_BLKSIZE = 65464
MIN_TIMEOUT = 1
MAX_TIMEOUT = 255
MIN_WINDOWSIZE = 1
MAX_WINDOWSIZE = 65535
DEFAULT_MAX_TIMEOUT = 10  # seconds a server accepts per retry; MAX_TIMEOUT x retries pins a slot for minutes

MAX_FILENAME = 255  # bytes
MAX_REQUEST = 512  # RFC 2347: a request with options must still fit in 512 octets
MAX_OPTIONS = 16
MAX_OPTION_TEXT = 64  # bytes per option name or value
MAX_ERROR_MESSAGE = 512
MAX_DATAGRAM = 4 + MAX_BLKSIZE
# netascii re-encodes the file per transfer (up to twice its size, not shared between transfers):
# bounded, so requests for a firmware image in netascii cannot multiply it in memory. Phones and
# our own tools fetch in octet mode; text files served are far smaller.
MAX_NETASCII_SIZE = 1024 * 1024

KNOWN_OPTIONS = ("blksize", "tsize", "timeout", "windowsize")
MODES = ("netascii", "octet")

Address = Hashable
Outgoing = tuple[bytes, Address]


class TftpPacketError(ValueError):
    """A datagram is not a well-formed TFTP packet. `error_code` is the code to answer with."""

    def __init__(self, message: str, error_code: int = ERR_ILLEGAL_OPERATION) -> None:
        super().__init__(message)
        self.error_code = error_code


class TftpError(Exception):
    """A TFTP error with its protocol code: raised by resolvers, reported to clients."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"TFTP error {code}: {message}")
        self.code = code
        self.message = message


class TftpTimeoutError(TftpError):
    """The peer stopped answering and the retry budget is spent."""

    def __init__(self, message: str = "transfer timed out") -> None:
        super().__init__(ERR_NOT_DEFINED, message)


# ---------------------------------------------------------------------------------------------
# Packets


@dataclass(frozen=True, slots=True)
class Request:
    """RRQ or WRQ. Option names are lower-cased; values are kept as sent."""

    opcode: int
    filename: str
    mode: str
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Data:
    block: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    block: int


@dataclass(frozen=True, slots=True)
class Error:
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class OAck:
    options: dict[str, str]


Packet = Request | Data | Ack | Error | OAck

_U16 = struct.Struct("!H")
_HEADER = struct.Struct("!HH")


def _text(raw: bytes, what: str, limit: int) -> str:
    if len(raw) > limit:
        raise TftpPacketError(f"{what} longer than {limit} bytes")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise TftpPacketError(f"{what} is not ASCII") from None


def _strings(body: bytes, what: str) -> list[bytes]:
    """Split a run of NUL-terminated strings; the last one must be terminated."""
    if not body or body[-1] != 0:
        raise TftpPacketError(f"{what}: missing NUL terminator")
    return body[:-1].split(b"\0")


def _parse_options(parts: list[bytes], what: str) -> dict[str, str]:
    if len(parts) % 2:
        raise TftpPacketError(f"{what}: option name without a value")
    if len(parts) // 2 > MAX_OPTIONS:
        raise TftpPacketError(f"{what}: more than {MAX_OPTIONS} options")
    options: dict[str, str] = {}
    for i in range(0, len(parts), 2):
        name = _text(parts[i], "option name", MAX_OPTION_TEXT).lower()
        value = _text(parts[i + 1], "option value", MAX_OPTION_TEXT)
        if not name:
            raise TftpPacketError(f"{what}: empty option name")
        if name in options:
            raise TftpPacketError(f"{what}: option {name!r} given twice")
        options[name] = value
    return options


def parse_packet(datagram: bytes) -> Packet:
    """Decode one datagram. Raises TftpPacketError (a ValueError) on anything malformed."""
    size = len(datagram)
    if size < 4:
        raise TftpPacketError(f"datagram of {size} bytes is shorter than any TFTP packet")
    opcode = _U16.unpack_from(datagram)[0]
    if opcode == OP_DATA:
        if size > MAX_DATAGRAM:
            raise TftpPacketError(f"DATA of {size} bytes exceeds the largest block size")
        return Data(_U16.unpack_from(datagram, 2)[0], bytes(datagram[4:]))
    if opcode == OP_ACK:
        if size != 4:
            raise TftpPacketError(f"ACK must be 4 bytes, got {size}")
        return Ack(_U16.unpack_from(datagram, 2)[0])
    if opcode in (OP_RRQ, OP_WRQ):
        return _parse_request(opcode, datagram)
    if opcode == OP_ERROR:
        if size > 4 + MAX_ERROR_MESSAGE + 1:
            raise TftpPacketError("ERROR message too long")
        code = _U16.unpack_from(datagram, 2)[0]
        body = datagram[4:]
        # Some stacks omit the trailing NUL; accept it with or without, stop at the first NUL.
        message = bytes(body).split(b"\0", 1)[0].decode("ascii", "replace")
        return Error(code, message)
    if opcode == OP_OACK:
        if size > MAX_REQUEST:
            raise TftpPacketError("OACK longer than 512 bytes")
        return OAck(_parse_options(_strings(bytes(datagram[2:]), "OACK"), "OACK"))
    raise TftpPacketError(f"unknown opcode {opcode}")


def _parse_request(opcode: int, datagram: bytes) -> Request:
    what = "RRQ" if opcode == OP_RRQ else "WRQ"
    if len(datagram) > MAX_REQUEST:
        raise TftpPacketError(f"{what} longer than {MAX_REQUEST} bytes", ERR_ACCESS_VIOLATION)
    parts = _strings(bytes(datagram[2:]), what)
    if len(parts) < 2:
        raise TftpPacketError(f"{what}: missing transfer mode")
    if len(parts[0]) > MAX_FILENAME:
        raise TftpPacketError(f"{what}: file name longer than {MAX_FILENAME} bytes", ERR_ACCESS_VIOLATION)
    try:
        filename = parts[0].decode("ascii")
    except UnicodeDecodeError:
        raise TftpPacketError(f"{what}: file name is not ASCII", ERR_ACCESS_VIOLATION) from None
    if not filename:
        raise TftpPacketError(f"{what}: empty file name", ERR_FILE_NOT_FOUND)
    mode = _text(parts[1], "mode", MAX_OPTION_TEXT).lower()
    if mode not in MODES:
        raise TftpPacketError(f"{what}: unsupported transfer mode {mode!r}")
    return Request(opcode, filename, mode, _parse_options(parts[2:], what))


def _cstr(text: str) -> bytes:
    raw = text.encode("ascii")
    if b"\0" in raw:
        raise ValueError("TFTP strings cannot contain NUL")
    return raw + b"\0"


def encode_request(opcode: int, filename: str, mode: str = "octet", options: dict[str, str] | None = None) -> bytes:
    parts = [_U16.pack(opcode), _cstr(filename), _cstr(mode)]
    for name, value in (options or {}).items():
        parts += [_cstr(name), _cstr(value)]
    return b"".join(parts)


def encode_rrq(filename: str, mode: str = "octet", options: dict[str, str] | None = None) -> bytes:
    return encode_request(OP_RRQ, filename, mode, options)


def encode_data(block: int, payload: bytes) -> bytes:
    return _HEADER.pack(OP_DATA, block & 0xFFFF) + payload


def encode_ack(block: int) -> bytes:
    return _HEADER.pack(OP_ACK, block & 0xFFFF)


def encode_error(code: int, message: str) -> bytes:
    msg = message.encode("ascii", "replace").replace(b"\0", b" ")[:MAX_ERROR_MESSAGE]
    return _HEADER.pack(OP_ERROR, code & 0xFFFF) + msg + b"\0"


def encode_oack(options: dict[str, str]) -> bytes:
    return _U16.pack(OP_OACK) + b"".join(_cstr(k) + _cstr(v) for k, v in options.items())


# ---------------------------------------------------------------------------------------------
# File names


def check_filename(name: str) -> None:
    """Refuse names that could leave the served tree. Raises TftpError(2, ...)."""
    if not name:
        raise TftpError(ERR_FILE_NOT_FOUND, "empty file name")
    if len(name.encode("utf-8", "replace")) > MAX_FILENAME:
        raise TftpError(ERR_ACCESS_VIOLATION, "file name too long")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise TftpError(ERR_ACCESS_VIOLATION, "control character in file name")
    if name[0] in "/\\" or (len(name) > 1 and name[1] == ":"):
        raise TftpError(ERR_ACCESS_VIOLATION, "absolute paths are not served")
    if ".." in name.replace("\\", "/").split("/"):
        raise TftpError(ERR_ACCESS_VIOLATION, "path traversal refused")


# ---------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What a server agreed to. `acknowledged` is the OACK content (empty: no OACK)."""

    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    timeout: float | None = None
    acknowledged: dict[str, str] = field(default_factory=dict)


def negotiate(
    requested: dict[str, str], file_size: int, *, max_blksize: int = MAX_BLKSIZE, max_windowsize: int = 64,
    max_timeout: int = DEFAULT_MAX_TIMEOUT,
) -> Negotiated:
    """Server side of RFC 2347: accept the options we know with valid values, ignore the rest."""
    blksize, windowsize, timeout = DEFAULT_BLKSIZE, 1, None
    ack: dict[str, str] = {}
    for name, value in requested.items():
        if name == "blksize":
            got = _clamped(value, MIN_BLKSIZE, MAX_BLKSIZE, max_blksize)
            if got is not None:
                blksize = got
                ack[name] = str(got)
        elif name == "windowsize":
            got = _clamped(value, MIN_WINDOWSIZE, MAX_WINDOWSIZE, max_windowsize)
            if got is not None:
                windowsize = got
                ack[name] = str(got)
        elif name == "timeout":
            got = _clamped(value, MIN_TIMEOUT, MAX_TIMEOUT, MAX_TIMEOUT)
            if got is not None and got <= max_timeout:  # the OACK must echo it exactly, so no capping
                timeout = float(got)
                ack[name] = str(got)
        elif name == "tsize":
            if value.isdigit() and len(value) <= 20:
                ack[name] = str(file_size)  # RFC 2349: in a RRQ the server returns the real size
    return Negotiated(blksize, windowsize, timeout, ack)


def _clamped(value: str, low: int, high: int, server_max: int) -> int | None:
    """Valid iff low <= value <= high (RFC range); then capped at what the server allows."""
    if not value.isdigit() or len(value) > 10:
        return None
    number = int(value)
    if number < low or number > high:
        return None
    return min(number, server_max)


def netascii_encode(data: bytes) -> bytes:
    """RFC 764 line endings: CR -> CR NUL, LF -> CR LF."""
    return data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


def netascii_decode(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\r\0", b"\r")


# ---------------------------------------------------------------------------------------------
# State machines


class TransferState(enum.Enum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class ReadTransfer:
    """Server side of one read transfer (RRQ) bound to one client TID.

    Call `start(now)` once, then `receive(datagram, source, now)` for each datagram arriving
    on the transfer socket and `tick(now)` whenever `now >= deadline`. Each returns the
    datagrams to send as `(bytes, address)` pairs.
    """

    __slots__ = (
        "peer", "state", "error", "blksize", "windowsize", "timeout", "max_retries",
        "_data", "_nblocks", "_acked", "_sent_upto", "_oack", "_retries", "deadline",
        "_view",
    )

    def __init__(
        self,
        data: bytes,
        request: Request,
        peer: Address,
        *,
        max_blksize: int = MAX_BLKSIZE,
        max_windowsize: int = 64,
        max_timeout: int = DEFAULT_MAX_TIMEOUT,
        timeout: float = 1.0,
        max_retries: int = 5,
    ) -> None:
        if request.mode == "netascii":
            data = netascii_encode(data)
        agreed = negotiate(request.options, len(data), max_blksize=max_blksize, max_windowsize=max_windowsize,
                           max_timeout=max_timeout)
        self.peer = peer
        self.state = TransferState.RUNNING
        self.error: str | None = None
        self.blksize = agreed.blksize
        self.windowsize = agreed.windowsize
        self.timeout = agreed.timeout if agreed.timeout is not None else timeout
        self.max_retries = max_retries
        self._data = data
        self._view = memoryview(data)
        # A final short (possibly empty) block always ends the transfer.
        self._nblocks = len(data) // self.blksize + 1
        self._acked = 0  # absolute number of the highest block the client has acknowledged
        self._sent_upto = 0
        self._oack = encode_oack(agreed.acknowledged) if agreed.acknowledged else None
        self._retries = 0
        self.deadline: float | None = None

    @property
    def blocks(self) -> int:
        return self._nblocks

    def start(self, now: float) -> list[Outgoing]:
        self.deadline = now + self.timeout
        if self._oack is not None:
            return [(self._oack, self.peer)]
        return self._send_window()

    def _block(self, number: int) -> bytes:
        start = (number - 1) * self.blksize
        return encode_data(number, self._view[start : start + self.blksize].tobytes())

    def _send_window(self) -> list[Outgoing]:
        last = min(self._acked + self.windowsize, self._nblocks)
        self._sent_upto = last
        peer = self.peer
        return [(self._block(n), peer) for n in range(self._acked + 1, last + 1)]

    def _fail(self, reason: str) -> None:
        self.state = TransferState.FAILED
        self.error = reason
        self.deadline = None

    def receive(self, datagram: bytes, source: Address, now: float) -> list[Outgoing]:
        if self.state is not TransferState.RUNNING:
            return []
        if source != self.peer:
            return [(encode_error(ERR_UNKNOWN_TID, "unknown transfer ID"), source)]
        # Fast path for the common case: a well-formed ACK.
        if len(datagram) == 4 and datagram[0] == 0 and datagram[1] == OP_ACK:
            return self._on_ack((datagram[2] << 8) | datagram[3], now)
        try:
            packet = parse_packet(datagram)
        except TftpPacketError as exc:
            self._fail(f"malformed packet from client: {exc}")
            return [(encode_error(ERR_ILLEGAL_OPERATION, str(exc)), source)]
        if isinstance(packet, Error):
            self._fail(f"client sent error {packet.code}: {packet.message}")
            return []
        self._fail(f"unexpected {type(packet).__name__} from client")
        return [(encode_error(ERR_ILLEGAL_OPERATION, "unexpected packet"), source)]

    def _on_ack(self, wire_block: int, now: float) -> list[Outgoing]:
        if self._sent_upto == 0:
            # OACK phase: only ACK 0 (the OACK's acknowledgement) starts the data.
            if wire_block != 0 or self._oack is None:
                return []
            self._retries = 0
            self.deadline = now + self.timeout
            return self._send_window()
        ahead = (wire_block - self._acked) & 0xFFFF
        if ahead == 0 or ahead > self._sent_upto - self._acked:
            return []  # duplicate or stale ACK: never retransmit on it (Sorcerer's Apprentice)
        self._acked += ahead
        self._retries = 0
        if self._acked >= self._nblocks:
            self.state = TransferState.DONE
            self.deadline = None
            return []
        self.deadline = now + self.timeout
        # RFC 7440: an ACK inside the window means the client lost what followed; resend from there.
        return self._send_window()

    def tick(self, now: float) -> list[Outgoing]:
        if self.state is not TransferState.RUNNING or self.deadline is None or now < self.deadline:
            return []
        self._retries += 1
        if self._retries > self.max_retries:
            self._fail("client stopped acknowledging")
            return [(encode_error(ERR_NOT_DEFINED, "transfer timed out"), self.peer)]
        self.deadline = now + self.timeout
        if self._sent_upto == 0 and self._oack is not None:
            return [(self._oack, self.peer)]
        return self._send_window()


class ReadClient:
    """Client side of a read transfer (what a phone does to fetch its files).

    `start(now)` returns the RRQ for `server`. The first answer from the server's host fixes
    the server TID; later datagrams from anywhere else get ERROR 5. When `state` is DONE,
    `result` holds the file; when FAILED, `error` holds a TftpError.
    """

    def __init__(
        self,
        filename: str,
        server: tuple[str, int],
        *,
        mode: str = "octet",
        blksize: int | None = None,
        windowsize: int | None = None,
        tsize: bool = False,
        timeout: float = 1.0,
        max_retries: int = 5,
        max_size: int = 64 * 1024 * 1024,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unsupported mode {mode!r}")
        if blksize is not None and not MIN_BLKSIZE <= blksize <= MAX_BLKSIZE:
            raise ValueError(f"blksize {blksize} outside {MIN_BLKSIZE}..{MAX_BLKSIZE}")
        if windowsize is not None and not MIN_WINDOWSIZE <= windowsize <= MAX_WINDOWSIZE:
            raise ValueError(f"windowsize {windowsize} outside {MIN_WINDOWSIZE}..{MAX_WINDOWSIZE}")
        self.filename = filename
        self.server = server
        self.mode = mode
        self.options: dict[str, str] = {}
        if blksize is not None:
            self.options["blksize"] = str(blksize)
        if tsize:
            self.options["tsize"] = "0"
        if windowsize is not None:
            self.options["windowsize"] = str(windowsize)
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_size = max_size
        self.blksize = DEFAULT_BLKSIZE
        self.windowsize = 1
        self.reported_size: int | None = None
        self.peer: Address | None = None
        self.state = TransferState.RUNNING
        self.error: TftpError | None = None
        self.result: bytes | None = None
        self.deadline: float | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        self._received = 0  # absolute number of the last in-order block
        self._in_window = 0
        self._nak_sent = False
        self._last: Outgoing | None = None
        self._retries = 0

    def start(self, now: float) -> list[Outgoing]:
        rrq = encode_rrq(self.filename, self.mode, self.options)
        self._last = (rrq, self.server)
        self.deadline = now + self.timeout
        return [self._last]

    def _fail(self, error: TftpError, reply: Outgoing | None = None) -> list[Outgoing]:
        self.state = TransferState.FAILED
        self.error = error
        self.deadline = None
        return [reply] if reply else []

    def _send_ack(self, block: int) -> list[Outgoing]:
        self._last = (encode_ack(block), self.peer)
        return [self._last]

    def receive(self, datagram: bytes, source: Address, now: float) -> list[Outgoing]:
        if self.state is not TransferState.RUNNING:
            return []
        if self.peer is None:
            if not isinstance(source, tuple) or source[0] != self.server[0]:
                return [(encode_error(ERR_UNKNOWN_TID, "unknown transfer ID"), source)]
            self.peer = source
        elif source != self.peer:
            return [(encode_error(ERR_UNKNOWN_TID, "unknown transfer ID"), source)]
        try:
            packet = parse_packet(datagram)
        except TftpPacketError as exc:
            return self._fail(TftpError(ERR_ILLEGAL_OPERATION, f"malformed packet from server: {exc}"),
                              (encode_error(ERR_ILLEGAL_OPERATION, str(exc)), source))
        if isinstance(packet, Data):
            return self._on_data(packet, now)
        if isinstance(packet, Error):
            return self._fail(TftpError(packet.code, packet.message))
        if isinstance(packet, OAck):
            return self._on_oack(packet, now)
        return self._fail(TftpError(ERR_ILLEGAL_OPERATION, f"unexpected {type(packet).__name__} from server"),
                          (encode_error(ERR_ILLEGAL_OPERATION, "unexpected packet"), source))

    def _on_oack(self, packet: OAck, now: float) -> list[Outgoing]:
        if self._received or self._chunks:
            return []  # a late duplicate OACK after data started: ignore
        problem = self._check_oack(packet.options)
        if problem:
            return self._fail(TftpError(ERR_OPTION_REFUSED, problem),
                              (encode_error(ERR_OPTION_REFUSED, problem), self.peer))
        self._retries = 0
        self.deadline = now + self.timeout
        return self._send_ack(0)

    def _check_oack(self, options: dict[str, str]) -> str | None:
        for name, value in options.items():
            if name not in self.options:
                return f"server acknowledged option {name!r} that was not requested"
            if not value.isdigit() or len(value) > 20:
                return f"server sent a bad value for {name!r}"
            number = int(value)
            if name == "blksize":
                if not MIN_BLKSIZE <= number <= int(self.options[name]):
                    return f"server blksize {number} not in {MIN_BLKSIZE}..{self.options[name]}"
                self.blksize = number
            elif name == "windowsize":
                if not MIN_WINDOWSIZE <= number <= int(self.options[name]):
                    return f"server windowsize {number} not in 1..{self.options[name]}"
                self.windowsize = number
            elif name == "tsize":
                if number > self.max_size:
                    return f"file of {number} bytes exceeds the limit of {self.max_size}"
                self.reported_size = number
            elif name == "timeout":
                if not MIN_TIMEOUT <= number <= MAX_TIMEOUT:
                    return f"server timeout {number} out of range"
        return None

    def _on_data(self, packet: Data, now: float) -> list[Outgoing]:
        expected = self._received + 1
        if packet.block != expected & 0xFFFF:
            # Lost or duplicated block: ACK the last in-order block once, so the server
            # resends from there (RFC 7440) without an ACK storm.
            if self._nak_sent:
                return []
            self._nak_sent = True
            self._in_window = 0
            return self._send_ack(self._received)
        if len(packet.payload) > self.blksize:
            return self._fail(TftpError(ERR_ILLEGAL_OPERATION, "DATA larger than the block size"),
                              (encode_error(ERR_ILLEGAL_OPERATION, "block too large"), self.peer))
        self._size += len(packet.payload)
        if self._size > self.max_size:
            return self._fail(TftpError(ERR_DISK_FULL, f"file exceeds {self.max_size} bytes"),
                              (encode_error(ERR_DISK_FULL, "file too large"), self.peer))
        self._chunks.append(packet.payload)
        self._received = expected
        self._retries = 0
        self._nak_sent = False
        self.deadline = now + self.timeout
        if len(packet.payload) < self.blksize:
            if self.reported_size is not None and self.mode == "octet" and self._size != self.reported_size:
                # The server announced another size: a truncated or changed file is an error, not a
                # result. (netascii: servers differ on whether tsize counts the encoded bytes.)
                problem = f"received {self._size} bytes, the server announced {self.reported_size}"
                return self._fail(TftpError(ERR_NOT_DEFINED, problem),
                                  (encode_error(ERR_NOT_DEFINED, "size differs from tsize"), self.peer))
            data = b"".join(self._chunks)
            self._chunks = []
            self.result = netascii_decode(data) if self.mode == "netascii" else data
            self.state = TransferState.DONE
            self.deadline = None
            return self._send_ack(expected)
        self._in_window += 1
        if self._in_window >= self.windowsize:
            self._in_window = 0
            return self._send_ack(expected)
        return []

    def tick(self, now: float) -> list[Outgoing]:
        if self.state is not TransferState.RUNNING or self.deadline is None or now < self.deadline:
            return []
        self._retries += 1
        if self._retries > self.max_retries:
            return self._fail(TftpTimeoutError())
        self.deadline = now + self.timeout
        self._in_window = 0
        return [self._last] if self._last else []

"""The private channel between the capf service and its acceptor processes.

One socketpair per acceptor, created by the service and inherited by the child: nothing is
exposed on the file system or the network, and the only peer is our own process, so messages
are pickled tuples (`uint32 length | pickle`), bounded in size. EOF means the other side is gone:
an acceptor then stops, the service restarts it.

Acceptor → service: `("ready", port)`, `("call", id, method, args)` (a write or look-up of the
operations store: the service stays the only writer of CAPF state), `("sessions", [records])`.
Service → acceptor: `("reply", id, ok, value)` (value is `(kind, message)` when not ok),
`("config", {...})` (activation, issuer, retry delay, LSC validity — pushed when they change).
"""

from __future__ import annotations

import asyncio
import pickle
import struct

HEADER = struct.Struct(">I")
MAX_MESSAGE = 1 << 20  # far above any certificate, CSR or batch of session records

# The store methods an acceptor may ask for (ccmsec.aio.capf.CapfOperationsStore).
STORE_METHODS = frozenset({"find_operation", "check_auth_string", "record_auth_failure", "record_issued",
                           "mark_done", "mark_failed", "record_csr"})


class ChannelError(RuntimeError):
    """The channel broke (oversized or truncated message): the connection is dropped."""


def encode(message: tuple) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) > MAX_MESSAGE:
        raise ChannelError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    return HEADER.pack(len(data)) + data


async def read_message(reader: asyncio.StreamReader) -> tuple | None:
    """The next message, or None when the other side closed the channel."""
    try:
        head = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise ChannelError("channel closed inside a message header") from None
    (size,) = HEADER.unpack(head)
    if size > MAX_MESSAGE:
        raise ChannelError(f"message of {size} bytes exceeds {MAX_MESSAGE}")
    try:
        return pickle.loads(await reader.readexactly(size))
    except asyncio.IncompleteReadError:
        raise ChannelError("channel closed inside a message") from None


class Outbox:
    """Messages to the other side, written together once per turn of the event loop: one write —
    one system call, one wake-up of the peer — carries the calls (or replies) of every session that
    had one in that turn, where a write per message made the channel's sends about a seventh of
    an acceptor's CPU (py-spy, issue 15). Order is kept; nothing waits longer than the loop's
    current turn."""

    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self._pending: list[bytes] = []
        self._scheduled = False

    def send(self, message: tuple) -> None:
        self._pending.append(encode(message))  # ChannelError (too big) reaches the sender
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        data, self._pending = b"".join(self._pending), []
        if data and not self.writer.is_closing():
            self.writer.write(data)


def error_reply(exc: BaseException) -> tuple[str, str]:
    """How a store failure travels: a refusal (ValueError) stays one on the other side."""
    return ("ValueError" if isinstance(exc, ValueError) else type(exc).__name__, str(exc))


def raise_reply(value: tuple[str, str]) -> None:
    kind, message = value
    if kind == "ValueError":
        raise ValueError(message)
    raise RuntimeError(f"{kind}: {message}")

"""The capf service's acceptor processes: the CAPF port on every core, one writer of its state.

Each install costs two RSA signatures with the CAPF key (the TLS handshake and the LSC) plus the
TLS and protocol work, all CPU; one Python process is one core. With `acceptor_processes = N`,
the service starts N acceptors (`ccmsec_capf.acceptor`) that listen on the same port
(SO_REUSEPORT) and do that work, while the service process keeps the database: every look-up and
write an acceptor's sessions need comes here over a private channel (`ccmsec_capf.channel`) and
is carried out by the one `SqlCapfStore` — so CAPF stays the single writer of its state, and the
store's batching (one SELECT / one COMMIT for many phones) works across all acceptors.

The service binds the port first (SO_REUSEPORT, not listening) to reserve it and resolve port 0,
and lets it go once the acceptors listen (a bound socket would still be handed connections). A
dead acceptor is started again (at most `MAX_RESTARTS` a minute); closing
the pool closes the channels, and acceptors stop on EOF (or on their parent's death).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ccmsec.runtime.logs import json_log_fd

from .acceptor import ENV
from .channel import STORE_METHODS, ChannelError, Outbox, encode, error_reply, read_message

log = logging.getLogger("ccmsec.capf")

# An acceptor is a fresh Python process: on a loaded 2-core host (load 30+, measured in compose) its
# imports alone took 34 s, and a 30 s bound made CAPF fail to start there, again and again.
READY_TIMEOUT = 120.0
MAX_RESTARTS = 5  # per acceptor per minute; beyond that the port runs one acceptor short


@dataclass
class _Acceptor:
    index: int
    process: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    ready: asyncio.Future | None = None
    task: asyncio.Task | None = None
    starts: collections.deque = field(default_factory=lambda: collections.deque(maxlen=MAX_RESTARTS))


class AcceptorPool:
    def __init__(self, count: int, *, host: str, port: int, pki_dir: Path, store, node: str,
                 limits: dict, config: dict, on_sessions: Callable[[list], None], log_level: str = "INFO",
                 key_dir: Path | None = None, capf_dir: Path | None = None,
                 manufacturer_ca: Path | None = None):
        if count < 1:
            raise ValueError("an acceptor pool needs at least one process")
        self.count = count
        self.host, self.port = host, port
        self.pki_dir = Path(pki_dir)
        self.capf_dir = Path(capf_dir) if capf_dir is not None else self.pki_dir.parent / "capf"
        self.manufacturer_ca = Path(manufacturer_ca) if manufacturer_ca is not None else None
        self.key_dir = Path(key_dir) if key_dir is not None else None  # the CAPF key, when kept apart
        self.store = store
        self.node = node
        self.limits = dict(limits)   # timeouts and connection limits, fixed for the service's life
        self.config = dict(config)   # activation, issuer, retry delay, validity: pushed on change
        self.on_sessions = on_sessions
        self.log_level = log_level
        self._acceptors = [_Acceptor(i) for i in range(count)]
        self._reserved: socket.socket | None = None
        self._closing = False
        self._calls: set[asyncio.Task] = set()

    # -- life cycle ------------------------------------------------------------------------------

    async def start(self) -> int:
        """Start every acceptor; returns the port once all of them listen."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        reserved = socket.socket(family, socket.SOCK_STREAM)
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserved.bind((self.host, self.port))
        self._reserved = reserved
        self.port = reserved.getsockname()[1]
        try:
            for acceptor in self._acceptors:
                await self._spawn(acceptor)
            await asyncio.wait_for(asyncio.gather(*(a.ready for a in self._acceptors)), READY_TIMEOUT)
        except BaseException:
            await self.close()
            raise
        # The acceptors hold the port now. A bound socket stays in the kernel's SO_REUSEPORT
        # group even without listen(): connections handed to it would hang, so let it go.
        reserved.close()
        self._reserved = None
        log.info("CAPF acceptors listening", extra={"port": self.port, "processes": self.count})
        return self.port

    async def _spawn(self, acceptor: _Acceptor) -> None:
        ours, theirs = socket.socketpair()
        cfg = {"fd": theirs.fileno(), "index": acceptor.index, "parent_pid": os.getpid(),
               "node": self.node, "host": self.host,
               "port": self.port, "pki_dir": str(self.pki_dir), "capf_dir": str(self.capf_dir),
               "manufacturer_ca": str(self.manufacturer_ca) if self.manufacturer_ca is not None else None,
               "key_dir": str(self.key_dir) if self.key_dir is not None else None,
               "config": self.config, "log_level": self.log_level, **self.limits}
        env = dict(os.environ, **{ENV: json.dumps(cfg)})
        try:
            # The acceptor writes JSON records itself and wraps its own native output: its standard
            # error is where ours go, not our capture pipe (whose reader thread would otherwise
            # check and copy a line of every phone's session in the single writer's process).
            acceptor.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ccmsec_capf.acceptor", env=env, pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL, stderr=json_log_fd())
        finally:
            theirs.close()
        acceptor.starts.append(time.monotonic())
        reader, acceptor.writer = await asyncio.open_unix_connection(sock=ours)
        acceptor.ready = asyncio.get_running_loop().create_future()
        acceptor.task = asyncio.create_task(self._serve(acceptor, reader, acceptor.writer),
                                            name=f"capf acceptor {acceptor.index}")

    async def close(self) -> None:
        self._closing = True
        for acceptor in self._acceptors:
            if acceptor.writer is not None:
                acceptor.writer.close()  # EOF: the acceptor closes its server and exits
        for acceptor in self._acceptors:
            proc = acceptor.process
            if proc is None or proc.returncode is not None:
                continue
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                log.warning("CAPF acceptor %s did not stop; killing pid %s", acceptor.index, proc.pid)
                proc.kill()
                await proc.wait()
        for acceptor in self._acceptors:
            if acceptor.task is not None:
                acceptor.task.cancel()
        for task in list(self._calls):
            task.cancel()
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None

    def configure(self, **changes) -> None:
        """New activation / issuer / retry delay / validity: every acceptor, at once."""
        self.config.update(changes)
        for acceptor in self._acceptors:
            if acceptor.writer is not None and not acceptor.writer.is_closing():
                acceptor.writer.write(encode(("config", changes)))

    @property
    def pids(self) -> list[int]:
        return [a.process.pid for a in self._acceptors if a.process is not None and a.process.returncode is None]

    # -- one acceptor's channel --------------------------------------------------------------------

    async def _serve(self, acceptor: _Acceptor, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        replies = Outbox(writer)  # the replies of one turn of the loop in one write
        try:
            while (message := await read_message(reader)) is not None:
                kind = message[0]
                if kind == "call":
                    task = asyncio.create_task(self._answer(replies, *message[1:]))
                    self._calls.add(task)
                    task.add_done_callback(self._calls.discard)
                elif kind == "sessions":
                    self.on_sessions(message[1])
                elif kind == "ready" and acceptor.ready is not None and not acceptor.ready.done():
                    acceptor.ready.set_result(message[1])
        except (ChannelError, ConnectionError) as exc:
            log.error("CAPF acceptor %s: channel broken: %s", acceptor.index, exc)
        if self._closing:
            return
        code = await acceptor.process.wait() if acceptor.process is not None else None
        log.error("CAPF acceptor %s stopped (exit %s)", acceptor.index, code)
        if acceptor.ready is not None and not acceptor.ready.done():
            acceptor.ready.set_exception(RuntimeError(f"CAPF acceptor {acceptor.index} exited with {code} "
                                                      "before listening (see the service log)"))
            return
        recent = [t for t in acceptor.starts if time.monotonic() - t < 60]
        if len(recent) >= MAX_RESTARTS:
            log.error("CAPF acceptor %s restarted %d times within a minute; not again", acceptor.index,
                      len(recent))
            return
        await asyncio.sleep(0.5)
        if not self._closing:
            await self._spawn(acceptor)

    async def _answer(self, replies: Outbox, call_id: int, method: str, args: tuple) -> None:
        if method not in STORE_METHODS:
            reply = ("reply", call_id, False, ("RuntimeError", f"unknown store method {method!r}"))
        else:
            try:
                reply = ("reply", call_id, True, await getattr(self.store, method)(*args))
            except Exception as exc:  # the acceptor's session ends with reason 7 and says why
                if not isinstance(exc, ValueError):
                    log.exception("CAPF store %s failed for an acceptor", method)
                reply = ("reply", call_id, False, error_reply(exc))
        replies.send(reply)

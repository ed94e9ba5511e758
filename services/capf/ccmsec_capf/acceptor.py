"""One acceptor process of the capf service (`python -m ccmsec_capf.acceptor`, started by
`ccmsec_capf.acceptors.AcceptorPool`, never by hand).

It listens on the CAPF port next to its siblings (SO_REUSEPORT: the kernel spreads connections
over them), does the TLS handshakes, runs the sessions (`ccmsec.aio.capf.CapfServer`), signs LSCs
with the CAPF key and checks phones' certificates — the CPU-heavy part, now on every core. It
writes nothing: each look-up and write of CAPF state is a call to the service over the channel
(`OwnerStore`), so the service stays the only writer. It stops when the service closes the
channel or dies (EOF, and the kernel's parent-death signal).

Its first act is the service's logging set-up (`ccmsec.runtime.logs`, JSON records, standard error
and native output captured): the protocol modules are imported after it, and a hand-over that is
missing or malformed, or a start that fails (no CAPF certificate or key, the port not bindable), is
one JSON error record naming the reason (never the hand-over's content) and a non-zero exit, not a
traceback (`read_config`, `StartError`).
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from ccmsec.runtime.logs import setup_logging

from .channel import ChannelError, Outbox, encode, raise_reply, read_message

# The protocol modules (ccmsec.aio.capf, ccmsec.pki, .issuer) are imported in `serve`, once logging
# is set up: what they might write while loading is a JSON record too.

ENV = "CCMSEC_CAPF_ACCEPTOR"
log = logging.getLogger("ccmsec.capf")
# What AcceptorPool._spawn hands over (`log_level`, `parent_pid`, `key_dir`, `manufacturer_ca` are optional).
REQUIRED = ("fd", "index", "node", "host", "port", "pki_dir", "capf_dir", "config", "handshake_timeout",
            "idle_timeout", "session_timeout", "max_connections", "max_per_source")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class StartError(Exception):
    """The acceptor cannot start (its configuration, the CAPF certificate or key, the port)."""


def read_config(raw: str | None) -> dict:
    """The service's hand-over in ENV, checked; StartError with the reason (never the content)."""
    if not raw:
        raise StartError(f"{ENV} is not set: an acceptor is started by the capf service "
                         "(acceptor_processes), not by hand")
    try:
        cfg = json.loads(raw)
    except ValueError as exc:
        raise StartError(f"{ENV} is not JSON ({getattr(exc, 'msg', exc)} at character "
                         f"{getattr(exc, 'pos', '?')})") from None
    if not isinstance(cfg, dict):
        raise StartError(f"{ENV} is not a JSON object")
    missing = [key for key in REQUIRED if key not in cfg]
    if missing:
        raise StartError(f"{ENV} lacks {', '.join(missing)}")
    if not isinstance(cfg["config"], dict) or "validity_days" not in cfg["config"]:
        raise StartError(f"{ENV}: config is not the CAPF settings (validity_days missing)")
    level = cfg.get("log_level") or "INFO"
    if not isinstance(level, str) or level.upper() not in LOG_LEVELS:
        raise StartError(f"{ENV}: log_level is not one of {', '.join(LOG_LEVELS)}")
    cfg["log_level"] = level.upper()
    return cfg


class OwnerStore:
    """`CapfOperationsStore` over the channel: every call is answered by the capf service."""

    def __init__(self, writer: asyncio.StreamWriter):
        self._out = Outbox(writer)
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}

    async def _call(self, method: str, *args):
        call_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = future
        try:
            self._out.send(("call", call_id, method, args))
            return await future
        finally:
            self._waiting.pop(call_id, None)

    def answer(self, call_id: int, ok: bool, value) -> None:
        future = self._waiting.get(call_id)
        if future is None or future.done():
            return
        if ok:
            future.set_result(value)
        else:
            try:
                raise_reply(value)
            except Exception as exc:  # noqa: BLE001 - handed to the waiting caller
                future.set_exception(exc)

    def fail_all(self, why: str) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ConnectionError(why))

    async def find_operation(self, device_name: str) -> OperationLookup:
        return await self._call("find_operation", device_name)

    async def check_auth_string(self, op_id: int, candidate: str | None) -> AuthCheck:
        return await self._call("check_auth_string", op_id, candidate)

    async def record_auth_failure(self, op_id: int, why: str) -> AuthCheck:
        return await self._call("record_auth_failure", op_id, why)

    async def record_issued(self, op_id: int, device_name: str, certificate_der: bytes) -> bytes:
        return await self._call("record_issued", op_id, device_name, certificate_der)

    async def mark_done(self, op_id: int, outcome: str, certificate_der: bytes | None = None) -> None:
        return await self._call("mark_done", op_id, outcome, certificate_der)

    async def mark_failed(self, op_id: int, reason: str) -> None:
        return await self._call("mark_failed", op_id, reason)

    async def record_csr(self, op_id: int, device_name: str, csr_der: bytes) -> None:
        return await self._call("record_csr", op_id, device_name, csr_der)


def _die_with_parent(parent: int | None) -> None:
    """Linux: SIGTERM when the service process dies, even by SIGKILL (the channel's EOF is the
    other guard). `parent` is the service's pid: in a container the service is pid 1, so "my
    parent is 1" alone does not mean it is gone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != (parent or os.getppid()) or (parent is None and os.getppid() == 1):
        log.info("the capf service is gone before its acceptor started; exiting")
        sys.exit(0)  # the parent is already gone (re-parented)


async def serve(cfg: dict) -> int:
    from ccmsec.aio.capf import CapfServer, SessionRecord, capf_server_ssl_context
    from ccmsec.pki.ca import load_pair
    from ccmsec.pki.lsc import CAPF_CERT, capf_key_path
    from ccmsec.pki.tls import enable_legacy_tls

    from .issuer import MANUFACTURER_CA, ServiceLscIssuer

    writer = None
    try:  # a failure up to listening is StartError: one line with the reason, no traceback
        sock = socket.socket(fileno=int(cfg["fd"]))
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        pki = Path(cfg["pki_dir"])
        capf_key = capf_key_path(pki, cfg.get("key_dir"))
        state = dict(cfg["config"])
        issuer = ServiceLscIssuer(load_pair(pki / CAPF_CERT, capf_key),
                                  Path(cfg.get("manufacturer_ca") or pki / MANUFACTURER_CA),
                                  Path(cfg["capf_dir"]), days=int(state["validity_days"]))
        store = OwnerStore(writer)
        finished: list[SessionRecord] = []
        ssl_context = capf_server_ssl_context(pki / CAPF_CERT, capf_key)
        if state.get("legacy_tls"):
            enable_legacy_tls(ssl_context)
        server = CapfServer(
            cfg["host"], int(cfg["port"]), ssl_context, store, issuer,
            handshake_timeout=cfg["handshake_timeout"], idle_timeout=cfg["idle_timeout"],
            session_timeout=cfg["session_timeout"], max_connections=cfg["max_connections"],
            max_per_source=cfg["max_per_source"], reuse_port=True, history=64,
            admit=lambda: state["refusal"], issuer_mode=lambda: state["issuer_mode"],
            retry_delay=lambda: int(state["retry_delay"]), on_session_end=finished.append,
        )
        await server.start()
    except (OSError, ValueError) as exc:
        if writer is not None:
            writer.close()
        raise StartError(str(exc) or type(exc).__name__) from None
    writer.write(encode(("ready", server.port)))

    async def report_sessions() -> None:
        # Batched: one message per quarter second however many phones finished.
        while True:
            await asyncio.sleep(0.25)
            if finished:
                batch = list(finished)
                finished.clear()
                writer.write(encode(("sessions", batch)))

    reporter = asyncio.create_task(report_sessions())
    try:
        while (message := await read_message(reader)) is not None:
            if message[0] == "reply":
                store.answer(message[1], message[2], message[3])
            elif message[0] == "config":
                state.update(message[1])
                issuer.days = int(state["validity_days"])
                if message[1].get("legacy_tls"):  # LATER-8: new handshakes follow the context
                    enable_legacy_tls(ssl_context)
    except (ChannelError, ConnectionError) as exc:
        log.error("CAPF acceptor %s: channel to the service broken: %s", cfg["index"], exc)
    finally:
        store.fail_all("the capf service went away")
        reporter.cancel()
        await server.close()
        writer.close()
    return 0


def main() -> None:
    try:
        cfg, problem = read_config(os.environ.get(ENV)), None
    except StartError as exc:
        cfg, problem = {}, exc
    # Logging first, as every service does (runtime.service.run_service). capture: a crash's
    # traceback or native output is wrapped into JSON here, since our standard error is the
    # service's JSON stream itself (AcceptorPool), not its capture pipe.
    node = f"{cfg['node']}/acceptor-{cfg['index']}" if cfg else "capf/acceptor"
    setup_logging("capf", node, cfg.get("log_level", "INFO"), capture=True)
    if problem is not None:
        log.error("CAPF acceptor: cannot start: %s", problem)
        sys.exit(2)
    _die_with_parent(cfg.get("parent_pid"))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the service, which stops us
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    try:
        code = runner(serve(cfg))
    except StartError as exc:
        log.error("CAPF acceptor %s: cannot start: %s", cfg["index"], exc)
        sys.exit(1)
    sys.exit(code)


if __name__ == "__main__":
    main()

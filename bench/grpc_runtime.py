"""gRPC unary calls per second through the ccmsec runtime vs a bare grpc.aio server.

Both servers use the same mutual-TLS certificates from a cluster CA and serve the same RPC with the
keymanager's real servicer (KeyManager.GenerateCallKeys: two fresh SRTP master key/salt pairs), as
call control reaches it: the client presents callmanager's identity. The runtime server adds what
every service has: per-method authorization against the policy table (the caller's identity taken
from its certificate, cached per certificate), metrics, health and reflection. Each server runs in
its own process; one client process drives both in turn with the same concurrency, several rounds
alternating, and the best round of each counts. It also prints each server's own CPU time per call
over all rounds (Linux /proc), which other processes on a shared machine do not move as much.

    uv run python bench/grpc_runtime.py [--quick] [--seconds S] [--concurrency C]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import os
import socket
import tempfile
import time
from pathlib import Path

import grpc

from ccmsec.runtime.grpcio import _OPTIONS, GrpcServer, secure_channel, server_credentials
from ccmsec.runtime.identity import service_identity
from ccmsec_proto import common_pb2, keymanager_pb2, keymanager_pb2_grpc


class _Service:
    """What KeyManagerServicer needs of its service: a counter, a logger (debug off, as in
    production) and a status."""
    calls_keyed = 0
    log = logging.getLogger("bench.keymanager")

    def status_message(self):
        return common_pb2.ServiceStatus(role="keymanager", node="bench", state="serving")


def _servicer():
    from ccmsec_keymanager.main import KeyManagerServicer

    return KeyManagerServicer(_Service())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(kind: str, data: str, port: int, ready) -> None:
    import uvloop

    async def main():
        ident = service_identity(Path(data), "keymanager", "keymanager", "127.0.0.1")
        if kind == "runtime":
            srv = GrpcServer(ident, "127.0.0.1", port)
            srv.add(keymanager_pb2_grpc.add_KeyManagerServicer_to_server, _servicer(), "ccmsec.v1.KeyManager")
            await srv.start()
            await srv.set_serving(True)
        else:
            server = grpc.aio.server(options=_OPTIONS)  # same transport settings: only our layers differ
            keymanager_pb2_grpc.add_KeyManagerServicer_to_server(_servicer(), server)
            server.add_secure_port(f"127.0.0.1:{port}", server_credentials(ident))
            await server.start()
        ready.set()
        await asyncio.Event().wait()

    uvloop.run(main())


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc): what each server spends on its
    calls, whatever else the machine is running."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _drive(data: Path, port: int, seconds: float, concurrency: int) -> tuple[float, int]:
    ident = service_identity(data, "callmanager", "callmanager", "127.0.0.1")  # call control's identity
    request = keymanager_pb2.CallKeysRequest(call_id="bench", suite=common_pb2.AES_CM_128_HMAC_SHA1_80)
    async with secure_channel(ident, "127.0.0.1", port, "keymanager") as ch:
        stub = keymanager_pb2_grpc.KeyManagerStub(ch)
        reply = await stub.GenerateCallKeys(request)
        assert len(reply.a_to_b.master_key) == 16  # the runtime let call control through
        count = 0
        deadline = time.perf_counter() + seconds

        async def worker():
            nonlocal count
            while time.perf_counter() < deadline:
                await stub.GenerateCallKeys(request)
                count += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return count / (time.perf_counter() - start), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 1.5, 2
    import uvloop

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        service_identity(data, "keymanager", "keymanager", "127.0.0.1")
        service_identity(data, "callmanager", "callmanager", "127.0.0.1")
        ctx = mp.get_context("spawn")
        procs, ports = {}, {}
        for kind in ("runtime", "bare"):
            ports[kind] = _free_port()
            ready = ctx.Event()
            procs[kind] = ctx.Process(target=_serve, args=(kind, str(data), ports[kind], ready), daemon=True)
            procs[kind].start()
            if not ready.wait(30):
                raise SystemExit(f"{kind} server did not start")
        best = {"runtime": 0.0, "bare": 0.0}
        cpu = {"runtime": 0.0, "bare": 0.0}
        calls = {"runtime": 0, "bare": 0}
        try:
            for _ in range(args.rounds):
                for kind in ("bare", "runtime"):
                    before = _cpu_seconds(procs[kind].pid)
                    rate, count = uvloop.run(_drive(data, ports[kind], args.seconds, args.concurrency))
                    cpu[kind] += _cpu_seconds(procs[kind].pid) - before
                    calls[kind] += count
                    best[kind] = max(best[kind], rate)
        finally:
            for p in procs.values():
                p.terminate()
                p.join(5)
    ratio = best["runtime"] / best["bare"] if best["bare"] else 0.0
    print(f"runtime (mTLS + authorization + metrics + health + reflection): {best['runtime']:8.0f} calls/s")
    print(f"bare grpc.aio (same mTLS certificates, same servicer):          {best['bare']:8.0f} calls/s")
    print(f"ratio runtime/bare: {ratio:.2f} (aim >= 0.80)")
    # The servers' own CPU per call over every round: the same comparison, but what a server spends
    # rather than what it got of a machine other processes share.
    per_call = {k: cpu[k] / calls[k] * 1e6 if calls[k] else float("nan") for k in cpu}
    print(f"server CPU per call: runtime {per_call['runtime']:.0f} us, bare {per_call['bare']:.0f} us; "
          f"ratio bare/runtime {per_call['bare'] / per_call['runtime']:.2f} (calls per CPU-second, runtime/bare)")


if __name__ == "__main__":
    main()

"""gRPC unary calls per second through the ccmsec runtime vs a bare grpc.aio server.

Both servers use the same mutual-TLS certificates from a cluster CA and serve the same RPC with the
keymanager's real servicer (KeyManager.GenerateCallKeys: two fresh SRTP master key/salt pairs), as
call control reaches it: the client presents callmanager's identity. The runtime server adds what
every service has: per-method authorization against the policy table (the caller's identity taken
from its certificate, cached per certificate), metrics, health and reflection. Each server runs in
its own process, and each has a client process of its own driving it with the same concurrency:
a warm-up round (not counted), then R rounds in which both are driven *at the same time* for S
seconds — a burst of load from other processes on a shared machine hits both sides of a round in
the same instant. (`--interleaved`: one client process drives one server after the other, the
order alternating; under a shared machine's load even two identical servers then differ by ±50 %
from round to round.) The figure is the median of the per-round ratios, with its quartiles; each
server's median rate is printed too; `--aa` makes both sides the same bare server, an A/A check of
the measurement itself. It also prints each server's own CPU
time per call over all rounds (Linux /proc), which other processes on a shared machine do not move
as much, and with --profile a cProfile of the runtime server.

    uv run python bench/grpc_runtime.py [--quick] [--rounds R] [--seconds S] [--concurrency C] [--aa]
                                        [--interleaved] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import socket
import statistics
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


def _serve(kind: str, data: str, port: int, ready, stop, profile: str) -> None:
    import uvloop

    async def main():
        ident = service_identity(Path(data), "keymanager", "keymanager", "127.0.0.1")
        if kind.startswith("runtime"):
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
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)

    if profile:  # the server's own Python time, by function (grpc's C core is not in it)
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        try:
            uvloop.run(main())
        finally:
            profiler.disable()
            profiler.dump_stats(profile)
    else:
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


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _client(data: str, port: int, concurrency: int, conn) -> None:
    """--simultaneous: a client process of its own for one server; drives it for the seconds it is
    sent and answers (rate, calls), until it is sent None."""
    import uvloop

    while (seconds := conn.recv()) is not None:
        conn.send(uvloop.run(_drive(Path(data), port, seconds, concurrency)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one measured slice")
    parser.add_argument("--rounds", type=int, default=30, help="rounds: one slice of each server")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--aa", action="store_true",
                        help="A/A check of the measurement: two identical bare servers instead of runtime "
                             "and bare (the ratio should be 1.00; its spread is the noise of this machine)")
    parser.add_argument("--interleaved", action="store_true",
                        help="one server after the other in each round, from one client process (the default "
                             "drives both at the same time, each from a client process of its own, so load "
                             "from other processes hits both sides of a round in the same instant)")
    parser.add_argument("--profile", metavar="FILE",
                        help="also write a cProfile of the runtime server (pstats) to FILE")
    args = parser.parse_args()
    args.simultaneous = not args.interleaved
    if args.quick:
        args.seconds, args.rounds = 0.5, 10
    import uvloop

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        service_identity(data, "keymanager", "keymanager", "127.0.0.1")
        service_identity(data, "callmanager", "callmanager", "127.0.0.1")
        ctx = mp.get_context("spawn")
        procs, ports = {}, {}
        stop = ctx.Event()
        for kind in ("runtime", "bare"):
            ports[kind] = _free_port()
            ready = ctx.Event()
            profile = args.profile if kind == "runtime" and args.profile else ""
            serve_as = "bare" if args.aa else kind   # --aa: the "runtime" side is a second bare server
            procs[kind] = ctx.Process(target=_serve, args=(serve_as, str(data), ports[kind], ready, stop, profile),
                                      daemon=True)
            procs[kind].start()
            if not ready.wait(30):
                raise SystemExit(f"{kind} server did not start")
        rates: dict[str, list[float]] = {"runtime": [], "bare": []}
        ratios: list[float] = []
        cpu = {"runtime": 0.0, "bare": 0.0}
        calls = {"runtime": 0, "bare": 0}
        load_before = os.getloadavg()
        clients = {}
        try:
            if args.simultaneous:
                for kind in ("runtime", "bare"):
                    parent, child = ctx.Pipe()
                    proc = ctx.Process(target=_client, args=(str(data), ports[kind], args.concurrency, child),
                                       daemon=True)
                    proc.start()
                    clients[kind] = (proc, parent)
                for i in range(args.rounds + 1):   # round 0: warm-up, not counted
                    before = {k: _cpu_seconds(procs[k].pid) for k in clients}
                    for kind in clients:
                        clients[kind][1].send(args.seconds)
                    got = {kind: clients[kind][1].recv() for kind in clients}
                    if i == 0:
                        continue
                    for kind, (rate, count) in got.items():
                        cpu[kind] += _cpu_seconds(procs[kind].pid) - before[kind]
                        calls[kind] += count
                        rates[kind].append(rate)
                    ratios.append(got["runtime"][0] / got["bare"][0] if got["bare"][0] else 0.0)
            for kind in ("bare", "runtime"):  # warm-up slice each (connections, caches): not counted
                if args.simultaneous:
                    break
                uvloop.run(_drive(data, ports[kind], min(1.0, args.seconds), args.concurrency))
            for i in range(0 if args.simultaneous else args.rounds):
                # interleaved, and which server goes first alternates: a burst of load from other
                # processes hits both sides of a round's ratio alike, and neither is always second
                order = ("bare", "runtime") if i % 2 == 0 else ("runtime", "bare")
                got = {}
                for kind in order:
                    before = _cpu_seconds(procs[kind].pid)
                    rate, count = uvloop.run(_drive(data, ports[kind], args.seconds, args.concurrency))
                    cpu[kind] += _cpu_seconds(procs[kind].pid) - before
                    calls[kind] += count
                    rates[kind].append(rate)
                    got[kind] = rate
                ratios.append(got["runtime"] / got["bare"] if got["bare"] else 0.0)
        finally:
            for proc, pipe in clients.values():
                with contextlib.suppress(OSError):
                    pipe.send(None)
                proc.join(10)
                if proc.is_alive():
                    proc.terminate()
            stop.set()
            for p in procs.values():
                p.join(30)
                if p.is_alive():
                    p.terminate()
                    p.join(5)
    load_after = os.getloadavg()
    ratio = _median(ratios)
    if args.aa:
        print("A/A CHECK: both servers below are the same bare grpc.aio server; 'runtime' is the second one")
    if args.simultaneous:
        print("SIMULTANEOUS: in each round both servers were driven at the same time, each by its own client process")
    print(f"{args.rounds} {'simultaneous' if args.simultaneous else 'interleaved'} rounds of {args.seconds:g} s per server, {args.concurrency} calls in "
          f"flight; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; "
          f"{os.cpu_count()} CPUs")
    print(f"runtime (mTLS + authorization + metrics + health + reflection): median {_median(rates['runtime']):8.0f} "
          f"calls/s (best {max(rates['runtime']):.0f})")
    print(f"bare grpc.aio (same mTLS certificates, same servicer):          median {_median(rates['bare']):8.0f} "
          f"calls/s (best {max(rates['bare']):.0f})")
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratio, ratio, ratio]
    print(f"ratio runtime/bare, median of the per-round ratios: {ratio:.2f} "
          f"(quartiles {quartiles[0]:.2f}-{quartiles[2]:.2f}, min {min(ratios):.2f}, max {max(ratios):.2f}; "
          f"aim >= 0.80)")
    # The servers' own CPU per call over every round: the same comparison, but what a server spends
    # rather than what it got of a machine other processes share.
    per_call = {k: cpu[k] / calls[k] * 1e6 if calls[k] else float("nan") for k in cpu}
    print(f"server CPU per call: runtime {per_call['runtime']:.0f} us, bare {per_call['bare']:.0f} us; "
          f"ratio bare/runtime {per_call['bare'] / per_call['runtime']:.2f} (calls per CPU-second, runtime/bare)")
    if args.profile:
        import pstats

        print(f"\nruntime server profile ({args.profile}), top 25 by own time:")
        pstats.Stats(args.profile).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()

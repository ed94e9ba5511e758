"""Key manager: call keys per second and call set-up latency through gRPC with authorization.

Ours:      the keymanager service as call control reaches it — its own process (uvloop, the
           service runtime: mutual TLS, metrics, authorization of the caller, NATS), called with a
           call-control certificate; GenerateCallKeys for a call with both ends' suites, two fresh
           key sets from the CSPRNG per call.
Baseline:  a bare grpc.aio server (same certificates, same transport options, its own process)
           whose GenerateCallKeys returns two `secrets` key sets with no checks — the same work
           without our layers.
Figures:   calls keyed per second with 32 in flight (best of alternating rounds), and the latency
           of one call set-up at a time (p50, p99), which is what a caller dialling waits for.

    uv run python bench/keymanager_keys.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ccmsec.cluster.pki import issue_service_identity  # noqa: E402
from ccmsec.runtime.grpcio import _OPTIONS, secure_channel, server_credentials  # noqa: E402
from ccmsec.runtime.identity import load_identity  # noqa: E402
from ccmsec_proto import common_pb2, keymanager_pb2, keymanager_pb2_grpc  # noqa: E402

REQUEST = dict(caller_suites=[common_pb2.AES_CM_128_HMAC_SHA1_80, common_pb2.AES_CM_128_HMAC_SHA1_32],
               callee_suites=[common_pb2.AES_CM_128_HMAC_SHA1_80])


def _free_port(host="127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host, port, timeout=60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection((host, port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {host}:{port}")


class _Bare(keymanager_pb2_grpc.KeyManagerServicer):
    async def GenerateCallKeys(self, request, context):  # noqa: N802
        def km():
            return common_pb2.KeyMaterial(suite=2, master_key=secrets.token_bytes(16),
                                          master_salt=secrets.token_bytes(14))
        return keymanager_pb2.CallKeysReply(call_id=request.call_id, a_to_b=km(), b_to_a=km())


def _serve_bare(folder: str, host: str, port: int, ready) -> None:
    import uvloop

    async def main():
        server = grpc.aio.server(options=_OPTIONS)
        keymanager_pb2_grpc.add_KeyManagerServicer_to_server(_Bare(), server)
        server.add_secure_port(f"{host}:{port}", server_credentials(load_identity(Path(folder))))
        await server.start()
        ready.set()
        await server.wait_for_termination()
    uvloop.run(main())


async def _throughput(stub, seconds: float, concurrency: int) -> float:
    done = 0
    end = time.perf_counter() + seconds

    async def worker(w):
        nonlocal done
        n = 0
        while time.perf_counter() < end:
            await stub.GenerateCallKeys(keymanager_pb2.CallKeysRequest(call_id=f"{w}-{n}", **REQUEST))
            n += 1
            done += 1
    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return done / (time.perf_counter() - start)


async def _latency(stub, count: int) -> tuple[float, float]:
    samples = []
    for n in range(count):
        t = time.perf_counter()
        await stub.GenerateCallKeys(keymanager_pb2.CallKeysRequest(call_id=f"lat-{n}", **REQUEST))
        samples.append(time.perf_counter() - t)
    samples.sort()
    return statistics.median(samples) * 1000, samples[int(len(samples) * 0.99) - 1] * 1000


async def run(args) -> None:
    data = Path(tempfile.mkdtemp(prefix="ccmsec-bench-km-"))
    base = f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250)}"
    nats_host, km_host = f"{base}.1", f"{base}.6"
    procs = []
    try:
        nats = str(Path(sys.executable).parent / "nats-server")
        procs.append(subprocess.Popen([nats, "-a", nats_host, "-p", "4222", "-js", "-sd", str(data / "nats")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(nats_host, 4222)
        issue_service_identity(data, "keymanager", "keymanager", km_host)
        cc_dir = data / "bench-call-control"
        issue_service_identity(data, "callmanager", "bench-cc", "127.0.0.1", out_dir=cc_dir)
        env = {**os.environ, "CCMSEC_SERVICE": "keymanager", "CCMSEC_DATA_DIR": str(data), "CCMSEC_HOST": km_host,
               "CCMSEC_NATS_URL": f"nats://{nats_host}:4222", "CCMSEC_METRICS_PORT": "0",
               "CCMSEC_LOG_LEVEL": "WARNING"}
        procs.append(subprocess.Popen([sys.executable, "-m", "ccmsec_keymanager"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        bare_port = _free_port(km_host)
        ready = mp.get_context("spawn").Event()
        bare = mp.get_context("spawn").Process(target=_serve_bare, daemon=True, args=(
            str(data / "identities" / "services" / "keymanager"), km_host, bare_port, ready))
        bare.start()
        ready.wait(60)
        wait_port(km_host, 50051, 90)
        ident = load_identity(cc_dir)
        async with secure_channel(ident, km_host, 50051, "keymanager") as ours_ch, \
                secure_channel(ident, km_host, bare_port, "keymanager") as bare_ch:
            ours, raw = keymanager_pb2_grpc.KeyManagerStub(ours_ch), keymanager_pb2_grpc.KeyManagerStub(bare_ch)
            await ours.GenerateCallKeys(keymanager_pb2.CallKeysRequest(call_id="warm", **REQUEST),
                                        wait_for_ready=True, timeout=60)
            await raw.GenerateCallKeys(keymanager_pb2.CallKeysRequest(call_id="warm"), wait_for_ready=True, timeout=60)
            print(f"load: {os.getloadavg()[0]:.2f} (1-min load average; {os.cpu_count()} cores)")
            best_ours = best_raw = 0.0
            for _ in range(args.rounds):
                best_ours = max(best_ours, await _throughput(ours, args.seconds, args.concurrency))
                best_raw = max(best_raw, await _throughput(raw, args.seconds, args.concurrency))
            p50, p99 = await _latency(ours, args.latency)
            b50, b99 = await _latency(raw, args.latency)
        print(f"keymanager: {best_ours:,.0f} calls keyed/s ({2 * best_ours:,.0f} key sets/s), "
              f"{args.concurrency} in flight")
        print(f"bare gRPC:  {best_raw:,.0f} calls keyed/s")
        print(f"ratio: {best_ours / best_raw:.2f}")
        print(f"call set-up latency, one at a time: keymanager p50 {p50:.2f} ms p99 {p99:.2f} ms; "
              f"bare p50 {b50:.2f} ms p99 {b99:.2f} ms")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        import shutil
        shutil.rmtree(data, ignore_errors=True)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=int, default=500, help="sequential set-ups measured")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds, args.latency = 2.0, 1, 200
    return args


if __name__ == "__main__":
    asyncio.run(run(parse_args()))

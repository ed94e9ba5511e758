"""Secure call set-ups: N encrypted phones register with the callmanager service over mutual TLS
(the baseline: the registration rate of the same phones in the same run), then call each other in
pairs — dial, ring, answer, both sides connected with their media channels opened and started
(OpenReceiveChannel → ack → StartMediaTransmission with SRTP keys in both blocks) — and hold every
call at once. Prints both rates and their ratio (aim >= 0.5) counting only the calls that came up
encrypted (a call set up while callmanager's key pool is empty comes up on RTP, CALL-1; the ratio
of all set-ups is printed beside it), the calls held, and the service's memory and CPU per call.

    uv run python bench/call_setup.py            # 2000 phones, 1000 calls
    uv run python bench/call_setup.py --quick    # 200 phones, 100 calls
    uv run python bench/call_setup.py --phones 1000 --in-progress 400
                                                 # 400 calls held, then 100 set up under that load

Ours is the callmanager service as deployed (`python -m ccmsec_callmanager`), in the cluster
registration_storm.py starts: NATS, ctl-provider's mixed mode, capf, its identity, its database
and ccmserver.cer, and the keymanager service — call keys come from its pool of pairs fetched from
keymanager over gRPC, as in production. Devices and their lines are rows of callmanager's tables
written before it starts. The calls held, connected and encrypted are the service's own account
(`ListCalls` with a `cli` identity, what `ccmsec calls` reads); memory per call is the RSS of the
service process (/proc/<pid>/status) after the calls minus before them, per call held. (The old
`--trace-memory` option traced the core's Python allocations in-process; a deployed service
cannot be traced from outside, so it is gone.)
Phones are `CallingPhone`s (the adapter phone-sim uses) with real UDP media ports, no audio.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "services" / "callmanager"))

import registration_storm as rs  # noqa: E402  (the cluster, devices, phones)

HOST = rs.HOST
FIRST_DN = 100000


def dn(i: int) -> str:
    return str(FIRST_DN + i)


def prepare(data: Path, n: int) -> None:
    """rs.prepare's devices, plus one line each (callmanager's lines table, before it starts)."""
    rs.prepare(data, n)

    async def lines():
        from ccmsec.db.lines import Line
        from ccmsec.runtime.database import open_database

        engine, sm = await open_database(f"sqlite+aiosqlite:///{data / 'ccmsec.db'}")
        async with sm() as session, session.begin():
            session.add_all([Line(dn=dn(i), device=rs.phone_name(i), line_index=1, label="") for i in range(n)])
        await engine.dispose()
    rs._run(lines())


async def calls_view(admin) -> tuple[int, int, int]:
    """The service's calls (ListCalls, as `ccmsec calls`): held, connected, encrypted."""
    from ccmsec_proto import common_pb2, callmanager_pb2_grpc

    reply = await callmanager_pb2_grpc.CallManagerStub(admin).ListCalls(common_pb2.Empty(), timeout=60)
    calls = reply.calls
    return len(calls), sum(c.phase == "connected" for c in calls), sum(c.status == "encrypted" for c in calls)


async def run(cluster: rs.Cluster, contexts, concurrency: int, in_progress: int = 0) -> dict:
    async with cluster.admin_channel() as admin:
        return await _run_calls(cluster, admin, contexts, concurrency, in_progress)


async def _run_calls(cluster: rs.Cluster, admin, contexts, concurrency: int, in_progress: int) -> dict:
    from ccmsec.aio.sccp import connect_phone
    from ccmsec.aio.sccp_calling import CallingPhone
    from ccmsec.wire import sccp as s
    from ccmsec.wire.sccp_calls import CallStateCode as CS

    n = len(contexts)
    host, port, pid = cluster.cm_host, cluster.sccp_tls_port, cluster.pid
    sem = asyncio.Semaphore(concurrency)

    async def register(i, ctx):
        async with sem:
            conn = await connect_phone(host, port, s.Register(rs.phone_name(i), HOST, device_type=30006),
                                       ssl_context=ctx, timeout=120,
                                       capabilities=s.CapabilitiesRes((s.MediaCapability(4),),
                                                                      encryption_capable=True))
            phone = CallingPhone(conn, bind_host=HOST)
            await phone.wait_ready(120)
            return phone

    await asyncio.sleep(1.0)   # the service settles after start (ctl-provider's answer, key pool)
    start = time.perf_counter()
    phones = await asyncio.gather(*(register(i, c) for i, c in enumerate(contexts)))
    reg_seconds = time.perf_counter() - start
    await asyncio.sleep(2.0)   # the registry's database mirror flushes before "before"
    rss_before = rs.rss_kb(pid)
    cpu_before = rs.cpu_seconds(pid)

    def connected_with_media(d) -> bool:
        return (any(c.state == CS.CONNECTED for c in d.calls.values()) and bool(d.channels)
                and all(ch.tx for ch in d.channels.values()))

    async def call(k: int):
        a, b = phones[2 * k], phones[2 * k + 1]
        async with sem:
            a.act(a.display.dial, dn(2 * k + 1))
            await b.wait_for(lambda d: any(c.state == CS.RING_IN for c in d.calls.values()), 120, "ringing")
            b.act(b.display.answer)
            await a.wait_for(connected_with_media, 120, "a connected call with media")
            await b.wait_for(connected_with_media, 120, "a connected call with media")

    pairs = n // 2
    # Under load: the first `in_progress` calls are set up and stay connected (media channels
    # open), then the remaining calls are set up while those are in progress.
    loaded = {}
    if in_progress:
        start = time.perf_counter()
        await asyncio.gather(*(call(k) for k in range(in_progress)))
        loaded["first_seconds"] = time.perf_counter() - start
        loaded["held_before"] = (await calls_view(admin))[1]
    start = time.perf_counter()
    await asyncio.gather(*(call(k) for k in range(in_progress, pairs)))
    call_seconds = time.perf_counter() - start
    call_cpu = rs.cpu_seconds(pid) - cpu_before
    measured = pairs - in_progress
    held, connected, encrypted = await calls_view(admin)
    rss_after = rs.rss_kb(pid)
    locks = sum(1 for p in phones for c in p.display.calls.values() if c.icon == "lock")
    for p in phones:
        await p.close()
    if in_progress:
        loaded["first_rate"] = in_progress / loaded["first_seconds"]
    return {"reg_rate": n / reg_seconds, "reg_seconds": reg_seconds, "call_rate": measured / call_seconds,
            "call_seconds": call_seconds, "pairs": measured, "held": held, "connected": connected,
            "in_progress": in_progress, **loaded,
            "encrypted": encrypted, "locks": locks,
            "kb_per_call": (rss_after - rss_before) / max(1, held),
            "cpu_ms_per_call": call_cpu / max(1, pairs) * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phones", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="200 phones")
    parser.add_argument("--concurrency", type=int, default=64, help="registrations / set-ups in flight")
    parser.add_argument("--keep", action="store_true", help="keep the data directory and the services' logs")
    parser.add_argument("--in-progress", type=int, default=0, metavar="N",
                        help="set up N calls first and keep them connected, then measure the set-ups "
                             "of the remaining calls while those N are in progress (bounded by --phones)")
    args = parser.parse_args()
    n = 200 if args.quick else args.phones
    if n < 2 or n % 2:
        parser.error("--phones must be an even number >= 2")
    if not 0 <= args.in_progress < n // 2:
        parser.error(f"--in-progress must be in 0..{n // 2 - 1} (calls left to measure)")
    rs._raise_fd_limit()   # before the services are spawned: they inherit it
    print(rs.load_line(), flush=True)
    data = Path(tempfile.mkdtemp(prefix="ccmsec-calls-"))
    cluster = None
    try:
        t0 = time.perf_counter()
        cluster = rs.start_cluster(data, n, prepare)
        contexts = rs.phone_contexts(data, n)
        print(f"setup: callmanager service up (pid {cluster.pid}) with keymanager; {n} encrypted 7970s "
              f"with LSCs and a line each in {time.perf_counter() - t0:.1f} s", flush=True)
        r = rs._run(run(cluster, contexts, args.concurrency, args.in_progress))
    finally:
        rs.finish(cluster, data, args.keep)
    ratio = r["call_rate"] / r["reg_rate"]
    print(f"baseline: encrypted registrations (TLS, Register, set-up exchange): {r['reg_rate']:8.1f} /s "
          f"({n} phones in {r['reg_seconds']:.2f} s)")
    if r["in_progress"]:
        print(f"first:    {r['in_progress']} calls set up (0 -> {r['in_progress']} in progress): "
              f"{r['first_rate']:8.1f} /s; connected afterwards: {r['held_before']}")
    print(f"ours:     secure call set-ups (dial to both connected, channels open): {r['call_rate']:8.1f} /s "
          f"({r['pairs']} calls in {r['call_seconds']:.2f} s"
          + (f", while {r['in_progress']} calls stayed in progress)" if r["in_progress"] else ")"))
    # the aim is about secure set-ups: a call that came up without keys (RTP) does not count
    secure_rate = r["encrypted"] / r["held"] * r["call_rate"] if r["held"] else 0.0
    print(f"secure:   calls that came up encrypted: {r['encrypted']} of {r['held']} held = {secure_rate:8.1f} /s")
    print(f"ratio:    {secure_rate / r['reg_rate']:.2f} counting encrypted calls only (aim >= 0.5); "
          f"all set-ups: {ratio:.2f}")
    if r["in_progress"]:
        print(f"load:     set-ups with {r['in_progress']} calls in progress / the first {r['in_progress']}: "
              f"{r['call_rate'] / r['first_rate']:.2f}")
    if r["encrypted"] < r["held"]:
        print(f"warning:  only {r['encrypted']} of {r['held']} calls are encrypted: the rest were set up without "
              f"SRTP keys (callmanager's key pool from keymanager ran dry; such calls fall back to RTP, "
              f"CALL-1), so the rate above is not of secure set-ups alone")
    print(f"held:     {r['held']} calls at once, {r['connected']} connected, {r['encrypted']} encrypted "
          f"(phones showing the lock: {r['locks']})")
    print(f"memory:   {r['kb_per_call']:.1f} kB per active call in the callmanager service (RSS delta / calls held)")
    print(f"service CPU: {r['cpu_ms_per_call']:.2f} ms per call set up (both phones' signalling, keys from keymanager)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

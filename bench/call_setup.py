"""Secure call set-ups: N encrypted phones register with call control over mutual TLS (the
baseline: the registration rate of the same phones in the same run), then call each other in
pairs — dial, ring, answer, both sides connected with their media channels opened and started
(OpenReceiveChannel → ack → StartMediaTransmission with SRTP keys in both blocks) — and hold every
call at once. Prints both rates and their ratio (aim >= 0.5), the calls held, and call control's
memory per active call.

    uv run python bench/call_setup.py            # 2000 phones, 1000 calls
    uv run python bench/call_setup.py --quick    # 200 phones, 100 calls
    uv run python bench/call_setup.py --phones 1000 --in-progress 400
                                                 # 400 calls held, then 100 set up under that load

Call control runs in its own process (as the service does) with a migrated SQLite database, the
real registration path and the real call agent; its key source is callmanager's (`CallKeySource`:
keys only for encrypted phones on encrypting TLS), fed from a local CSPRNG instead of the key
manager — in the service a pool of pairs fetched ahead means set-up never waits for it either.
Phones are `CallingPhone`s (the adapter phone-sim uses) with real UDP media ports, no audio.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "services" / "callmanager"))

import registration_storm as rs  # noqa: E402  (same set-up, PKI and child-process plumbing)

HOST = rs.HOST
FIRST_DN = 100000


def dn(i: int) -> str:
    return str(FIRST_DN + i)


def prepare(data: Path, n: int) -> None:
    """rs.prepare's devices, plus one line each."""
    rs.prepare(data, n)

    async def lines():
        from ccmsec.db.lines import Line
        from ccmsec.runtime.database import open_database

        engine, sm = await open_database(f"sqlite:///{data / 'ccmsec.db'}")
        async with sm() as session, session.begin():
            session.add_all([Line(dn=dn(i), device=rs.phone_name(i), line_index=1, label="") for i in range(n)])
        await engine.dispose()
    rs._run(lines())


def callcontrol_process(data: str, port_q, cmd_conn) -> None:
    """Child: call control with callmanager's key source; answers 'calls', 'keyed', 'rss', 'stop'."""
    rs._raise_fd_limit()
    from ccmsec.media.callkeys import CallKeySource, DeviceTransport, PairKeys
    from ccmsec.media.srtp import MasterKey
    from ccmsec.runtime.database import open_database
    from ccmsec_callmanager.callcontrol import CallControl, CallControlConfig
    from ccmsec_callmanager.cluster_state import ClusterState, ClusterStateFollower

    async def main():
        engine, sm = await open_database(f"sqlite:///{Path(data) / 'ccmsec.db'}")
        cc = CallControl(CallControlConfig("callmanager", HOST, 0, 0, Path(data)), sm,
                         # mixed with a CTL, as the CTL Provider (the mode's owner) would say
                         cluster_state=ClusterStateFollower.fixed(ClusterState("mixed", True, 1)))
        await cc.start()

        def transport(device: str):   # as media_plane._transport
            entry = cc.registry.entries.get(device)
            station = cc.calls.agent.stations.get(device)
            if entry is None or station is None:
                return None
            on_tls = entry.transport_port == cc.tls.port
            return DeviceTransport(entry.security_mode, on_tls, entry.cipher if on_tls else "",
                                   srtp_capable=station.srtp_capable)
        keys = CallKeySource(lambda: PairKeys(MasterKey.generate(), MasterKey.generate()), transport)
        cc.calls.agent.key_source = keys.key_source
        port_q.put((cc.plain.port, cc.tls.port, rs._rss_kb()))
        loop = asyncio.get_running_loop()
        while True:
            cmd = await loop.run_in_executor(None, cmd_conn.recv)
            if cmd == "mark":     # Python allocations from here on are traced (memory per call)
                import gc
                import tracemalloc
                gc.collect()
                tracemalloc.start()
                cmd_conn.send("marked")
            elif cmd == "calls":
                import gc
                import tracemalloc
                views = cc.calls.calls()
                gc.collect()
                traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
                cmd_conn.send((len(views), sum(v.phase == "connected" for v in views),
                               sum(v.status_name == "encrypted" for v in views), traced))
            elif cmd == "rss":
                import gc
                gc.collect()
                cmd_conn.send(rs._rss_kb())
            elif cmd == "stop":
                await cc.close()
                await engine.dispose()
                cmd_conn.send("stopped")
                return
    rs._run(main())


async def run(port: int, contexts, concurrency: int, child: rs.Child, trace: bool = False,
              in_progress: int = 0) -> dict:
    from ccmsec.aio.sccp import connect_phone
    from ccmsec.aio.sccp_calling import CallingPhone
    from ccmsec.wire import sccp as s
    from ccmsec.wire.sccp_calls import CallStateCode as CS

    n = len(contexts)
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(concurrency)

    async def register(i, ctx):
        async with sem:
            conn = await connect_phone(HOST, port, s.Register(rs.phone_name(i), HOST, device_type=30006),
                                       ssl_context=ctx, timeout=120,
                                       capabilities=s.CapabilitiesRes((s.MediaCapability(4),),
                                                                      encryption_capable=True))
            phone = CallingPhone(conn, bind_host=HOST)
            await phone.wait_ready(120)
            return phone

    start = time.perf_counter()
    phones = await asyncio.gather(*(register(i, c) for i, c in enumerate(contexts)))
    reg_seconds = time.perf_counter() - start
    rss_before = await loop.run_in_executor(None, child.ask, "rss")
    if trace:
        await loop.run_in_executor(None, child.ask, "mark")

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
        held_before = await loop.run_in_executor(None, child.ask, "calls")
        loaded["held_before"] = held_before[1]
    start = time.perf_counter()
    await asyncio.gather(*(call(k) for k in range(in_progress, pairs)))
    call_seconds = time.perf_counter() - start
    measured = pairs - in_progress
    held, connected, encrypted, traced = await loop.run_in_executor(None, child.ask, "calls")
    rss_after = await loop.run_in_executor(None, child.ask, "rss")
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
            "traced_kb_per_call": traced / 1024 / max(1, held)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phones", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="200 phones")
    parser.add_argument("--concurrency", type=int, default=64, help="registrations / set-ups in flight")
    parser.add_argument("--trace-memory", action="store_true",
                        help="also trace call control's Python allocations during the calls (tracemalloc; "
                             "slows the set-ups it measures, so the rate of such a run is not comparable)")
    parser.add_argument("--in-progress", type=int, default=0, metavar="N",
                        help="set up N calls first and keep them connected, then measure the set-ups "
                             "of the remaining calls while those N are in progress (bounded by --phones)")
    args = parser.parse_args()
    n = 200 if args.quick else args.phones
    if n < 2 or n % 2:
        parser.error("--phones must be an even number >= 2")
    if not 0 <= args.in_progress < n // 2:
        parser.error(f"--in-progress must be in 0..{n // 2 - 1} (calls left to measure)")
    rs._raise_fd_limit()
    data = Path(tempfile.mkdtemp(prefix="ccmsec-calls-"))
    try:
        t0 = time.perf_counter()
        prepare(data, n)
        contexts = rs.phone_contexts(data, n)
        print(f"setup: {n} encrypted 7970s with LSCs and a line each in {time.perf_counter() - t0:.1f} s")
        cc = rs.Child(callcontrol_process, data)
        try:
            r = rs._run(run(cc.tls_port, contexts, args.concurrency, cc, args.trace_memory,
                           args.in_progress))
        finally:
            cc.stop()
    finally:
        shutil.rmtree(data, ignore_errors=True)
    ratio = r["call_rate"] / r["reg_rate"]
    print(f"baseline: encrypted registrations (TLS, Register, set-up exchange): {r['reg_rate']:8.1f} /s "
          f"({n} phones in {r['reg_seconds']:.2f} s)")
    if r["in_progress"]:
        print(f"first:    {r['in_progress']} calls set up (0 -> {r['in_progress']} in progress): "
              f"{r['first_rate']:8.1f} /s; connected afterwards: {r['held_before']}")
    print(f"ours:     secure call set-ups (dial to both connected, channels open): {r['call_rate']:8.1f} /s "
          f"({r['pairs']} calls in {r['call_seconds']:.2f} s"
          + (f", while {r['in_progress']} calls stayed in progress)" if r["in_progress"] else ")"))
    print(f"ratio:    {ratio:.2f} (aim >= 0.5)")
    if r["in_progress"]:
        print(f"load:     set-ups with {r['in_progress']} calls in progress / the first {r['in_progress']}: "
              f"{r['call_rate'] / r['first_rate']:.2f}")
    print(f"held:     {r['held']} calls at once, {r['connected']} connected, {r['encrypted']} encrypted "
          f"(phones showing the lock: {r['locks']})")
    print(f"memory:   {r['kb_per_call']:.1f} kB per active call in call control (RSS delta / calls held)"
          + (f"; Python allocations traced: {r['traced_kb_per_call']:.1f} kB per call" if args.trace_memory else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

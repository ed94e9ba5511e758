"""Memory per registered encrypted phone in the callmanager service: RSS of the service process
(`python -m ccmsec_callmanager`, from /proc/<pid>/status) before and after N encrypted phones
(mutual TLS, AES) registered and stayed connected.

    uv run python bench/memory_per_phone.py            # 2000 phones
    uv run python bench/memory_per_phone.py --quick    # 200 phones

The service runs as deployed, with the cluster registration_storm.py starts (NATS, ctl-provider's
mixed mode, capf, keymanager, its identity, database and ccmserver.cer); the devices are rows of
its devices table, the count of registrations is its `Status` ("registered"). "Before" is read
once the service is serving in mixed mode and has been idle for a few seconds; nothing in the
service is collected on the bench's behalf (no gc.collect() from outside), so the figure is what
an operator would see.

Baseline in the same run: the same number of bare Python `ssl` server connections (the service's
server context and certificates) held open by a plain asyncio TLS server in a child process — what
TLS alone costs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import registration_storm as rs  # noqa: E402  (the cluster, devices, phones and the raw server)

SETTLE = 3.0   # seconds of quiet before and after the phones (the registry's database mirror flushes)


async def hold_phones(host: str, port: int, contexts, concurrency: int):
    from ccmsec.aio.sccp import connect_phone
    from ccmsec.wire import sccp as s

    sem = asyncio.Semaphore(concurrency)

    async def one(i, ctx):
        async with sem:
            phone = await connect_phone(host, port, s.Register(rs.phone_name(i), rs.HOST,
                                                               device_type=30006), ssl_context=ctx)
            await phone.wait_registered(60)
            return phone
    return await asyncio.gather(*(one(i, c) for i, c in enumerate(contexts)))


async def hold_raw(host: str, port: int, contexts, concurrency: int):
    sem = asyncio.Semaphore(concurrency)

    async def one(ctx):
        async with sem:
            reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname="")
            writer.write(b"\0" * 64)
            await writer.drain()
            await reader.readexactly(40)
            return writer
    return await asyncio.gather(*(one(c) for c in contexts))


def measure_raw(data: Path, host: str, contexts, concurrency: int) -> float:
    raw = rs.RawServer(data, host)
    try:
        async def run():
            await asyncio.sleep(0.2)
            before = raw.rss_kb()
            held = await hold_raw(host, raw.port, contexts, concurrency)
            await asyncio.sleep(1.0)
            after = raw.rss_kb()
            for w in held:
                w.close()
            return before, after
        before, after = rs._run(run())
        return (after - before) / len(contexts)
    finally:
        raw.stop()


def measure_service(cluster: rs.Cluster, contexts, concurrency: int) -> dict:
    async def run():
        async with cluster.admin_channel() as admin:
            await asyncio.sleep(SETTLE)
            before = rs.rss_kb(cluster.pid)
            phones = await hold_phones(cluster.cm_host, cluster.sccp_tls_port, contexts, concurrency)
            await asyncio.sleep(SETTLE)
            after = rs.rss_kb(cluster.pid)
            registered = (await cluster.status(admin)).get("registered", "?")
            for p in phones:
                await p.close()
            return {"before": before, "after": after, "registered": registered}
    r = rs._run(run())
    r["kb_per_phone"] = (r["after"] - r["before"]) / len(contexts)
    return r


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phones", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="200 phones")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--keep", action="store_true", help="keep the data directory and the services' logs")
    args = parser.parse_args()
    n = 200 if args.quick else args.phones
    rs._raise_fd_limit()   # before the services are spawned: they inherit it
    print(rs.load_line(), flush=True)
    data = Path(tempfile.mkdtemp(prefix="ccmsec-mem-"))
    cluster = None
    try:
        t0 = time.perf_counter()
        cluster = rs.start_cluster(data, n)
        contexts = rs.phone_contexts(data, n)
        print(f"setup: callmanager service up (pid {cluster.pid}); {n} encrypted 7970s with LSCs in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        raw_kb = measure_raw(data, cluster.cm_host, contexts, args.concurrency)
        ours = measure_service(cluster, contexts, args.concurrency)
    finally:
        rs.finish(cluster, data, args.keep)
    ours_kb = ours["kb_per_phone"]
    print(f"service:  RSS {ours['before'] / 1024:.1f} MB idle, {ours['after'] / 1024:.1f} MB with the phones "
          f"(its Status: {ours['registered']} registered)")
    print(f"baseline: bare Python ssl server connection held open: {raw_kb:6.1f} kB per connection")
    print(f"ours:     registered encrypted phone in the callmanager service: {ours_kb:6.1f} kB per phone")
    print(f"ratio:    {ours_kb / raw_kb if raw_kb > 0 else float('nan'):.2f} (aim: ours <= 40 kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

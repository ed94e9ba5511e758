"""Memory per registered encrypted phone in call control: RSS of the call-control process before
and after N encrypted phones (mutual TLS, AES) registered and stayed connected.

    uv run python bench/memory_per_phone.py            # 2000 phones
    uv run python bench/memory_per_phone.py --quick    # 200 phones

Baseline in the same run: the same number of bare Python `ssl` server connections (same
context, same certificates) held open by a plain asyncio TLS server — what TLS alone costs.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import registration_storm as rs  # noqa: E402  (shared setup and server processes)


async def hold_phones(port: int, contexts, concurrency: int):
    from ccmsec.aio.sccp import connect_phone
    from ccmsec.wire import sccp as s

    sem = asyncio.Semaphore(concurrency)

    async def one(i, ctx):
        async with sem:
            phone = await connect_phone(rs.HOST, port, s.Register(rs.phone_name(i), rs.HOST,
                                                                  device_type=30006), ssl_context=ctx)
            await phone.wait_registered(60)
            return phone
    return await asyncio.gather(*(one(i, c) for i, c in enumerate(contexts)))


async def hold_raw(port: int, contexts, concurrency: int):
    sem = asyncio.Semaphore(concurrency)

    async def one(ctx):
        async with sem:
            reader, writer = await asyncio.open_connection(rs.HOST, port, ssl=ctx, server_hostname="")
            writer.write(b"\0" * 64)
            await writer.drain()
            await reader.readexactly(40)
            return writer
    return await asyncio.gather(*(one(c) for c in contexts))


def measure(child_target, data, contexts, concurrency, holder) -> float:
    child = rs.Child(child_target, data)
    try:
        async def run():
            loop = asyncio.get_running_loop()
            await asyncio.sleep(0.2)
            before = await loop.run_in_executor(None, child.ask, "rss") if child_target is rs.callcontrol_process else child.rss_start
            held = await holder(child.tls_port or child.plain_port, contexts, concurrency)
            await asyncio.sleep(1.0)  # let the registry mirror flush
            after = await loop.run_in_executor(None, child.ask, "rss") if child_target is rs.callcontrol_process else None
            return before, after, held
        before, after, held = rs._run(run())
        if after is None:  # the raw server has no rss command: read /proc directly
            after = int([l for l in Path(f"/proc/{child.proc.pid}/status").read_text().splitlines()
                         if l.startswith("VmRSS:")][0].split()[1])
        return (after - before) / len(contexts)
    finally:
        child.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phones", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="200 phones")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    n = 200 if args.quick else args.phones
    rs._raise_fd_limit()
    data = Path(tempfile.mkdtemp(prefix="ccmsec-mem-"))
    try:
        t0 = time.perf_counter()
        rs.prepare(data, n)
        contexts = rs.phone_contexts(data, n)
        print(f"setup: {n} encrypted 7970s with LSCs in {time.perf_counter() - t0:.1f} s")
        raw_kb = measure(rs.raw_tls_process, data, contexts, args.concurrency, hold_raw)
        ours_kb = measure(rs.callcontrol_process, data, contexts, args.concurrency, hold_phones)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    print(f"baseline: bare Python ssl server connection held open: {raw_kb:6.1f} kB per connection")
    print(f"ours:     registered encrypted phone in call control:  {ours_kb:6.1f} kB per phone")
    print(f"ratio:    {ours_kb / raw_kb if raw_kb > 0 else float('nan'):.2f} (aim: ours <= 40 kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

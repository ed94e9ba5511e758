"""Failover time of a fleet when the node serving it dies (LATER-7, SRST-1), measured from the
phones' side against the real services, compared with the source system's timings at the same
keepalive interval.

Ours:      a local cluster (`ccmsec up --subscribers 1`: publisher, subscriber, SRST, each its own
           process with its database, bus and identity) and N phones in this process running the
           phone's failover adapter (`FailoverPhone`, as phone-sim does): registered with the
           publisher through a fault proxy, a standby connection to the subscriber. One fault at a
           time, each followed by fail-back:
             * clean kill: kill -9 of the publisher (its connections are reset);
             * hung process: SIGSTOP of the publisher (noticed by missed keepalives);
             * cut network: the proxy swallows everything (noticed by missed keepalives);
             * every node: kill -9 of publisher and subscriber (the phones fall back to SRST).
           Time = from the fault to each phone registered with the next target.
           Fail-back after each fault: from the publisher's return (restarted by the supervisor
           after a kill and answering a KeepAlive again, SIGCONT, the proxy restored) to each phone
           registered with it again. No phone may return before the stable period; probes keep
           their connection open between rounds (`FailoverPhone`), so a returning node is not hit
           by one new connection per phone and probe.
Baseline:  the source system's timings at the same keepalive interval K (docs: 30 s keepalive):
           a reset connection is noticed at once; a hung process after three missed keepalives
           (3 K, 90 s at 30 s); a broken path after 20–25 s of TCP retries; with a standby
           connection to SRST, fallback took 10–20 s. The ratio is ours / theirs (median).

    uv run python bench/failover.py --quick      # 200 phones, keepalive 2 s
    uv run python bench/failover.py              # 1000 phones, keepalive 2 s
    uv run python bench/failover.py --phones 50 --keepalive 30   # the source's default keepalive
    uv run python bench/failover.py --cases all --slow-publisher 0.2   # one fault; an overloaded node

Each fail-back also prints the paths the phones took (e.g. SRST -> subscriber -> publisher) with
their times, how many registration attempts on the publisher failed and why, and — when some phone
is not back within the bound — where the phones are and the last events of a few of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ccmsec.aio.sccp_failover import FailoverPhone, open_streams  # noqa: E402
from ccmsec.wire import sccp as s  # noqa: E402
from ccmsec.wire.sccp import KeepAlive, KeepAliveAck, SccpFramer  # noqa: E402
from ccmsec.wire.sccp_failover import FailoverSettings, Target, TargetKind  # noqa: E402
from tests.faultproxy import FaultProxy  # noqa: E402

STABLE = 5.0


def cli(data: Path, *args: str, timeout: float = 300, env: dict | None = None):
    return subprocess.run([sys.executable, "-m", "ccmsec.cli.main", *args, "--data", str(data)],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def pid_of(data: Path, node: str) -> int:
    return int(json.loads((data / "run" / "state.json").read_text())["children"][node]["pid"])


class Fleet:
    def __init__(self, endpoints: dict, count: int, keepalive: float):
        svc = endpoints["services"]
        self.pub, self.sub, self.srst = svc["callmanager"], svc["callmanager-sub1"], svc["srst"]
        self.count = count
        self.keepalive = keepalive
        self.phones: list[FailoverPhone] = []
        self.proxy: FaultProxy | None = None

    async def start(self) -> None:
        self.proxy = await FaultProxy((self.pub["host"], self.pub["sccp_port"]), max_connections=4 * self.count).start()
        targets = [Target("127.0.0.1", self.proxy.port), Target(self.sub["host"], self.sub["sccp_port"]),
                   Target(self.srst["host"], self.srst["sccp_port"], TargetKind.SRST)]

        def connector(source: str):
            async def connect(target):
                return await open_streams(target, ssl_context=None, bind_host=source, timeout=5)
            return connect
        for i in range(self.count):
            name = f"SEP0BE{i:09X}"
            # Each phone from its own address, as a fleet is: call control limits what one address
            # may hold unregistered (the fault proxy connects upstream from the phone's address too).
            source = f"127.253.{i // 250}.{i % 250 + 2}"
            p = FailoverPhone(name, targets, connector(source), lambda ip, n=name: s.Register(n, ip, device_type=7),
                              bind_host=source, standby_interval=self.keepalive, register_timeout=10,
                              probe_timeout=2, settings=FailoverSettings(
                                  stable_period=STABLE, probe_interval=2.0, retry_base=0.5, retry_max=3.0))
            p.start()
            self.phones.append(p)
            if i % 50 == 49:
                await asyncio.sleep(0.2)   # a registration storm, paced a little

    def on(self, port: int, host: str | None = None) -> int:
        return sum(1 for p in self.phones if p.registered and p.active is not None and p.active.port == port
                   and (host is None or p.active.host == host))

    async def measure(self, port: int, host: str | None, started: float, timeout: float) -> list[float]:
        done: dict[int, float] = {}
        end = time.monotonic() + timeout
        while len(done) < self.count and time.monotonic() < end:
            t = time.monotonic() - started
            for i, p in enumerate(self.phones):
                if i not in done and p.registered and p.active is not None and p.active.port == port \
                        and (host is None or p.active.host == host):
                    done[i] = t
            await asyncio.sleep(0.05)
        return sorted(done.values())

    def where(self, port: int, host: str | None = None, sample: int = 3) -> str:
        """Where the phones not on (host, port) are, and the last events of a few of them."""
        where: dict[str, int] = {}
        for p in self.phones:
            key = p.active.label if p.registered and p.active is not None else "unregistered"
            where[key] = where.get(key, 0) + 1
        stuck = [p for p in self.phones if not (p.registered and p.active is not None and p.active.port == port
                                                and (host is None or p.active.host == host))][:sample]
        now = asyncio.get_running_loop().time()
        history = {p.name: [(round(e.at - now, 1), e.kind, e.target, e.detail[:60]) for e in p.events[-8:]]
                   + [("selector", [(round(t - now, 1), w[:60]) for t, w in p.selector.history[-4:]])]
                   for p in stuck}
        return f"{where}; the last events of some (seconds before now): {history}"

    async def home(self, timeout: float = 120) -> float:
        started = time.monotonic()
        while self.on(self.proxy.port) < self.count:
            if time.monotonic() - started > timeout:
                where: dict[str, int] = {}
                for p in self.phones:
                    key = p.active.label if p.registered and p.active is not None else "unregistered"
                    where[key] = where.get(key, 0) + 1
                stuck = [p for p in self.phones if not (p.registered and p.active is not None
                                                        and p.active.port == self.proxy.port)][:3]
                history = {p.name: [(round(e.at, 1), e.kind, e.target, e.detail[:60]) for e in p.events[-8:]]
                           for p in stuck}
                raise SystemExit(f"only {self.on(self.proxy.port)}/{self.count} phones on the publisher "
                                 f"after {timeout:.0f} s: {where}; the last events of some: {history}")
            await asyncio.sleep(0.2)
        return time.monotonic() - started

    async def stop(self) -> None:
        try:
            await asyncio.wait_for(asyncio.gather(*(p.stop() for p in self.phones), return_exceptions=True), 30)
        except asyncio.TimeoutError:
            print("some phones did not stop within 30 s", flush=True)
        if self.proxy is not None:
            await self.proxy.close()


async def node_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """The node answers a KeepAlive on a new connection (a stopped process would accept TCP in
    the kernel and never answer)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        writer.write(KeepAlive().serialize())
        await writer.drain()
        framer = SccpFramer()
        async with asyncio.timeout(timeout):
            while data := await reader.read(4096):
                if any(isinstance(m, KeepAliveAck) for m in framer.feed(data)):
                    return True
    except (OSError, TimeoutError, asyncio.TimeoutError):
        pass
    finally:
        writer.close()
    return False


async def until_answers(host: str, port: int, limit: float = 180) -> float:
    """Monotonic time at which the node answered again."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if await node_answers(host, port):
            return time.monotonic()
        await asyncio.sleep(0.1)
    raise SystemExit(f"{host}:{port} did not come back within {limit:.0f} s")


def row(case: str, times: list[float], count: int, theirs: tuple[float, float] | None, keepalive: float,
        note: str = "") -> dict:
    median = statistics.median(times) if times else float("nan")
    p95 = times[int(0.95 * (len(times) - 1))] if times else float("nan")
    worst = times[-1] if times else float("nan")
    mid = (theirs[0] + theirs[1]) / 2 if theirs else 0.0
    shown = "—" if theirs is None else f"{theirs[0]:g}" if theirs[0] == theirs[1] else f"{theirs[0]:g}-{theirs[1]:g}"
    out = {"case": case, "phones": f"{len(times)}/{count}", "median": median, "p95": p95, "worst": worst,
           "theirs": shown, "ratio": (median / mid) if mid else float("nan"), "note": note}
    print(f"{case:<40} {out['phones']:>9}  median {median:6.2f} s  p95 {p95:6.2f} s  worst {worst:6.2f} s  "
          f"source at keepalive {keepalive:g} s: {shown} s" + (f"  ratio {out['ratio']:.2f}" if mid else "")
          + (f"  ({note})" if note else ""), flush=True)
    return out


async def run(count: int, keepalive: int, cases: set[str], slow: float = 1.0) -> None:
    data = Path(tempfile.mkdtemp(prefix="ccmsec-bench-failover-"))
    env = {"CCMSEC_SCCP_KEEPALIVE": str(keepalive), "CCMSEC_SRST_DIRECTORY_REFRESH": "3"}
    res = cli(data, "up", "-d", "--subscribers", "1", env=env)
    if res.returncode != 0:
        cli(data, "down")
        raise SystemExit(f"ccmsec up failed: {res.stderr}")
    endpoints = json.loads((data / "run" / "endpoints.json").read_text())
    fleet = Fleet(endpoints, count, keepalive)
    rows = []
    try:
        await fleet.start()
        took = await fleet.home(max(120.0, 0.3 * count))   # a registration storm on a shared machine
        print(f"{count} phones registered with the publisher in {took:.1f} s (keepalive {keepalive} s)", flush=True)
        await asyncio.sleep(4)   # standbys open; SRST's directory has seen the devices
        sub = fleet.sub["sccp_port"], fleet.sub["host"]
        pub = fleet.pub["host"], fleet.pub["sccp_port"]
        limit = max(60.0, 6 * keepalive)
        bound = max(180.0, 4 * limit)   # a fail-back must complete within this

        async def fail_back(label: str, returned: float) -> None:
            """Every phone back on the publisher (through the proxy), timed from its return."""
            since = asyncio.get_running_loop().time() - (time.monotonic() - returned)
            times = await fleet.measure(fleet.proxy.port, "127.0.0.1", returned, bound)
            home = f"127.0.0.1:{fleet.proxy.port}"
            failed = [(p.name, e.detail) for p in fleet.phones for e in p.events
                      if e.at >= since and e.kind == "attempt-failed" and e.target == home]
            reasons: dict[str, int] = {}
            for _, why in failed:
                reasons[why[:50]] = reasons.get(why[:50], 0) + 1
            labels = {f"127.0.0.1:{fleet.proxy.port}": "publisher",
                      f"{fleet.sub['host']}:{fleet.sub['sccp_port']}": "subscriber",
                      f"SRST {fleet.srst['host']}:{fleet.srst['sccp_port']}": "SRST"}
            paths: dict[str, list[float]] = {}
            for p in fleet.phones:
                steps = [labels.get(e.target, e.target) for e in p.events
                         if e.at >= since - 120 and e.kind == "registered"]
                back = [e.at - since for e in p.events if e.at >= since and e.kind == "registered"
                        and e.target == home]
                key = " -> ".join(steps[-4:]) or "none"
                paths.setdefault(key, []).append(back[0] if back else float("inf"))
            for key, values in sorted(paths.items(), key=lambda kv: -len(kv[1])):
                values.sort()
                print(f"  {label}: {len(values)} phones registered {key}; back on the publisher "
                      f"median {statistics.median(values):.1f} s, worst {values[-1]:.1f} s", flush=True)
            print(f"  {label}: {len(failed)} registration attempts on the publisher failed during the "
                  f"fail-back, on {len({n for n, _ in failed})} phones; "
                  f"{sorted(reasons.items(), key=lambda kv: -kv[1])[:3]}", flush=True)
            if len(times) < count:
                print(f"  {label}: {len(times)}/{count} back on the publisher within {bound:.0f} s: "
                      f"{fleet.where(fleet.proxy.port, '127.0.0.1')}", flush=True)
            early = sum(1 for t in times if t < STABLE - 0.2)
            rows.append(row(f"{label}: fail-back", times, count, None, keepalive,
                            note=f"stable period {STABLE:g} s; {early} returned before it"))

        if "kill" in cases:
            t0 = time.monotonic()
            os.kill(pid_of(data, "callmanager"), signal.SIGKILL)
            rows.append(row("clean kill (kill -9) -> subscriber", await fleet.measure(*sub, t0, limit), count,
                            (0.0, 0.0), keepalive))
            returned = await until_answers(*pub)
            print(f"  publisher restarted by the supervisor, answering {returned - t0:.1f} s after the kill",
                  flush=True)
            await fail_back("clean kill", returned)

        if "hung" in cases:
            t0 = time.monotonic()
            pid = pid_of(data, "callmanager")
            os.kill(pid, signal.SIGSTOP)
            try:
                rows.append(row("hung process (SIGSTOP) -> subscriber", await fleet.measure(*sub, t0, limit),
                                count, (3.0 * keepalive, 3.0 * keepalive), keepalive))
            finally:
                os.kill(pid, signal.SIGCONT)
            await fail_back("hung process", time.monotonic())

        if "cut" in cases:
            t0 = time.monotonic()
            fleet.proxy.blackhole()
            rows.append(row("cut network -> subscriber", await fleet.measure(*sub, t0, limit), count,
                            (20.0, 25.0), keepalive,
                            note="" if keepalive == 30 else "the source's figure is at its 30 s keepalive"))
            fleet.proxy.restore()
            await fail_back("cut network", time.monotonic())

        if "all" in cases:
            t0 = time.monotonic()
            os.kill(pid_of(data, "callmanager"), signal.SIGKILL)
            os.kill(pid_of(data, "callmanager-sub1"), signal.SIGKILL)
            rows.append(row("every node killed -> SRST", await fleet.measure(
                fleet.srst["sccp_port"], fleet.srst["host"], t0, limit), count, (10.0, 20.0), keepalive))
            returned = await until_answers(*pub)
            print(f"  publisher restarted by the supervisor, answering {returned - t0:.1f} s after the kill",
                  flush=True)
            throttle = None
            if slow < 1.0:   # emulate an overloaded node: it runs only `slow` of the time
                async def duty_cycle(pid: int) -> None:
                    try:
                        while True:
                            os.kill(pid, signal.SIGSTOP)
                            await asyncio.sleep(0.2 * (1 - slow))
                            os.kill(pid, signal.SIGCONT)
                            await asyncio.sleep(0.2 * slow)
                    finally:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGCONT)
                throttle = asyncio.create_task(duty_cycle(pid_of(data, "callmanager")))
            try:
                await fail_back("every node killed", returned)
            finally:
                if throttle is not None:
                    throttle.cancel()
                    await asyncio.gather(throttle, return_exceptions=True)
    finally:
        await fleet.stop()
        cli(data, "down")
        shutil.rmtree(data, ignore_errors=True)
    print(json.dumps({"phones": count, "keepalive": keepalive, "rows": rows}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 phones")
    parser.add_argument("--phones", type=int, default=0)
    parser.add_argument("--keepalive", type=int, default=2, help="seconds (RegisterAck), also on the standby")
    parser.add_argument("--cases", default="kill,hung,cut,all",
                        help="which faults, in this order: kill (kill -9 of the publisher), hung (SIGSTOP), "
                             "cut (the path swallowed), all (every node killed -> SRST); default all four")
    parser.add_argument("--slow-publisher", type=float, default=1.0, metavar="FRACTION",
                        help="during the fail-back after every node was killed, let the restarted publisher "
                             "run only this fraction of the time (SIGSTOP/SIGCONT every 0.2 s): an "
                             "overloaded node")
    args = parser.parse_args()
    cases = {c.strip() for c in args.cases.split(",") if c.strip()}
    if not cases or cases - {"kill", "hung", "cut", "all"}:
        parser.error("--cases takes kill, hung, cut, all (comma-separated)")
    count = args.phones or (200 if args.quick else 1000)
    try:
        import uvloop
        uvloop.run(run(count, args.keepalive, cases, args.slow_publisher))
    except ImportError:
        asyncio.run(run(count, args.keepalive, cases, args.slow_publisher))


if __name__ == "__main__":
    main()

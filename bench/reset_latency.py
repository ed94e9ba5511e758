"""Event latency as a phone sees it (issue 9, Benchmark): an administrative change committed →
the `Reset` the change requires received by the phone over its SCCP connection, through the real
services and the real path of every change:

    PATCH /api/v1/devices/{name} (pc_port toggled: RST-2)  — callmanager's administration API,
                                                             with a bearer token
    → domain layer: device row + audit row + outbox rows committed in one transaction
    → outbox relay publishes `device.reset` to NATS JetStream (nkey user, permissions, BUS-1…6)
    → callmanager's durable consumer (publisher checked against the table, handled-event record)
    → the registered phone's SCCP connection: `Reset`

A local cluster (`ccmsec up -d`: every service its own process, its database, its bus identity)
and P phones in this process (plain SCCP from their own loopback addresses, auto-registered), one
change at a time, cycling through the phones so each re-registers after its reset while the next
change goes to another. For each change:

* commit → reset: from the event's `occurred_unix_ms` (stamped when the change stages its outbox
  row, inside the transaction, just before commit; read off the bus by a read-only observer with
  the CLI's credentials) to the phone's receipt of `Reset` (same host clock);
* request → reset: from the PATCH request being sent (includes HTTPS, validation and the commit).

Prints median, p95 and worst of both over N changes, and the API's answer time.

    uv run python bench/reset_latency.py --quick        # 100 changes
    uv run python bench/reset_latency.py                # 1000 changes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from ccmsec.adminclient import discover, tls_context  # noqa: E402
from ccmsec.aio.sccp import ConnectionDropped, SccpPhoneConnection  # noqa: E402
from ccmsec.aio.sccp_failover import open_streams  # noqa: E402
from ccmsec.runtime.bus import EventBus  # noqa: E402
from ccmsec.wire import sccp as s  # noqa: E402
from ccmsec.wire.sccp_failover import Target  # noqa: E402
from ccmsec_proto import events_pb2  # noqa: E402


def cli(data: Path, *args: str, timeout: float = 600):
    return subprocess.run([sys.executable, "-m", "ccmsec.cli.main", *args, "--data", str(data)],
                          capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


class Phone:
    """One phone: registers, waits for `Reset`, notes when it came, registers again."""

    def __init__(self, index: int, host: str, port: int):
        self.name = f"SEP0BE7{index:08X}"
        self.source = f"127.252.{index // 250}.{index % 250 + 2}"
        self.target = Target(host, port)
        self.registered = asyncio.Event()
        self.resets: asyncio.Queue[float] = asyncio.Queue()
        self.task: asyncio.Task | None = None

    async def run(self) -> None:
        while True:
            try:
                reader, writer = await open_streams(self.target, ssl_context=None, bind_host=self.source, timeout=10)
                session = s.SccpPhoneSession(s.Register(self.name, self.source, device_type=7), None)
                conn = SccpPhoneConnection(session, reader, writer)
                try:
                    await conn.wait_registered(30)
                    self.registered.set()
                    event = await conn.next_event((s.ResetRequested, ConnectionDropped, s.KeepAliveTimeout),
                                                  timeout=None)
                    if isinstance(event, s.ResetRequested):
                        self.resets.put_nowait(time.time())   # wall clock: the event's stamp is one too
                    else:
                        print(f"{self.name}: lost its registration ({event}); registering again", flush=True)
                finally:
                    self.registered.clear()
                    await conn.close()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a refused or dropped registration: try again shortly
                print(f"{self.name}: {type(exc).__name__}: {exc}", flush=True)
                await asyncio.sleep(0.5)


def _api_client(data: Path) -> httpx.Client:
    """The administration API with a bearer token (POST /api/v1/login once): Basic credentials
    would cost an argon2id verification per change — the API's price, not the event path's."""
    endpoint = discover(data)
    client = httpx.Client(base_url=endpoint.url, verify=tls_context(endpoint.cafile), timeout=60)
    answer = client.post("/api/v1/login", json={"username": endpoint.username, "password": endpoint.password})
    answer.raise_for_status()
    client.headers["Authorization"] = f"Bearer {answer.json()['token']}"
    return client


def _patch(client: httpx.Client, name: str, changes: dict) -> dict:
    answer = client.patch(f"/api/v1/devices/{name}", json=changes)
    answer.raise_for_status()
    return answer.json()


def _stats(name: str, values_s: list[float]) -> dict:
    ms = sorted(v * 1000 for v in values_s)
    out = {"n": len(ms), "median_ms": statistics.median(ms), "p95_ms": ms[int(0.95 * (len(ms) - 1))],
           "worst_ms": ms[-1]}
    print(f"{name:<28} n {out['n']:5}  median {out['median_ms']:8.1f} ms  p95 {out['p95_ms']:8.1f} ms  "
          f"worst {out['worst_ms']:8.1f} ms", flush=True)
    return out


async def run(data: Path, changes: int, phones_n: int) -> dict:
    endpoints = json.loads((data / "run" / "endpoints.json").read_text())
    cm = endpoints["services"]["callmanager"]
    # A read-only observer of the bus: the CLI user may subscribe to `ccmsec.>` (BUS-6 leaves that open).
    observer = EventBus.for_cli(data, endpoints["nats_url"], "bench-observer", connect_timeout=60)
    await observer.connect()
    stamps: dict[str, list[float]] = {}

    async def on_reset(msg):
        event = events_pb2.Event.FromString(msg.data)
        for device in event.device_reset.devices:
            stamps.setdefault(device, []).append(event.occurred_unix_ms / 1000)

    await observer.nc.subscribe("ccmsec.*.device.reset", cb=on_reset)
    phones = [Phone(i, cm["host"], cm["sccp_port"]) for i in range(phones_n)]
    for p in phones:
        p.task = asyncio.create_task(p.run())
    client = _api_client(data)
    state = {p.name: True for p in phones}
    rows = []   # (device, sent wall, answered wall, reset wall, delivery)
    try:
        await asyncio.wait_for(asyncio.gather(*(p.registered.wait() for p in phones)), 180)
        print(f"{phones_n} phones registered with call control", flush=True)
        for i in range(changes):
            phone = phones[i % phones_n]
            await asyncio.wait_for(phone.registered.wait(), 60)
            state[phone.name] = not state[phone.name]
            sent = time.time()
            answer = await asyncio.to_thread(_patch, client, phone.name, {"pc_port": state[phone.name]})
            answered = time.time()
            got = await asyncio.wait_for(phone.resets.get(), 60)
            rows.append((phone.name, sent, answered, got, answer.get("delivery")))
            if (i + 1) % 100 == 0:
                print(f"  {i + 1}/{changes} changes", flush=True)
        await asyncio.sleep(1.0)   # the observer's last events
    finally:
        client.close()
        for p in phones:
            p.task.cancel()
        await asyncio.gather(*(p.task for p in phones), return_exceptions=True)
        await observer.close()
    commit_to_reset, request_to_reset, answer_times, unmatched = [], [], [], 0
    for device, sent, answered, got, _ in rows:
        stamp = [t for t in stamps.get(device, []) if sent - 0.05 <= t <= got]
        if stamp:
            commit_to_reset.append(got - stamp[-1])
        else:
            unmatched += 1
        request_to_reset.append(got - sent)
        answer_times.append(answered - sent)
    print(f"{len(rows)} changes, {phones_n} phones; deliveries: "
          f"{sorted({r[4] for r in rows})}; events not seen by the observer: {unmatched}", flush=True)
    return {"changes": len(rows), "phones": phones_n, "unmatched": unmatched,
            "commit_to_reset": _stats("commit -> phone's Reset", commit_to_reset),
            "request_to_reset": _stats("request -> phone's Reset", request_to_reset),
            "api_answer": _stats("API answer (delivery sent)", answer_times)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--phones", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="100 changes")
    args = parser.parse_args()
    if args.quick:
        args.changes = 100
    data = Path(tempfile.mkdtemp(prefix="ccmsec-bench-reset-"))
    try:
        started = time.monotonic()
        res = cli(data, "up", "-d")
        if res.returncode != 0:
            raise SystemExit(f"ccmsec up failed: {res.stderr[-2000:]}")
        print(f"cluster up in {time.monotonic() - started:.0f} s", flush=True)
        load_before = os.getloadavg()
        result = asyncio.run(run(data, args.changes, args.phones))
        load_after = os.getloadavg()
        result["load_average"] = {"before": round(load_before[0], 1), "after": round(load_after[0], 1),
                                  "cpus": os.cpu_count()}
        print(f"conditions: load average {load_before[0]:.1f} before the changes, {load_after[0]:.1f} after; "
              f"{os.cpu_count()} CPUs", flush=True)
    finally:
        cli(data, "down")
        shutil.rmtree(data, ignore_errors=True)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

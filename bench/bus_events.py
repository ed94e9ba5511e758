"""Event latency on the authenticated bus (issue 9 §3, BUS-1…BUS-3) against the open bus, same run.

Two real nats-servers on loopback, each with JetStream and the `CCMSEC` stream:

* baseline — what the bus was before issue 9: no users, subjects `ccmsec.<kind>`, a plain durable
  push consumer that acks each event (raw nats-py, no checks);
* ccmsec — the configuration `ccmsec up` renders (one nkey user per identity, publish permissions by
  role, own consumers and own inbox only, no anonymous user), call control publishing `device.reset` with its own seed under
  `ccmsec.callmanager.device.reset`, phone-sim consuming it with the runtime's `EventBus`
  (publisher check against the table, handled-event hooks, ack).

Each event is published once and waited for before the next (latency, not throughput): the time
from the publish call to the consumer's handler, N events per server, rounds alternating. Prints
median, p99 and worst for each, and the ratio of the medians.

    uv run python bench/bus_events.py [--events N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy  # noqa: E402

from ccmsec.cluster.pki import issue_service_identity  # noqa: E402
from ccmsec.runtime.bus import EventBus, make_event, read_seed, stream_config, subject_for  # noqa: E402
from ccmsec_proto import events_pb2  # noqa: E402
from tests.conftest import free_port, nats_binary, start_secured_nats, stop_process, wait_port  # noqa: E402


def _event() -> events_pb2.Event:
    return make_event("device.reset", "callmanager", device_reset=events_pb2.DeviceReset(
        devices=["SEP0000000BE001"], kind=events_pb2.RESET, rule="RST-1"))


async def _measure(publish, received: asyncio.Queue, n: int) -> list[float]:
    times = []
    for _ in range(n):
        event = _event()
        t0 = time.perf_counter()
        await publish(event)
        while (await asyncio.wait_for(received.get(), 10)) != event.id:
            pass
        times.append(time.perf_counter() - t0)
    return times


async def baseline_round(url: str, n: int, durable: str) -> list[float]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        await js.stream_info("CCMSEC")
    except Exception:
        await js.add_stream(stream_config())
    received: asyncio.Queue = asyncio.Queue()

    async def on_msg(msg):
        received.put_nowait(events_pb2.Event.FromString(msg.data).id)
        await msg.ack()

    sub = await js.subscribe("ccmsec.device.reset", durable=durable, cb=on_msg, manual_ack=True, stream="CCMSEC",
                             config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.NEW))

    async def publish(event):
        await js.publish("ccmsec.device.reset", event.SerializeToString(), headers={"Nats-Msg-Id": event.id})

    try:
        return await _measure(publish, received, n)
    finally:
        await sub.unsubscribe()
        await nc.close()


async def ccmsec_round(url: str, data: Path, n: int, durable: str) -> list[float]:
    ids = data / "identities" / "services"
    publisher = EventBus(url, "bench-cm", role="callmanager", seed=read_seed(ids / "callmanager"))
    consumer = EventBus(url, "bench-phone-sim", role="phone-sim", seed=read_seed(ids / "phone-sim"))
    await publisher.connect()
    await consumer.connect()
    received: asyncio.Queue = asyncio.Queue()
    seen: set[str] = set()

    async def handler(event):
        received.put_nowait(event.id)

    async def is_seen(_consumer, event_id):
        return event_id in seen

    async def mark(_consumer, event_id):
        seen.add(event_id)

    await consumer.subscribe(subject_for("device.reset"), durable, handler, seen=is_seen, mark=mark,
                             deliver_new=True)
    try:
        return await _measure(publisher.publish, received, n)
    finally:
        await consumer.close()
        await publisher.close()


def _summary(name: str, times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (f"{name:9} events {len(ms):5}  median {statistics.median(ms):6.3f} ms  p99 {p99:6.3f} ms  "
            f"worst {ms[-1]:7.3f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000, help="events per server per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ccmsec-bench-bus-") as tmp:
        data = Path(tmp)
        folders = []
        for role in ("callmanager", "phone-sim"):
            issue_service_identity(data, role, role, "127.0.0.1")
            folders.append(data / "identities" / "services" / role)
        secured_url, secured = start_secured_nats(data, folders, data / "js-secured")
        port = free_port()
        open_proc = subprocess.Popen([nats_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd",
                                      str(data / "js-open")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port("127.0.0.1", port)
            open_url = f"nats://127.0.0.1:{port}"
            base, ours = [], []
            for r in range(args.rounds):
                base += asyncio.run(baseline_round(open_url, args.events, f"bench-base-{r}"))
                # phone-sim's own declared consumer: the only names its user may bind (BUS-6)
                ours += asyncio.run(ccmsec_round(secured_url, data, args.events, "phone-sim-device-reset"))
        finally:
            stop_process(open_proc)
            stop_process(secured)
    print(_summary("baseline", base))
    print(_summary("ccmsec", ours))
    ratio = statistics.median(ours) / statistics.median(base)
    print(f"median latency ccmsec / baseline = {ratio:.2f} (authenticated, permission-checked, "
          "publisher-checked bus vs the open one)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

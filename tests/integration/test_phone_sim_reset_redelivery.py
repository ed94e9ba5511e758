"""RST-9 device resets survive a phone-sim crash or shutdown between the event's receipt and the
resets it asks for: the event is acknowledged only once the work is done (real NATS JetStream)."""

from __future__ import annotations

import asyncio
import json
import time

from ccmsec.cluster.state import endpoints_path
from ccmsec.runtime.bus import EventBus, make_event, subject_for
from ccmsec_phone_sim import main as phone_sim_main
from ccmsec_phone_sim.boot import Network
from ccmsec_phone_sim.fleet import Fleet
from ccmsec_phone_sim.main import PhoneSimService, PhoneSimSettings
from ccmsec_phone_sim.phone import State
from ccmsec_proto import events_pb2

CONSUMER = "phone-sim-device-reset"


async def _phone_sim(tmp_path, url: str, name: str, handled: set[str], marked: list[str]):
    """A phone-sim whose three phones are registered: two with callmanager, one with sub1."""
    svc = PhoneSimService(PhoneSimSettings(service="phone-sim", data_dir=tmp_path, shutdown_grace=0.5))
    svc.fleet = Fleet(tmp_path / name, Network("127.0.0.1", 9, tftp_timeout=5, tftp_retries=1))
    phones = await svc.fleet.add(3, "7960", "SEP0B0B")
    for phone, where in zip(phones, [("127.0.0.5", 2000), ("127.0.0.5", 2443), ("127.0.0.6", 2000)]):
        phone.state, (phone.registered_address, phone.registered_port) = State.REGISTERED, where
    svc.booted = []

    async def boot(runners, requested_at=None):   # the resets started (the phones' boots)
        svc.booted.extend(r.phone.name for r in runners)
        return len(runners)

    svc.fleet.boot = boot

    async def seen(consumer, event_id):   # the handled-event record (the service's database)
        return event_id in handled

    async def mark(consumer, event_id):
        handled.add(event_id)
        marked.append(event_id)

    svc.bus = EventBus(url, name, role="phone-sim", connect_timeout=5)
    await svc.bus.connect()
    await svc.bus.subscribe(subject_for("device.reset"), CONSUMER, svc.on_device_reset, seen=seen, mark=mark)
    return svc, [p.name for p in phones]


async def _until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return predicate()


async def test_rst9_a_shutdown_between_receipt_and_reset_brings_the_event_again(nats_server, tmp_path, monkeypatch):
    """RST-9: phone-sim finds a node's phones aside (its name may take a while to resolve) and
    returned from the handler at once, so the bus acknowledged the event before any phone was
    reset: stopped (or crashed) in that moment, the event was gone and the phones never reset.
    Now the ack follows the work: the stopped service gives the event back, the next one resets
    the phones, and the event is then acknowledged and recorded once."""
    path = endpoints_path(tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"services": {
        "callmanager": {"host": "127.0.0.5", "sccp_port": 2000, "sccp_tls_port": 2443},
        "callmanager-sub1": {"host": "127.0.0.6", "sccp_port": 2000, "sccp_tls_port": 2443}}}))
    real_node_endpoints, entered, gate = phone_sim_main.node_endpoints, asyncio.Event(), asyncio.Event()

    async def slow_node_endpoints(*args, **kwargs):   # the node's name resolving (a slow DNS server)
        entered.set()
        await gate.wait()
        return await real_node_endpoints(*args, **kwargs)

    monkeypatch.setattr(phone_sim_main, "node_endpoints", slow_node_endpoints)
    handled: set[str] = set()
    marked: list[str] = []
    publisher = EventBus(nats_server, "cm", role="callmanager", connect_timeout=5)
    await publisher.connect()
    first, names = await _phone_sim(tmp_path, nats_server, "first", handled, marked)
    try:
        event = make_event("device.reset", "callmanager",
                           device_reset=events_pb2.DeviceReset(server="callmanager", rule="RST-9"))
        await publisher.publish(event)
        await asyncio.wait_for(entered.wait(), 10)     # received; the resets not started yet
        await first._shutdown()                        # stops now (cancels the work aside)
        assert first.booted == [] and marked == []

        gate.set()                                     # the next phone-sim: the name resolves
        second, names = await _phone_sim(tmp_path, nats_server, "second", handled, marked)
        try:
            assert await _until(lambda: second.booted), "the event was not delivered again"
            assert sorted(second.booted) == sorted(names[:2])   # callmanager's phones, not sub1's
            assert await _until(lambda: marked == [event.id])
            assert await _until(lambda: False, timeout=0.5) is False   # settle
            assert (await second.bus.pending()) == {CONSUMER: 0}      # acknowledged
        finally:
            await second._shutdown()
        third, _ = await _phone_sim(tmp_path, nats_server, "third", handled, marked)
        try:
            await asyncio.sleep(1.5)
            assert third.booted == [] and marked == [event.id]   # done once: not delivered again
        finally:
            await third._shutdown()
    finally:
        gate.set()
        await publisher.close()


async def test_rst9_resets_refused_by_a_closing_fleet_are_not_counted_as_done(tmp_path, monkeypatch):
    """RST-9: shutdown closes the fleet before it cancels the service's tasks. A node's phones
    found in that moment had their boots refused by the closed phones, the work ended normally
    and the event was acknowledged — reset never. Now that work ends cancelled (not acknowledged:
    delivered again after the restart)."""
    real_node_endpoints, entered, gate = phone_sim_main.node_endpoints, asyncio.Event(), asyncio.Event()

    async def slow_node_endpoints(*args, **kwargs):
        entered.set()
        await gate.wait()
        return await real_node_endpoints(*args, **kwargs)

    monkeypatch.setattr(phone_sim_main, "node_endpoints", slow_node_endpoints)
    svc = PhoneSimService(PhoneSimSettings(service="phone-sim", data_dir=tmp_path))
    svc.fleet = Fleet(tmp_path / "phone-sim", Network("127.0.0.1", 9, tftp_timeout=5, tftp_retries=1))
    (phone,) = await svc.fleet.add(1, "7960", "SEP0B0C")
    phone.state, phone.registered_address, phone.registered_port = State.REGISTERED, "127.0.0.1", 2000
    work = await svc.on_device_reset(events_pb2.Event(
        id="r", occurred_unix_ms=int(time.time() * 1000),
        device_reset=events_pb2.DeviceReset(server="callmanager", rule="RST-9")))
    await asyncio.wait_for(entered.wait(), 5)
    await svc.fleet.close()               # teardown: the phones are closed
    gate.set()
    await asyncio.wait({work}, timeout=5)
    assert work.cancelled()               # not done: the bus gives the event back
    assert phone.boots == 0


async def test_rst_device_and_all_resets_refused_by_a_closing_fleet_are_not_counted_as_done(tmp_path):
    """RST-1/RST-9: teardown closes the fleet while the bus still delivers events. A reset of named
    devices, or of all phones, handled then had every boot refused by the closed phones, yet the
    handler returned as done: the event was acknowledged and recorded, no phone reset (only a
    node's reset was given back). Now such a reset ends as cancelled work: given back."""
    svc = PhoneSimService(PhoneSimSettings(service="phone-sim", data_dir=tmp_path))
    svc.fleet = Fleet(tmp_path / "phone-sim", Network("127.0.0.1", 9, tftp_timeout=5, tftp_retries=1))
    (phone,) = await svc.fleet.add(1, "7960", "SEP0B0D")
    phone.state = State.REGISTERED
    await svc.fleet.close()               # teardown: the phones are closed
    for reset in (events_pb2.DeviceReset(devices=[phone.name], rule="RST-1"),
                  events_pb2.DeviceReset(all=True, rule="RST-3")):
        work = await svc.on_device_reset(events_pb2.Event(
            id="r", occurred_unix_ms=int(time.time() * 1000), device_reset=reset))
        assert work is not None and work.cancelled(), reset   # not done: the bus gives it back
    assert phone.boots == 0
    # A reset that names no powered phone has nothing to do: done, closing or not.
    assert await svc.on_device_reset(events_pb2.Event(
        id="n", occurred_unix_ms=int(time.time() * 1000),
        device_reset=events_pb2.DeviceReset(devices=["SEP0B0DFFFFFF"], rule="RST-1"))) is None

"""The JetStream event bus: durable delivery, idempotent handlers, reconnect after a NATS restart."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time

import pytest

from ccmsec.runtime.bus import BusError, EventBus, make_event, subject_for
from ccmsec_proto import events_pb2
from tests.conftest import free_port, nats_binary


def _start_nats(port: int, store) -> subprocess.Popen:
    proc = subprocess.Popen([nats_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("nats did not start")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_events_survive_a_nats_restart_and_duplicates_are_handled_once(tmp_path):
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    proc = _start_nats(port, tmp_path / "js")
    seen_ids: set[str] = set()
    handled: list[str] = []

    async def seen(consumer, eid):
        return eid in seen_ids

    async def mark(consumer, eid):
        seen_ids.add(eid)

    async def handler(event):
        handled.append(event.id)

    async def scenario():
        nonlocal proc
        bus = EventBus(url, "test", role="callmanager", connect_timeout=5)
        await bus.connect()
        await bus.subscribe(subject_for("config.changed"), "test-consumer", handler, seen=seen, mark=mark)
        first = make_event("config.changed", "t", config_changed=events_pb2.ConfigChanged(devices=["SEP1"]))
        await bus.publish(first)
        await bus.publish(first)  # duplicate publish: de-duplicated by Nats-Msg-Id
        for _ in range(50):
            if handled:
                break
            await asyncio.sleep(0.1)
        _stop(proc)                 # NATS goes away ...
        await asyncio.sleep(0.5)
        proc = _start_nats(port, tmp_path / "js")   # ... and comes back with its store
        second = make_event("config.changed", "t", config_changed=events_pb2.ConfigChanged(devices=["SEP2"]))
        for _ in range(100):        # the client reconnects by itself
            try:
                await bus.publish(second)
                break
            except Exception:
                await asyncio.sleep(0.1)
        for _ in range(100):
            if len(handled) >= 2:
                break
            await asyncio.sleep(0.1)
        await bus.close()
        return first, second

    try:
        first, second = asyncio.run(scenario())
    finally:
        _stop(proc)
    assert handled == [first.id, second.id]


def test_unknown_event_kind_is_refused():
    with pytest.raises(BusError, match="unknown event kind"):
        subject_for("coffee.made")


def test_publish_without_connection_is_refused():
    bus = EventBus("nats://127.0.0.1:1", "t", role="cli")
    with pytest.raises(BusError, match="not connected"):
        asyncio.run(bus.publish(make_event("ctl.updated", "t")))


def test_a_consumer_left_from_the_old_subjects_is_not_bound_BUS_5(nats_server):
    """A durable consumer of the same name made for the subjects before issue 9 (`ccmsec.<kind>`,
    e.g. in a NATS store kept across an upgrade) would bind silently and receive nothing; the bus
    takes the next free name instead and the event arrives."""
    from nats.js.api import AckPolicy, ConsumerConfig

    handled = []

    async def handler(event):
        handled.append(event.id)

    async def scenario():
        bus = EventBus(nats_server, "test", role="callmanager", connect_timeout=5)
        await bus.connect()
        old = await bus.js.subscribe("ccmsec.device.reset", durable="node-device-reset", stream="CCMSEC",
                                     manual_ack=True, config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT))
        await old.unsubscribe()
        await bus.subscribe(subject_for("device.reset"), "node-device-reset", handler)
        event = make_event("device.reset", "t", device_reset=events_pb2.DeviceReset(all=True))
        await bus.publish(event)
        for _ in range(100):
            if handled:
                break
            await asyncio.sleep(0.05)
        info = await bus.js.consumer_info("CCMSEC", "node-device-reset-2")
        await bus.close()
        return event, info

    event, info = asyncio.run(scenario())
    assert handled == [event.id]
    assert info.config.filter_subject == "ccmsec.*.device.reset"


async def test_the_publishers_trace_id_is_bound_in_the_handler_and_a_malformed_one_is_not(nats_server):
    """Logs across events (issue 16): the handler runs under the publisher's trace id (header
    `Ccmsec-Trace-Id`); a header that is not a sane token is replaced by the event id, never
    logged; and the event's lag is observed (ccmsec_event_lag_seconds)."""
    import nats

    from ccmsec.runtime.logs import TRACE_HEADER, bind_trace_id, current_trace_id
    from ccmsec.runtime.metrics import REGISTRY

    lag = lambda: REGISTRY.get_sample_value("ccmsec_event_lag_seconds_count",  # noqa: E731
                                            {"kind": "config.changed"}) or 0
    before = lag()
    seen: list[tuple[str, str]] = []

    async def handler(event):
        seen.append((event.id, current_trace_id()))

    bus = EventBus(nats_server, "trace-test", role="callmanager", connect_timeout=5)
    await bus.connect()
    try:
        await bus.subscribe(subject_for("config.changed"), "trace-consumer", handler)
        first = make_event("config.changed", "t", config_changed=events_pb2.ConfigChanged(devices=["SEP1"]))
        with bind_trace_id("pub-trace-42"):
            await bus.publish(first)
        second = make_event("config.changed", "t", config_changed=events_pb2.ConfigChanged(devices=["SEP2"]))
        nc = await nats.connect(nats_server)
        try:
            await nc.jetstream().publish(subject_for("config.changed", "t", "callmanager"), second.SerializeToString(),
                                         headers={"Nats-Msg-Id": second.id, TRACE_HEADER: "bad id {x}"})
        finally:
            await nc.close()
        for _ in range(100):
            if len(seen) >= 2:
                break
            await asyncio.sleep(0.05)
    finally:
        await bus.close()
    assert seen == [(first.id, "pub-trace-42"), (second.id, second.id)]
    assert lag() == before + 2


async def test_an_event_whose_handled_record_fails_is_acked_not_handled_again(nats_server):
    """The handler ran; writing its handled-event record then failed (database busy or away).
    The event was nak'ed as if the handler had failed, redelivered a second later and — with no
    record to stop it — handled again (a second reset, a second restart). It is acked now."""
    handled: list[str] = []
    marks = []

    async def seen(consumer, eid):
        return False  # no record was written

    async def mark(consumer, eid):
        marks.append(eid)
        raise RuntimeError("database is locked")

    async def handler(event):
        handled.append(event.id)

    bus = EventBus(nats_server, "mark-test", role="callmanager", connect_timeout=5)
    await bus.connect()
    try:
        await bus.subscribe(subject_for("config.changed"), "mark-consumer", handler, seen=seen, mark=mark)
        event = make_event("config.changed", "t", config_changed=events_pb2.ConfigChanged(devices=["SEP1"]))
        await bus.publish(event)
        for _ in range(100):
            if handled:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(2.5)  # a nak'ed event comes back after 1 s
        pending = await bus.pending()
    finally:
        await bus.close()
    assert handled == [event.id]
    assert marks == [event.id]
    assert pending == {"mark-consumer": 0}


async def test_a_lost_consumer_is_rebound_from_its_ack_floor_so_an_outstanding_event_comes_again(nats_server):
    """BUS-5: a consumer lost while an event was outstanding (its handler still running, then
    failing: no ack) was recreated from the moment it was last seen minus 2 s — an event published
    before that, never acknowledged, was never delivered again. It is rebound from just after its
    ack floor now (the handled-event record skips what was handled above it)."""
    from nats.js.errors import NotFoundError

    handled: list[str] = []
    release = asyncio.Event()
    attempts: list[str] = []
    seen_ids: set[str] = set()

    async def seen(consumer, eid):
        return eid in seen_ids

    async def mark(consumer, eid):
        seen_ids.add(eid)

    async def handler(event):
        attempts.append(event.id)
        if len(attempts) == 1:
            await release.wait()
            raise RuntimeError("the database went away")  # not acknowledged
        handled.append(event.id)

    bus = EventBus(nats_server, "floor-test", role="callmanager", connect_timeout=5)
    await bus.connect()
    try:
        await bus.subscribe(subject_for("config.changed"), "floor-consumer", handler, seen=seen, mark=mark)
        event = make_event("config.changed", "t", config_changed=events_pb2.ConfigChanged(devices=["SEP1"]))
        await bus.publish(event)
        for _ in range(100):
            if attempts:
                break
            await asyncio.sleep(0.05)
        for _ in range(6):                       # the watchdog sees the consumer for 3 s
            assert await bus.check() == ""
            await asyncio.sleep(0.5)
        await bus.js.delete_consumer("CCMSEC", "floor-consumer")   # lost (BUS-5) ...
        with pytest.raises(NotFoundError):
            await bus.js.consumer_info("CCMSEC", "floor-consumer")
        release.set()                            # ... while its handler fails the event
        await asyncio.sleep(0.2)
        assert "floor-consumer was missing (recreated)" in await bus.check()
        for _ in range(100):
            if handled:
                break
            await asyncio.sleep(0.05)
    finally:
        release.set()
        await bus.close()
    assert handled == [event.id]


async def test_work_a_handler_started_aside_is_acked_only_when_it_succeeded(nats_server):
    """A handler that returns the task of work it started aside (phone-sim's RST-9 resets) had the
    event acknowledged and recorded as handled at once: work failing later was lost for good. The
    ack and the record now follow the work; work that failed brings the event again."""
    handled: set[str] = set()
    runs: list[str] = []

    async def seen(consumer, eid):
        return eid in handled

    async def mark(consumer, eid):
        handled.add(eid)

    async def work(event):
        await asyncio.sleep(0.2)
        runs.append(event.id)
        if len(runs) == 1:
            raise RuntimeError("the first try fails")

    async def handler(event):
        return asyncio.ensure_future(work(event))

    bus = EventBus(nats_server, "aside-test", role="callmanager", connect_timeout=5)
    await bus.connect()
    try:
        await bus.subscribe(subject_for("config.changed"), "aside-consumer", handler, seen=seen, mark=mark)
        event = make_event("config.changed", "t", config_changed=events_pb2.ConfigChanged(devices=["SEP1"]))
        await bus.publish(event)
        for _ in range(100):
            if runs:
                break
            await asyncio.sleep(0.05)
        assert handled == set()          # the work failed: not recorded, not acknowledged
        for _ in range(100):
            if handled:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)
        pending = await bus.pending()
    finally:
        await bus.close()
    assert runs == [event.id, event.id] and handled == {event.id}
    assert pending == {"aside-consumer": 0}


async def test_work_started_aside_that_never_ends_is_cut_and_its_event_delivered_again(nats_server, monkeypatch, caplog):
    """Work a handler started aside kept its event in progress for as long as it ran: work that
    never ended (stuck) held the event for ever — neither handled nor delivered again, and nothing
    said so. Past the bus's WORK_LIMIT the work is now cancelled, an error says so, and the event
    comes again (here handled the second time, acknowledged and recorded once)."""
    from ccmsec.runtime import bus as bus_mod

    monkeypatch.setattr(bus_mod, "IN_PROGRESS_EVERY", 0.1)
    monkeypatch.setattr(bus_mod, "WORK_LIMIT", 0.8)
    handled: set[str] = set()
    started: list[asyncio.Task] = []

    async def seen(consumer, eid):
        return eid in handled

    async def mark(consumer, eid):
        handled.add(eid)

    async def handler(event):
        # The first delivery's work never ends; the next one's does.
        work = asyncio.ensure_future(asyncio.Event().wait() if not started else asyncio.sleep(0.05))
        started.append(work)
        return work

    bus = EventBus(nats_server, "stuck-test", role="callmanager", connect_timeout=5)
    await bus.connect()
    try:
        await bus.subscribe(subject_for("config.changed"), "stuck-consumer", handler, seen=seen, mark=mark)
        event = make_event("config.changed", "t", config_changed=events_pb2.ConfigChanged(devices=["SEP1"]))
        with caplog.at_level("ERROR", logger="ccmsec.bus"):
            await bus.publish(event)
            for _ in range(200):
                if handled:
                    break
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        pending = await bus.pending()
    finally:
        for work in started:
            work.cancel()
        await bus.close()
    assert handled == {event.id}, "a stuck work kept its event in progress: never delivered again"
    assert len(started) == 2 and started[0].cancelled()
    assert "event work did not end within 0.8 s" in caplog.text
    assert pending == {"stuck-consumer": 0}


async def test_work_limit_is_thirty_ack_waits_of_the_consumers_it_guards(nats_server):
    """WORK_LIMIT (work started aside: phone-sim's RST-9 node resets) was a bare 900 s, the ack
    wait and delivery count a literal in three places: the documented reason for the value (30
    ack waits; a cut reset resumes at its redelivery, at most max_deliver times) could drift
    from what the consumers use. Now both come from the constants the consumers are made with."""
    from ccmsec.runtime import bus as bus_mod

    assert bus_mod.WORK_LIMIT == 30 * bus_mod.ACK_WAIT == 900
    bus = EventBus(nats_server, "limit-test", role="phone-sim", connect_timeout=5)
    await bus.connect()
    try:
        async def handler(event):
            return None

        await bus.subscribe(subject_for("device.reset"), "limit-consumer", handler)
        info = await bus.js.consumer_info("CCMSEC", "limit-consumer")
    finally:
        await bus.close()
    assert info.config.ack_wait == bus_mod.ACK_WAIT
    assert info.config.max_deliver == bus_mod.MAX_DELIVER
    assert bus_mod.WORK_LIMIT == 30 * info.config.ack_wait

"""A bus that heals (issue 9 §4, BUS-5): the stream or a consumer disappears — deleted by someone,
or NATS restarted without its store — and a running service recreates or rebinds it; until then
gRPC health answers NOT_SERVING with the reason (DEGRADED), `Status` says "degraded", and the
container healthcheck fails with the reason. Events published afterwards are handled again, and
one published while the consumer was gone is not lost.

A real keymanager process (the smallest service: only the built-in subscriptions) against a real
nats-server with the users `ccmsec up` renders (BUS-1).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError

from ccmsec.cluster.pki import issue_client_identity, issue_service_identity, nats_admin_seed_path
from ccmsec.runtime.bus import STREAM, EventBus, make_event
from ccmsec.runtime.grpcio import health_detail, secure_channel
from ccmsec.runtime.identity import load_identity
from ccmsec_proto import common_pb2, events_pb2, keymanager_pb2_grpc
from tests.conftest import free_port, start_secured_nats, stop_process

pytestmark = pytest.mark.timeout(180)

HOST = "127.0.0.1"
CHECK = "0.3"


class Lab:
    def __init__(self, data, url, nats_proc, port, proc, log):
        self.data, self.url, self.nats_proc, self.port, self.proc, self.log = data, url, nats_proc, port, proc, log
        self.cli = load_identity(data / "identities" / "clients" / "cli")
        self.folders = [data / "identities" / "services" / "keymanager", data / "identities" / "clients" / "cli"]

    async def health(self) -> tuple[str, str]:
        try:
            return await health_detail(self.cli, HOST, self.port, "keymanager", timeout=2)
        except Exception as exc:  # the service itself is gone: a failure of the test
            return "UNREACHABLE", str(exc)

    async def status(self):
        async with secure_channel(self.cli, HOST, self.port, "keymanager") as ch:
            return await keymanager_pb2_grpc.KeyManagerStub(ch).Status(common_pb2.Empty(), timeout=3)

    def operator(self) -> EventBus:
        return EventBus(self.url, "operator", seed=nats_admin_seed_path(self.data).read_bytes().strip(),
                        connect_timeout=10)

    async def publish_reset(self) -> events_pb2.Event:
        bus = EventBus.for_cli(self.data, self.url, "test-cli", connect_timeout=10)
        await bus.connect()
        try:
            event = make_event("device.reset", "cli", device_reset=events_pb2.DeviceReset(
                devices=["SEP0000000B5001"], kind=events_pb2.RESET, rule="RST-1"))
            for _ in range(50):  # the stream may be a moment from being back
                try:
                    await bus.publish(event)
                    return event
                except Exception:
                    await asyncio.sleep(0.2)
            raise AssertionError("could not publish a reset")
        finally:
            await bus.close()

    async def handled(self, event, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while (await self.status()).details.get("last_event_id") != event.id:
            assert time.monotonic() < deadline, f"event {event.id} not handled; log:\n{self.log_text()[-3000:]}"
            await asyncio.sleep(0.1)

    async def watch(self, until, timeout: float = 20.0) -> list[tuple[str, str]]:
        """Health answers, polled, until `until(answers)`; returns every answer seen."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            answer = await self.health()
            if not seen or seen[-1] != answer:
                seen.append(answer)
            if until(seen):
                return seen
            assert time.monotonic() < deadline, f"health answers {seen}; log:\n{self.log_text()[-3000:]}"
            await asyncio.sleep(0.05)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _degraded_then_serving(seen) -> bool:
    states = [s for s, _ in seen]
    return "DEGRADED" in states and states[-1] == "SERVING" and states.index("DEGRADED") < len(states) - 1


@pytest.fixture
def lab(tmp_path):
    issue_service_identity(tmp_path, "keymanager", "keymanager", HOST)
    issue_client_identity(tmp_path, "cli")
    folders = [tmp_path / "identities" / "services" / "keymanager", tmp_path / "identities" / "clients" / "cli"]
    url, nats_proc = start_secured_nats(tmp_path, folders, tmp_path / "js")
    port = free_port()
    env = {**os.environ, "CCMSEC_SERVICE": "keymanager", "CCMSEC_DATA_DIR": str(tmp_path),
           "CCMSEC_HOST": HOST, "CCMSEC_GRPC_PORT": str(port), "CCMSEC_METRICS_PORT": "0",
           "CCMSEC_NATS_URL": url, "CCMSEC_BUS_CHECK_INTERVAL": CHECK, "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "keymanager.log"
    log = open(log_path, "w+")
    proc = subprocess.Popen([sys.executable, "-m", "ccmsec_keymanager"], env=env, stdout=log, stderr=log)
    the_lab = Lab(tmp_path, url, nats_proc, port, proc, log_path)
    try:
        deadline = time.monotonic() + 120  # a loaded machine takes 20 s just to import
        while '"msg": "serving"' not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "keymanager did not start"
            time.sleep(0.05)
        yield the_lab
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
        stop_process(the_lab.nats_proc)


async def test_stream_deleted_is_recreated_and_degraded_meanwhile_BUS_5(lab):
    """BUS-5 / issue 9: "delete the CCMSEC stream … after which resets were silently lost and
    `ccmsec status` still said SERVING" — now the service says DEGRADED with the reason, recreates
    the stream, rebinds its consumers and handles the next reset."""
    assert (await lab.health()) == ("SERVING", "")
    operator = lab.operator()
    await operator.connect()
    try:
        await operator.js.delete_stream(STREAM)
        seen = await lab.watch(_degraded_then_serving)
        assert (await operator.js.stream_info(STREAM)).config.name == STREAM
    finally:
        await operator.close()
    reasons = [r for s, r in seen if s == "DEGRADED"]
    assert any(f"event stream {STREAM} was missing (recreated)" in r for r in reasons), seen
    await lab.handled(await lab.publish_reset())
    assert "DEGRADED" in lab.log_text() and f"SERVING again (was DEGRADED: event stream {STREAM} was missing" in lab.log_text()


async def test_a_stream_that_cannot_be_recreated_keeps_it_degraded_with_the_reason_BUS_5(lab):
    """BUS-5: while the stream cannot be recreated (another stream holds its subjects), health says
    DEGRADED and why, `Status` says "degraded", the container healthcheck fails with the reason;
    once the way is free the service heals and resets flow again."""
    operator = lab.operator()
    await operator.connect()
    try:
        await operator.js.delete_stream(STREAM)
        await operator.js.add_stream(StreamConfig(name="SQUAT", subjects=["ccmsec.>"]))
        seen = await lab.watch(lambda s: s[-1][0] == "DEGRADED" and "cannot create stream" in s[-1][1])
        await asyncio.sleep(1.0)   # several checks later: still DEGRADED, never SERVING
        state, reason = await lab.health()
        assert state == "DEGRADED" and f"event stream {STREAM} missing" in reason, (state, reason)
        status = await lab.status()
        assert status.state == "degraded" and "cannot create stream" in status.details["degraded"]
        env = {**os.environ, "CCMSEC_SERVICE": "keymanager", "CCMSEC_DATA_DIR": str(lab.data),
               "CCMSEC_HOST": HOST, "CCMSEC_GRPC_PORT": str(lab.port)}
        probe = subprocess.run([sys.executable, "-m", "ccmsec.runtime.healthcheck"], env=env,
                               capture_output=True, text=True, timeout=30)
        assert probe.returncode == 1 and "DEGRADED" in probe.stdout and STREAM in probe.stdout, probe.stdout
        await operator.js.delete_stream("SQUAT")
        await lab.watch(lambda s: s[-1][0] == "SERVING")
    finally:
        await operator.close()
    assert all(s != "SERVING" for s, _ in seen[1:])
    await lab.handled(await lab.publish_reset())


async def test_a_deleted_consumer_is_rebound_and_no_event_is_lost_BUS_5(lab):
    """BUS-5: a durable consumer deleted by someone is created again from the moment it was last
    seen: a reset published while it was gone is still handled, once."""
    operator = lab.operator()
    await operator.connect()
    try:
        await operator.js.delete_consumer(STREAM, "keymanager-device-reset")
        with pytest.raises(NotFoundError):
            await operator.js.consumer_info(STREAM, "keymanager-device-reset")
        during = await lab.publish_reset()        # before the service noticed
        await lab.watch(_degraded_then_serving)
        assert (await operator.js.consumer_info(STREAM, "keymanager-device-reset")).name
    finally:
        await operator.close()
    await lab.handled(during)
    handled_before = int((await lab.status()).details["events_handled"])
    after = await lab.publish_reset()
    await lab.handled(after)
    assert int((await lab.status()).details["events_handled"]) == handled_before + 1


async def test_nats_restarted_without_its_store_the_service_heals_BUS_5(lab, tmp_path):
    """BUS-5: NATS comes back empty (no stream, no consumers): DEGRADED while it is away and until
    the stream and consumers are back, then resets are handled again."""
    port = int(lab.url.rsplit(":", 1)[1])
    stop_process(lab.nats_proc)
    await lab.watch(lambda s: s[-1][0] == "DEGRADED" and "unreachable" in s[-1][1])
    url, lab.nats_proc = start_secured_nats(lab.data, lab.folders, tmp_path / "js-empty", port=port)
    assert url == lab.url
    await lab.watch(lambda s: s[-1][0] == "SERVING", timeout=30)
    await lab.handled(await lab.publish_reset())


async def test_a_stream_that_would_lose_events_is_reported_not_trusted_BUS_5(lab):
    """BUS-5: the stream exists but keeps one message (made or changed by someone while ours was
    missing): no service may fix it (BUS-4), so each says DEGRADED naming what differs until the bus
    operator restores it."""
    from ccmsec.runtime.bus import stream_config

    operator = lab.operator()
    await operator.connect()
    try:
        config = stream_config()
        config.max_msgs = 1
        await operator.js.update_stream(config)
        seen = await lab.watch(lambda s: s[-1][0] == "DEGRADED")
        assert "configured differently (max_msgs 1, not -1)" in seen[-1][1], seen
        assert "the bus operator must restore it" in seen[-1][1]
        await operator.js.update_stream(stream_config())
        await lab.watch(lambda s: s[-1][0] == "SERVING")
    finally:
        await operator.close()
    await lab.handled(await lab.publish_reset())

"""BUS-5: the bus watchdog outlives a failed health update.

The watchdog is the only thing that turns a lost stream into DEGRADED (and back); if one health
update raised and the loop died, the service would say SERVING for ever while its events were lost.
The failure is injected at the health-update boundary (a real gRPC health servicer does not fail on
demand); the bus answers are scripted, as a lost and then recreated stream would give them.
"""

from __future__ import annotations

import asyncio

import pytest

from ccmsec.runtime.service import Service
from ccmsec.runtime.settings import ServiceSettings

pytestmark = pytest.mark.timeout(30)


class ScriptedBus:
    def __init__(self, answers):
        self.answers = list(answers)

    async def check(self) -> str:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


class FlakyHealth:
    """Fails the first update, records the others."""

    def __init__(self):
        self.calls = 0
        self.shown: list[str] = []

    async def set_degraded(self, reason: str) -> None:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("health servicer busy")
        self.shown.append(reason)


class Keymanager(Service):
    role = "keymanager"


async def test_watchdog_survives_a_failed_health_update_and_retries_it_BUS_5(tmp_path, caplog):
    svc = Keymanager(ServiceSettings(service="keymanager", data_dir=tmp_path, bus_check_interval=0.1))
    lost = "event stream CCMSEC missing: subjects held by SQUAT"
    svc.bus = ScriptedBus([lost, lost, lost, ""])
    svc.grpc = health = FlakyHealth()
    task = asyncio.create_task(svc._watch_bus())
    try:
        for _ in range(100):
            if health.shown[-1:] == [""]:
                break
            await asyncio.sleep(0.05)
    finally:
        svc._stop.set()
        await asyncio.wait_for(task, 5)
    # The first DEGRADED update failed; the next check shows it, and the healed bus shows SERVING.
    assert health.shown == [lost, ""], health.shown
    assert svc.degraded == ""
    assert "could not update health" in caplog.text


async def test_a_failed_update_is_not_recorded_as_shown_BUS_5(tmp_path):
    svc = Keymanager(ServiceSettings(service="keymanager", data_dir=tmp_path))
    svc.grpc = FlakyHealth()
    with pytest.raises(RuntimeError):
        await svc._set_degraded("stream gone")
    assert svc.degraded == ""  # so the next check tries the update again
    await svc._set_degraded("stream gone")
    assert svc.degraded == "stream gone" and svc.grpc.shown == ["stream gone"]

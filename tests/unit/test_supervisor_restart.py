"""The local supervisor keeps restarting a crashed service even when one start fails."""

from __future__ import annotations

import asyncio
import sys
from types import SimpleNamespace

import pytest

from ccmsec.cluster import supervisor as supervisor_mod
from ccmsec.cluster.supervisor import Child, Supervisor

pytestmark = pytest.mark.timeout(60)


async def test_a_start_that_fails_is_tried_again_not_the_end_of_the_watcher(tmp_path, monkeypatch):
    """A restart whose start raised (fork refused, the log file unwritable) ended the watcher task:
    the service stayed down for good, 'restarting', and nothing was logged."""
    monkeypatch.setattr(supervisor_mod, "BACKOFF_MAX", 0.2)
    cluster = SimpleNamespace(data_dir=tmp_path, base="127.1.1.0", nats_url="nats://127.1.1.1:4222")
    sup = Supervisor(cluster)
    child = Child("keymanager", [sys.executable, "-c", "import sys; sys.exit(1)"], {},
                  tmp_path / "keymanager.log")
    child.backoff = 0.05
    sup.children["keymanager"] = child
    await child.start()
    real_start = Child.start
    attempts = []

    async def start_failing_once(self):
        attempts.append(len(attempts))
        if len(attempts) == 1:
            raise OSError(11, "Resource temporarily unavailable")
        # then a process that stays up until the test stops it
        self.argv = [sys.executable, "-c", "import time; time.sleep(60)"]
        await real_start(self)

    monkeypatch.setattr(Child, "start", start_failing_once)
    watcher = asyncio.create_task(sup._watch(child))
    try:
        for _ in range(200):
            if child.proc.returncode is None and len(attempts) >= 2:
                break
            await asyncio.sleep(0.05)
        assert not watcher.done(), watcher.exception() if watcher.done() else None
        assert len(attempts) == 2 and child.proc.returncode is None
        assert child.state == "running"
    finally:
        sup.stopping = True
        sup._stop.set()
        if child.proc.returncode is None:
            child.proc.kill()
            await child.proc.wait()
        await asyncio.wait_for(watcher, 5)


async def test_a_service_asking_for_a_restart_as_soon_as_it_starts_is_not_restarted_in_a_tight_loop(
        tmp_path, monkeypatch):
    """Exit 75 (restart on request) was honoured at once, however soon after the start it came:
    a service asking again as it starts was started again and again with no pause at all."""
    from ccmsec.runtime.service import RESTART_EXIT_CODE

    cluster = SimpleNamespace(data_dir=tmp_path, base="127.1.1.0", nats_url="nats://127.1.1.1:4222")
    sup = Supervisor(cluster)
    child = Child("capf", [sys.executable, "-c", f"import sys; sys.exit({RESTART_EXIT_CODE})"], {},
                  tmp_path / "capf.log")
    sup.children["capf"] = child
    await child.start()
    watcher = asyncio.create_task(sup._watch(child))
    try:
        await asyncio.sleep(3.0)
        assert child.restarts <= 4, child.restarts   # back-off 0.5, 1, 2 s: not a restart per exit
        assert child.restarts >= 1
    finally:
        sup.stopping = True
        sup._stop.set()
        await asyncio.wait_for(watcher, 10)
        if child.proc.returncode is None:
            child.proc.kill()
            await child.proc.wait()

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
    """Exit 75 (restart on request) was honoured at once with no limit at all: a service asking
    again as it starts was started again and again with no pause. Now the rate limit holds it
    (RESTART_REQUESTS_MAX at once per window)."""
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
        assert child.restarts <= supervisor_mod.RESTART_REQUESTS_MAX + 1, child.restarts  # then it waits
        assert child.restarts >= 1
    finally:
        sup.stopping = True
        sup._stop.set()
        await asyncio.wait_for(watcher, 10)
        if child.proc.returncode is None:
            child.proc.kill()
            await child.proc.wait()


async def _exits_asking(tmp_path, name):
    from ccmsec.runtime.service import RESTART_EXIT_CODE

    cluster = SimpleNamespace(data_dir=tmp_path, base="127.1.1.0", nats_url="nats://127.1.1.1:4222")
    sup = Supervisor(cluster)
    child = Child(name, [sys.executable, "-I", "-S", "-c", f"import sys; sys.exit({RESTART_EXIT_CODE})"],
                  {}, tmp_path / f"{name}.log")
    sup.children[name] = child
    return sup, child


async def _stop(sup, child, watcher):
    sup.stopping = True
    sup._stop.set()
    await asyncio.wait_for(watcher, 10)
    if child.proc.returncode is None:
        child.proc.kill()
        await child.proc.wait()


async def test_a_requested_restart_soon_after_the_start_is_not_held_by_the_crash_back_off(tmp_path):
    """A restart request (service.restart, `ccmsec` restart) within 5 s of the start waited the crash
    back-off as if the service had crashed — after earlier crashes, up to BACKOFF_MAX. A request is
    done at once and leaves the crash back-off as it was."""
    sup, child = await _exits_asking(tmp_path, "ctl-provider")
    child.backoff = 30.0  # as after a run of crashes: the old code waited this long
    await child.start()
    watcher = asyncio.create_task(sup._watch(child))
    try:
        for _ in range(200):
            if child.restarts >= 2:
                break
            await asyncio.sleep(0.05)
        assert child.restarts >= 2, f"restarted {child.restarts} time(s) in 10 s"
        assert child.backoff == 30.0  # a request is no crash
    finally:
        await _stop(sup, child, watcher)


async def test_a_flood_of_restart_requests_is_rate_limited_and_logged(tmp_path, monkeypatch, caplog):
    """Requests are not unbounded: over RESTART_REQUESTS_MAX in the window the next waits until the
    oldest leaves the window, and the supervisor says so."""
    import logging

    monkeypatch.setattr(supervisor_mod, "RESTART_REQUESTS_MAX", 2)
    monkeypatch.setattr(supervisor_mod, "RESTART_REQUESTS_WINDOW", 30.0)
    sup, child = await _exits_asking(tmp_path, "capf")
    caplog.set_level(logging.WARNING, logger="ccmsec.supervisor")
    await child.start()
    watcher = asyncio.create_task(sup._watch(child))
    try:
        for _ in range(200):
            if child.restarts >= 3:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        assert child.restarts == 3, child.restarts   # two at once, the third waits ~30 s
        assert child.state == "restarting"
        limited = [r for r in caplog.records if r.getMessage().startswith("restart requests over the limit")]
        assert len(limited) == 1 and 25 < limited[0].delay <= 30, [vars(r) for r in limited]
        assert child.backoff == 0.5
    finally:
        await _stop(sup, child, watcher)


def test_request_delay_is_a_sliding_window(monkeypatch):
    monkeypatch.setattr(supervisor_mod, "RESTART_REQUESTS_MAX", 3)
    monkeypatch.setattr(supervisor_mod, "RESTART_REQUESTS_WINDOW", 60.0)
    child = Child("x", [], {}, None)
    assert [child.request_delay(t) for t in (0.0, 1.0, 2.0)] == [0.0, 0.0, 0.0]
    assert child.request_delay(3.0) == 57.0      # until the restart at 0 leaves the window
    assert child.request_delay(4.0) == 57.0      # at 61: the one at 1 left
    assert child.request_delay(200.0) == 0.0     # a quiet minute: at once again

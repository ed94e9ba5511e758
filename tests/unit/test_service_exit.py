"""A stopped service process exits even when a task left on its loop ignores cancellation (asyncio's
runner would wait for it for ever: a call-control node asked to restart by RST-3/RST-4 never did)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

SCRIPT = textwrap.dedent("""
    import asyncio, logging, sys
    from ccmsec.runtime import service
    from ccmsec.runtime.service import _run_then_end_stragglers
    service.STRAGGLER_GRACE = 0.5  # the stubborn task ignores every cancel: its length proves nothing

    class Stopped:
        log = logging.getLogger("svc")
        def __init__(self, stubborn): self.stubborn = stubborn
        async def run(self):
            async def stubborn():
                while True:
                    try:
                        await asyncio.sleep(3600)
                    except asyncio.CancelledError:
                        pass  # ignores every cancellation
            async def polite():
                await asyncio.sleep(3600)
            loop = asyncio.get_running_loop()
            loop.create_task(stubborn() if self.stubborn else polite(), name="leftover")
            await asyncio.sleep(0.05)
            return 3

    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s %(tasks)s")
    sys.exit(asyncio.run(_run_then_end_stragglers(Stopped(sys.argv[1] == "stubborn"))))
""")


def _run(kind: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    res = subprocess.run([sys.executable, "-c", SCRIPT, kind], capture_output=True, text=True, timeout=60)
    return res, time.monotonic() - started


def test_a_task_ignoring_cancellation_does_not_keep_a_stopped_service_alive():
    res, took = _run("stubborn")
    assert res.returncode == 3, res.stderr   # the service's own exit code
    assert took < 30
    assert "tasks ignored cancellation after the service stopped" in res.stderr and "leftover" in res.stderr


def test_leftover_tasks_that_end_when_cancelled_exit_normally():
    res, took = _run("polite")
    assert res.returncode == 3 and "ignored cancellation" not in res.stderr, res.stderr
    assert took < 20

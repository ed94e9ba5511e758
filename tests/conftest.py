"""Shared fixtures: a real NATS server on a free port, free loopback addresses, the ccmsec CLI."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def nats_binary() -> str:
    return str(Path(sys.executable).parent / "nats-server")


@pytest.fixture
def nats_server(tmp_path):
    """A real JetStream NATS server of our own on a free port; stopped by PID."""
    port = free_port()
    proc = subprocess.Popen([nats_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd",
                             str(tmp_path / "nats")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"nats://127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout}s")


def start_secured_nats(data: Path, folders, store: Path, port: int | None = None):
    """A real NATS server with the configuration `ccmsec up` renders (ccmsec.cluster.pki.nats_config):
    one nkey user per identity folder, the bus operator, no anonymous user. Returns (url, process)."""
    from ccmsec.cluster.pki import nats_config

    port = port or free_port()
    conf = data / f"nats-{port}.conf"
    conf.write_text(nats_config(data, folders, listen=f"127.0.0.1:{port}", store_dir=str(store),
                                server_name=f"test-{port}"))
    proc = subprocess.Popen([nats_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port("127.0.0.1", port)
    except RuntimeError:
        proc.kill()
        raise
    return f"nats://127.0.0.1:{port}", proc


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_cli(*args: str, timeout: float = 180, env: dict | None = None, input: str | None = None):
    """Run `ccmsec ARGS` as a user would; returns CompletedProcess with text output."""
    return subprocess.run([sys.executable, "-m", "ccmsec.cli.main", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})}, input=input)


# The chaos suite (tests/chaos) kills and stops services on purpose and takes minutes: `.ci/run`
# runs it as its own step (`CCMSEC_CHAOS=1 pytest tests/chaos`), never inside the default run.
collect_ignore = [] if os.environ.get("CCMSEC_CHAOS") == "1" else ["chaos"]
# `pip install .` into fresh virtual environments (tests/install) downloads every dependency:
# `.ci/run` runs it as its own step through scripts/test-install, once per supported Python.
if os.environ.get("CCMSEC_INSTALL_TEST") != "1":
    collect_ignore.append("install")
# The whole-cluster tests (tests/e2e) take about 8 of the suite's minutes: `.ci/run` runs them as
# their own step (`CCMSEC_E2E=1`) so that the default run stays under 15 minutes. A path named on
# the command line (`pytest tests/e2e/test_calls.py`) is always collected.
if os.environ.get("CCMSEC_E2E") != "1":
    collect_ignore.append("e2e")
# A smoke run of every benchmark (tests/bench, a few minutes): its own step of `.ci/run`
# (`CCMSEC_BENCH=1`).
if os.environ.get("CCMSEC_BENCH") != "1":
    collect_ignore.append("bench")


# -- a task that ignores cancellation fails its test instead of hanging the run -------------------
# pytest-asyncio closes each test's loop through asyncio.Runner, which cancels the tasks left over
# and waits for them without a bound: one task that swallows its cancellation hangs the suite
# until the per-test timeout, with no word of which task it was. Bounded here, and named.
import asyncio.runners as _runners  # noqa: E402
import io  # noqa: E402

TASK_CANCEL_GRACE = 30.0


def _cancel_all_tasks_bounded(loop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.wait(tasks, timeout=TASK_CANCEL_GRACE))
    stuck = [t for t in tasks if not t.done()]
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler({"message": "unhandled exception during test loop shutdown",
                                         "exception": task.exception(), "task": task})
    if stuck:
        report = io.StringIO()
        for task in stuck:
            task.print_stack(file=report)
        sys.stderr.write(report.getvalue())
        raise RuntimeError(f"{len(stuck)} task(s) ignored cancellation for {TASK_CANCEL_GRACE:.0f} s "
                           f"at the end of the test: {', '.join(t.get_name() for t in stuck)}\n"
                           + report.getvalue())


_runners._cancel_all_tasks = _cancel_all_tasks_bounded

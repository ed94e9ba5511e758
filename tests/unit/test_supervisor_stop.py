"""The local supervisor's stop: phone-sim's final save of phones.json is not cut by the kill that
ends the other services (CCMSEC_PHONE_STORE_SAVE_LIMIT, docs/phones.md)."""

from __future__ import annotations

import asyncio
import sys
from types import SimpleNamespace

import pytest

from ccmsec.cluster import supervisor as supervisor_mod
from ccmsec.cluster.supervisor import Child, Supervisor

pytestmark = pytest.mark.timeout(60)

# Exits 0 a while after SIGTERM (a final save still writing), leaving a mark that it finished.
SLOW_STOP = ("import signal, sys, time, pathlib\n"
             "def stop(*_):\n"
             "    time.sleep(2.0); pathlib.Path(sys.argv[1]).write_text('saved'); sys.exit(0)\n"
             "signal.signal(signal.SIGTERM, stop)\n"
             "print('ready', flush=True)\n"
             "time.sleep(60)\n")


async def _ready(child: Child) -> None:
    for _ in range(200):
        if child.log_path.exists() and b"ready" in child.log_path.read_bytes():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{child.name} did not start")


async def test_phone_sim_final_save_is_not_killed_with_the_other_services(tmp_path, monkeypatch):
    """The supervisor killed every service still running STOP_TIMEOUT (8 s) after SIGTERM, so
    phone-sim's final save — which the service lets run up to CCMSEC_PHONE_STORE_SAVE_LIMIT (120 s)
    — was cut for a large fleet and its phones' latest changes lost. phone-sim now has that limit
    (plus its shutdown steps) to stop; another service is still killed at STOP_TIMEOUT."""
    monkeypatch.setattr(supervisor_mod, "STOP_TIMEOUT", 0.5)
    sup = Supervisor(SimpleNamespace(data_dir=tmp_path, base="127.1.1.0", nats_url="nats://127.1.1.1:4222"))
    saved = tmp_path / "saved"
    phone_sim = Child("phone-sim", [sys.executable, "-c", SLOW_STOP, str(saved)],
                      {"CCMSEC_SERVICE": "phone-sim", "CCMSEC_SHUTDOWN_GRACE": "0",
                       "CCMSEC_PHONE_STORE_SAVE_LIMIT": "10"}, tmp_path / "phone-sim.log")
    other = Child("keymanager", [sys.executable, "-c", SLOW_STOP, str(tmp_path / "other")],
                  {"CCMSEC_SERVICE": "keymanager"}, tmp_path / "keymanager.log")
    for child in (phone_sim, other):
        sup.children[child.name] = child
        await child.start()
        await _ready(child)
    await sup._stop_all()
    assert phone_sim.proc.returncode == 0 and saved.read_text() == "saved"
    assert other.proc.returncode == -9   # the others are not held for phone-sim's save
    assert phone_sim.stop_timeout() == 0.5 + 1.0 + 10 and other.stop_timeout() == 0.5


def test_phone_sim_stop_budget_from_its_settings_or_their_defaults(tmp_path):
    """A value phone-sim refuses at start (it stops at once then) gives the defaults."""
    env = {"CCMSEC_SERVICE": "phone-sim"}
    default = supervisor_mod.STOP_TIMEOUT + 2 * (4.0 + 0.5) + 120.0
    assert Child("phone-sim", [], env, None).stop_timeout() == default
    for bad in ("abc", "-1", "nan", "1e9"):
        child = Child("phone-sim", [], {**env, "CCMSEC_PHONE_STORE_SAVE_LIMIT": bad}, None)
        assert child.stop_timeout() == default, bad
    sup = Supervisor(SimpleNamespace(data_dir=tmp_path, base="", nats_url=""))
    sup.children = {"nats": Child("nats", [], {}, None), "phone-sim": Child("phone-sim", [], env, None)}
    assert sup.stop_timeout() == default + supervisor_mod.STOP_TIMEOUT   # what `ccmsec down` waits


def test_down_waits_for_the_supervisors_own_stop_budget(tmp_path, monkeypatch):
    """`ccmsec down` killed every cluster process still there 20 s after it asked the supervisor
    to stop — phone-sim's final save with them. It now waits as long as the supervisor said its
    stop may take (`stop_timeout` in run/state.json) when that is longer."""
    import os
    import subprocess

    from ccmsec.cluster import runner
    from ccmsec.cluster.state import write_state

    monkeypatch.setattr(runner, "DOWN_TIMEOUT", 0.5)
    saved = tmp_path / "saved"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_STOP, str(saved)], stdout=subprocess.PIPE,
                            env={**os.environ, "CCMSEC_CLUSTER_DIR": str(tmp_path.resolve())})
    try:
        assert proc.stdout.readline().strip() == b"ready"
        write_state(tmp_path, {"supervisor_pid": proc.pid, "children": {}, "stop_timeout": 6.0})
        reaper = __import__("threading").Thread(target=proc.wait, daemon=True)
        reaper.start()   # reaped as it exits (a zombie counts as gone)
        runner.down(tmp_path, quiet=True)
        reaper.join(5)
        assert saved.read_text() == "saved" and proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

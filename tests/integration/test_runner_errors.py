"""Bad input to the local runner and to a service's settings gets one clear line, not a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from ccmsec.cluster.topology import NATS_PORT, local_cluster
from ccmsec.runtime.identity import service_identity
from tests.conftest import run_cli


def test_port_in_use_is_named(tmp_path):
    cluster = local_cluster(tmp_path)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((cluster.nats_host, NATS_PORT))
        s.listen()
        res = run_cli("up", "-d", "--data", str(tmp_path), timeout=60)
    assert res.returncode != 0
    assert f"{cluster.nats_host}:{NATS_PORT}" in res.stderr and "already in use" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "run" / "state.json").exists(), "nothing may be started"


def test_unusable_data_dir_is_refused(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    res = run_cli("up", "-d", "--data", str(blocker / "data"), timeout=60)
    assert res.returncode != 0
    assert "data directory" in res.stderr and "Traceback" not in res.stderr


def test_read_only_data_dir_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        # root ignores permission bits; a read-only bind is not available, so use /proc (read-only fs)
        target = "/proc/ccmsec-test-data"
    else:
        ro.chmod(0o500)
        target = str(ro / "data")
    res = run_cli("up", "-d", "--data", target, timeout=60)
    assert res.returncode != 0
    assert "data directory" in res.stderr and "Traceback" not in res.stderr


def test_status_and_down_without_cluster(tmp_path):
    res = run_cli("status", "--data", str(tmp_path))
    assert res.returncode != 0 and "no cluster" in res.stderr
    res = run_cli("down", "--data", str(tmp_path))
    assert res.returncode == 0 and "no cluster running" in res.stdout


def test_bad_service_settings_give_clear_errors(tmp_path):
    env = {**os.environ, "CCMSEC_SERVICE": "keymanager", "CCMSEC_DATA_DIR": str(tmp_path),
           "CCMSEC_GRPC_PORT": "not-a-port", "CCMSEC_HOST": "localhost-ish"}
    res = subprocess.run([sys.executable, "-m", "ccmsec_keymanager"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2
    assert "CCMSEC_GRPC_PORT" in res.stderr and "CCMSEC_HOST" in res.stderr
    assert "Traceback" not in res.stderr


def test_unknown_role_and_missing_data_dir(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCMSEC_")}
    env["CCMSEC_SERVICE"] = "pbx"
    res = subprocess.run([sys.executable, "-m", "ccmsec_keymanager"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2
    assert "unknown role" in res.stderr and "CCMSEC_DATA_DIR" in res.stderr


def test_unreachable_nats_is_a_clear_error(tmp_path):
    env = {**os.environ, "CCMSEC_SERVICE": "keymanager", "CCMSEC_DATA_DIR": str(tmp_path),
           "CCMSEC_HOST": "127.0.0.1", "CCMSEC_GRPC_PORT": "1", "CCMSEC_METRICS_PORT": "0",
           "CCMSEC_NATS_URL": "nats://127.0.0.1:1"}
    env["CCMSEC_BUS_CONNECT_TIMEOUT"] = "1"
    service_identity(tmp_path, "keymanager", "keymanager", "127.0.0.1")
    res = subprocess.run([sys.executable, "-m", "ccmsec_keymanager"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 1
    assert "cannot reach NATS" in res.stderr and "Traceback" not in res.stderr


def test_a_service_without_its_identity_refuses_to_start_and_issues_none(tmp_path):
    """A service never issues its own certificate (nor opens a CA key): without the identity the
    runner gives it, it stops with one clear line."""
    env = {**os.environ, "CCMSEC_SERVICE": "keymanager", "CCMSEC_DATA_DIR": str(tmp_path),
           "CCMSEC_HOST": "127.0.0.1", "CCMSEC_GRPC_PORT": "1", "CCMSEC_METRICS_PORT": "0",
           "CCMSEC_NATS_URL": "nats://127.0.0.1:1", "CCMSEC_BUS_CONNECT_TIMEOUT": "1"}
    res = subprocess.run([sys.executable, "-m", "ccmsec_keymanager"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 1
    assert "no identity in" in res.stderr and "ccmsec pki issue" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "pki").exists() and not (tmp_path / "identities").exists()

"""`python -m ccmsec.runtime.healthcheck` against a real running service (keymanager) over mTLS."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time

import pytest

from ccmsec.runtime.identity import service_identity
from tests.conftest import free_port, nats_binary


def _host() -> str:
    return f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(256)}.{secrets.randbelow(250) + 2}"


def _env(data_dir, host: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCMSEC_")}
    # Let child processes cache byte code: compiling grpc and SQLAlchemy anew in every
    # healthcheck would cost seconds each.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(CCMSEC_SERVICE="keymanager", CCMSEC_DATA_DIR=str(data_dir), CCMSEC_HOST=host, **extra)
    return env


def _healthcheck(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ccmsec.runtime.healthcheck"], env=env,
                          capture_output=True, text=True, timeout=15)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for_port(host: str, port: int, proc: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection((host, port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port}")


@pytest.fixture(scope="module")
def keymanager(tmp_path_factory):
    """NATS and a real keymanager process of our own on a unique loopback address; both stopped by PID.

    Shared by the tests of this module; the last test stops the service."""
    tmp = tmp_path_factory.mktemp("healthcheck-live")
    host = _host()
    nats_port = free_port(host)
    nats = subprocess.Popen([nats_binary(), "-a", host, "-p", str(nats_port), "-js", "-sd", str(tmp / "nats")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = _env(tmp / "data", host, CCMSEC_NATS_URL=f"nats://{host}:{nats_port}",
               CCMSEC_METRICS_PORT=str(free_port(host)), CCMSEC_SHUTDOWN_GRACE="1")
    service_identity(tmp / "data", "keymanager", "keymanager", host)  # what the runner does before start
    log = open(tmp / "keymanager.log", "w+")
    proc = None
    try:
        _wait_for_port(host, nats_port, nats, 10)
        proc = subprocess.Popen([sys.executable, "-m", "ccmsec_keymanager"], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for_port(host, 50051, proc, 20)  # gRPC is bound just before the service turns SERVING
        except RuntimeError as exc:
            log.seek(0)
            pytest.fail(f"keymanager did not start: {exc}\n{log.read()[-2000:]}")
        deadline = time.monotonic() + 10
        while (result := _healthcheck(env)).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"keymanager did not serve: {result.stdout.strip()}\n{log.read()[-2000:]}")
            time.sleep(0.2)
        yield proc, env, host
    finally:
        if proc is not None:
            _stop(proc)
        _stop(nats)
        log.close()


def test_healthcheck_exits_0_with_one_line_when_the_service_serves(keymanager):
    _, env, host = keymanager
    result = _healthcheck(env)
    assert result.returncode == 0
    assert result.stdout == f"healthy: keymanager (keymanager) at {host}:50051: SERVING\n"


def test_healthcheck_from_another_cluster_ca_is_refused_by_mtls(keymanager, tmp_path):
    """A client certificate from a different CA cannot even complete the TLS handshake."""
    _, env, host = keymanager
    stranger = tmp_path / "other-cluster"
    service_identity(stranger, "keymanager", "keymanager", host)
    result = _healthcheck({**env, "CCMSEC_DATA_DIR": str(stranger)})
    assert result.returncode == 1
    assert result.stdout.startswith(f"unhealthy: keymanager (keymanager) at {host}:50051: UNAVAILABLE")
    assert "handshake" in result.stdout.lower() and result.stdout.count("\n") == 1


def test_healthcheck_expects_the_server_certificate_of_the_role(keymanager):
    """Asked as if the port belonged to capf, the keymanager's certificate does not match."""
    _, env, host = keymanager
    folder = env["CCMSEC_DATA_DIR"] + "/identities/services/keymanager"
    result = _healthcheck({**env, "CCMSEC_SERVICE": "capf", "CCMSEC_IDENTITY_DIR": folder})
    assert result.returncode == 1 and result.stdout.startswith("unhealthy: capf (capf)")
    assert "verif" in result.stdout.lower()  # the name check failed, not the connection


def test_healthcheck_exits_1_with_a_clear_line_when_nothing_listens(tmp_path):
    host = _host()
    service_identity(tmp_path, "keymanager", "keymanager", host)
    started = time.monotonic()
    result = _healthcheck(_env(tmp_path, host, CCMSEC_GRPC_PORT=str(free_port(host))))
    assert time.monotonic() - started < 10
    assert result.returncode == 1
    assert result.stdout.startswith(f"unhealthy: keymanager (keymanager) at {host}:")
    assert "UNAVAILABLE" in result.stdout and result.stdout.count("\n") == 1


# Last: it stops the shared service.
def test_healthcheck_turns_unhealthy_after_the_service_stops(keymanager):
    proc, env, _ = keymanager
    _stop(proc)
    assert proc.returncode == 0  # SIGTERM is a clean stop
    result = _healthcheck(env)
    assert result.returncode == 1 and "UNAVAILABLE" in result.stdout

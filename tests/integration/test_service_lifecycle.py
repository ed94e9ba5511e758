"""A service process under the runtime: SERVING, then SIGTERM finishes cleanly within 5 s."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

from ccmsec.runtime.grpcio import check_health
from ccmsec.runtime.identity import client_identity, service_identity
from tests.conftest import free_port


def test_sigterm_shuts_down_cleanly_within_five_seconds(tmp_path, nats_server):
    host = "127.77.0.6"
    env = {**os.environ, "CCMSEC_SERVICE": "keymanager", "CCMSEC_DATA_DIR": str(tmp_path),
           "CCMSEC_HOST": host, "CCMSEC_GRPC_PORT": str(free_port(host)), "CCMSEC_METRICS_PORT": "0",
           "CCMSEC_NATS_URL": nats_server}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    service_identity(tmp_path, "keymanager", "keymanager", host)  # issued before start, as the runner does
    log = open(tmp_path / "svc.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "ccmsec_keymanager"], env=env, stdout=log, stderr=log)
    try:
        ident = client_identity(tmp_path)
        deadline = time.monotonic() + 60
        state = None
        while time.monotonic() < deadline:
            try:
                state = asyncio.run(check_health(ident, host, int(env["CCMSEC_GRPC_PORT"]), "keymanager", 1))
                if state == "SERVING":
                    break
            except Exception:
                time.sleep(0.2)
        assert state == "SERVING", (tmp_path / "svc.log").read_text()[-2000:]
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    text = (tmp_path / "svc.log").read_text()
    assert code == 0, text[-2000:]
    assert took < 5.0, f"shutdown took {took:.1f}s"
    assert '"msg": "stopped"' in text and "Traceback" not in text

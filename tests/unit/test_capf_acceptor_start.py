"""A CAPF acceptor process (`python -m ccmsec_capf.acceptor`) that cannot start says why as the
service's own JSON log records — set up before anything else — with no traceback and without
echoing its hand-over: a missing, malformed or incomplete hand-over (exit 2), a missing CAPF
certificate or a port it cannot bind (exit 1)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from ccmsec.pki.lsc import ensure_capf_ca
from ccmsec_capf.acceptor import ENV

SECRET = "s3cret-do-not-log"


def _cfg(tmp_path, fd: int, **changes) -> dict:
    cfg = {"fd": fd, "index": 3, "parent_pid": os.getpid(), "node": "capf", "host": "127.0.0.1", "port": 0,
           "pki_dir": str(tmp_path / "pki"), "capf_dir": str(tmp_path / "capf"), "manufacturer_ca": None,
           "key_dir": None, "log_level": "INFO", "handshake_timeout": 5.0, "idle_timeout": 5.0,
           "session_timeout": 5.0, "max_connections": 8, "max_per_source": 8,
           "config": {"refusal": None, "issuer_mode": "capf", "retry_delay": 600, "validity_days": 30}}
    cfg.update(changes)
    return cfg


def _run(env_value: str | None, pass_fds=()) -> tuple[int, list[dict], str]:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if env_value is not None:
        env[ENV] = env_value
    proc = subprocess.run([sys.executable, "-m", "ccmsec_capf.acceptor"], env=env, pass_fds=pass_fds,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON log record: {line!r}")
    return proc.returncode, records, proc.stderr


def _one_error(records: list[dict]) -> dict:
    assert len(records) == 1, records
    record = records[0]
    assert record["level"] == "error" and record["service"] == "capf" and record["logger"] == "ccmsec.capf"
    assert {"ts", "node", "msg"} <= set(record)
    return record


@pytest.mark.parametrize("value, reason", [
    (None, f"{ENV} is not set"),
    ('{"password": "%s", broken' % SECRET, f"{ENV} is not JSON"),
    (json.dumps(["a", SECRET]), "not a JSON object"),
    (json.dumps({"index": 0, "node": "capf", "token": SECRET}), f"{ENV} lacks fd, host, port"),
    (json.dumps({**dict.fromkeys(("fd", "index", "node", "host", "port", "pki_dir", "capf_dir",
                                  "handshake_timeout", "idle_timeout", "session_timeout",
                                  "max_connections", "max_per_source"), 1), "config": {}}),
     "validity_days missing"),
])
def test_a_bad_hand_over_is_one_json_error_record(value, reason):
    code, records, raw = _run(value)
    assert code == 2
    record = _one_error(records)
    assert record["msg"].startswith("CAPF acceptor: cannot start: ") and reason in record["msg"], record
    assert record["node"] == "capf/acceptor"
    assert SECRET not in raw


def test_a_bad_log_level_is_refused_before_logging_with_it(tmp_path):
    code, records, _ = _run(json.dumps(_cfg(tmp_path, 99, log_level="LOUD")))
    assert code == 2
    assert "log_level is not one of" in _one_error(records)["msg"]


def test_a_missing_capf_certificate_is_a_clear_start_error(tmp_path):
    ours, theirs = socket.socketpair()
    with ours, theirs:
        code, records, _ = _run(json.dumps(_cfg(tmp_path, theirs.fileno())), pass_fds=(theirs.fileno(),))
    assert code == 1
    record = _one_error(records)
    assert record["node"] == "capf/acceptor-3"
    assert record["msg"].startswith("CAPF acceptor 3: cannot start: ") and "capf.crt" in record["msg"], record


def test_a_port_it_cannot_bind_is_a_clear_start_error(tmp_path):
    ensure_capf_ca(tmp_path / "pki", key_kind="ec256")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))  # no SO_REUSEPORT: the acceptor cannot join it
    taken.listen()
    ours, theirs = socket.socketpair()
    with taken, ours, theirs:
        cfg = _cfg(tmp_path, theirs.fileno(), port=taken.getsockname()[1])
        code, records, _ = _run(json.dumps(cfg), pass_fds=(theirs.fileno(),))
    assert code == 1
    msg = _one_error(records)["msg"]
    assert msg.startswith("CAPF acceptor 3: cannot start: ") and "address already in use" in msg.lower(), msg

"""Logs (issue 16): a service process writes only JSON lines — its own records, stray prints, a
crash's traceback and native output written straight to file descriptor 2 (as gRPC core does) —
and the local runner's log files are rotated by size while a process keeps appending to them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from ccmsec.cluster import logrotate

CHILD = textwrap.dedent("""
    import logging, os, sys
    from ccmsec.runtime.logs import bind_trace_id, setup_logging
    setup_logging("keymanager", "km1", "INFO", capture=True)
    log = logging.getLogger("ccmsec.keymanager")
    with bind_trace_id("trace-123"):
        log.info("traced record", extra={"answer": 42})
    logging.getLogger("nats").warning("nats client: reconnecting")  # the NATS client's own output
    logging.getLogger("nats").info("nats client chatter")  # below WARNING: not written
    print("a stray print")
    print("a stray error line", file=sys.stderr)
    os.write(2, b"E0000 00:00:1764480000.000000   4242 ssl_transport_security.cc:1654] Handshake failed\\n")
    os.write(2, b"W1130 08:00:00.000000 4242 chttp2_transport.cc:12] keepalive\\n")
    os.write(2, b"some other native text\\n")
    os.write(2, b'{"already": "json", "from": "a pool worker"}\\n')
    raise RuntimeError("boom at the end")
""")


def test_every_line_a_service_process_writes_is_json(tmp_path):
    out = tmp_path / "svc.log"
    with open(out, "ab") as f:
        proc = subprocess.run([sys.executable, "-c", CHILD], stdout=f, stderr=f, timeout=60)
    assert proc.returncode == 1
    lines = out.read_text().splitlines()
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not JSON: {line!r}\n" + "\n".join(lines))
    by_msg = {r.get("msg"): r for r in records}
    traced = by_msg["traced record"]
    assert traced["trace_id"] == "trace-123" and traced["answer"] == 42 and traced["node"] == "km1"
    assert by_msg["a stray print"]["logger"] == "stdout"
    nats_line = by_msg["nats client: reconnecting"]
    assert nats_line["logger"] == "nats" and nats_line["level"] == "warning"
    assert "nats client chatter" not in by_msg
    assert by_msg["a stray error line"]["logger"] == "stderr"
    handshake = by_msg["Handshake failed"]
    assert handshake["logger"] == "grpc.core" and handshake["level"] == "error"
    assert handshake["source"] == "ssl_transport_security.cc:1654"
    assert by_msg["keepalive"]["level"] == "warning"
    assert by_msg["some other native text"]["logger"] == "native"
    assert {"already": "json", "from": "a pool worker"} in records  # passed on, not wrapped twice
    # the crash's traceback: every line of it kept, as JSON records
    crash = [r["msg"] for r in records if r.get("logger") == "stderr"]
    assert any("Traceback" in m for m in crash) and any("RuntimeError: boom at the end" in m for m in crash)
    assert all(r["service"] == "keymanager" for r in records if "service" in r)


WRITER = textwrap.dedent("""
    import os, sys, time
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    for i in range(int(sys.argv[2])):
        os.write(fd, b'{"n": %d, "pad": "%s"}\\n' % (i, b"x" * 200))
        if i % 50 == 0:
            time.sleep(0.01)
""")


def test_log_files_rotate_by_size_while_a_process_appends(tmp_path):
    path = tmp_path / "callmanager.log"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "4000"])
    rotations = 0
    try:
        deadline = time.monotonic() + 60
        while writer.poll() is None and time.monotonic() < deadline:
            rotations += len(logrotate.rotate_folder(tmp_path, 64 * 1024, 3))
            time.sleep(0.05)
        assert writer.wait(timeout=30) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    rotations += len(logrotate.rotate_folder(tmp_path, 64 * 1024, 3))
    assert rotations >= 3
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["callmanager.log", "callmanager.log.1", "callmanager.log.2", "callmanager.log.3"]
    for p in tmp_path.iterdir():
        data = p.read_bytes()
        assert b"\0" not in data, f"{p.name} has a hole (writer not in append mode?)"
        for line in data.splitlines():
            json.loads(line)  # whole lines only
    # the newest lines are in the live file and .1, in order
    live = [json.loads(x)["n"] for x in path.read_bytes().splitlines()]
    assert live == sorted(live) and (not live or live[-1] == 3999)
    assert path.stat().st_size <= 64 * 1024 or rotations  # small again after the last rotation


def test_rotation_settings_are_checked():
    assert logrotate.settings_from_env({}) == (logrotate.DEFAULT_MAX_BYTES, logrotate.DEFAULT_BACKUPS)
    assert logrotate.settings_from_env({"CCMSEC_LOG_MAX_BYTES": "0", "CCMSEC_LOG_BACKUPS": "2"}) == (0, 2)
    with pytest.raises(logrotate.RotationSettingsError, match="CCMSEC_LOG_MAX_BYTES"):
        logrotate.settings_from_env({"CCMSEC_LOG_MAX_BYTES": "ten"})
    with pytest.raises(logrotate.RotationSettingsError, match="CCMSEC_LOG_BACKUPS"):
        logrotate.settings_from_env({"CCMSEC_LOG_BACKUPS": "0"})


def test_nothing_rotates_below_the_limit_or_when_off(tmp_path):
    path = tmp_path / "a.log"
    path.write_bytes(b"x" * 100)
    assert logrotate.rotate_folder(tmp_path, 1000, 3) == []
    assert logrotate.rotate_folder(tmp_path, 0, 3) == []
    assert os.listdir(tmp_path) == ["a.log"]


def test_a_copy_that_ends_inside_a_line_keeps_whole_lines_only(tmp_path):
    """A read does not wait for a write in progress: the copy can end inside a line a writer was
    appending (seen once in a full run under load). The backup keeps whole lines; a file with no
    line end at all is kept whole rather than dropped."""
    path = tmp_path / "capf.log"
    path.write_bytes(b'{"n": 1}\n{"n": 2}\n{"n": 3, "pad": "xx')  # as the copy saw it, mid-write
    assert logrotate.rotate_if_large(path, 8, 3)
    assert (tmp_path / "capf.log.1").read_bytes() == b'{"n": 1}\n{"n": 2}\n'
    assert path.read_bytes() == b""
    path.write_bytes(b"x" * 100)  # one unterminated write
    assert logrotate.rotate_if_large(path, 8, 3)
    assert (tmp_path / "capf.log.1").read_bytes() == b"x" * 100
    assert (tmp_path / "capf.log.2").read_bytes() == b'{"n": 1}\n{"n": 2}\n'

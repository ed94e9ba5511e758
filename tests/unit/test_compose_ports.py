"""`ccmsec compose ports` (issue 13 item 3): before `docker-compose up`, every host port the env
file publishes is checked on the bind address; a taken one is named with its variable and a free
alternative, and `--fix` writes the alternatives into the env file. Real sockets hold the ports.
(tests/compose/test_cluster.py checks it against a running cluster's ports, and every cluster of the
compose suite after the first is made with `--fix` from a copy of the running one's env file.)"""

from __future__ import annotations

import re
import socket

import pytest

from ccmsec.cli.compose import port_is_free
from tests.conftest import run_cli


@pytest.fixture
def held():
    """A TCP listener and a bound UDP socket on loopback: ports another program holds."""
    tcp = socket.socket()
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    yield tcp.getsockname()[1], udp.getsockname()[1]
    tcp.close()
    udp.close()


def test_taken_ports_are_named_with_a_free_alternative(tmp_path, held):
    tcp, udp = held
    env = tmp_path / "second.env"
    env.write_text(f"COMPOSE_PROJECT_NAME=second\nCCMSEC_PUBLISH_CALLMANAGER_ADMIN={tcp}\n"
                   f"CCMSEC_PUBLISH_TFTP_SIGNER_TFTP={udp}\n")
    res = run_cli("compose", "ports", "--env-file", str(env))
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stdout + res.stderr
    found = dict(re.findall(r"(CCMSEC_PUBLISH_\w+)=\d+: 127\.0\.0\.1:\d+/\w+ is taken .*a free one: \1=(\d+)",
                            res.stderr))
    assert set(found) == {"CCMSEC_PUBLISH_CALLMANAGER_ADMIN", "CCMSEC_PUBLISH_TFTP_SIGNER_TFTP"}, res.stderr
    assert port_is_free("127.0.0.1", int(found["CCMSEC_PUBLISH_CALLMANAGER_ADMIN"]), "tcp")
    assert port_is_free("127.0.0.1", int(found["CCMSEC_PUBLISH_TFTP_SIGNER_TFTP"]), "udp")
    assert f"ccmsec compose ports --env-file {env} --fix" in res.stderr
    # the same numbers, once free, are accepted
    free = tmp_path / "free.env"
    free.write_text(f"CCMSEC_PUBLISH_CALLMANAGER_ADMIN={found['CCMSEC_PUBLISH_CALLMANAGER_ADMIN']}\n"
                    f"CCMSEC_PUBLISH_TFTP_SIGNER_TFTP={found['CCMSEC_PUBLISH_TFTP_SIGNER_TFTP']}\n")
    ok = run_cli("compose", "ports", "--env-file", str(free))
    assert ok.returncode == 0 and "are free on 127.0.0.1" in ok.stdout, ok.stdout + ok.stderr


def test_one_port_for_two_variables_is_refused_too(tmp_path):
    with socket.socket() as s:  # a port free now; both variables ask for it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = tmp_path / "twice.env"
    env.write_text(f"CCMSEC_PUBLISH_CALLMANAGER_ADMIN={port}\nCCMSEC_PUBLISH_CAPF_CAPF={port}\n")
    res = run_cli("compose", "ports", "--env-file", str(env))
    assert res.returncode == 1
    assert len(re.findall(r"a free one: CCMSEC_PUBLISH_\w+=\d+", res.stderr)) == 1, res.stderr


def test_fix_writes_free_ports_and_keeps_the_rest_of_the_file(tmp_path, held):
    tcp, _udp = held
    env = tmp_path / "second.env"
    env.write_text(f"# my cluster\nCOMPOSE_PROJECT_NAME=second\nCCMSEC_PUBLISH_CALLMANAGER_ADMIN={tcp}\n"
                   "CCMSEC_SCCP_KEEPALIVE=5\n")
    env.chmod(0o600)
    res = run_cli("compose", "ports", "--env-file", str(env), "--fix")
    assert res.returncode == 0, res.stdout + res.stderr
    text = env.read_text()
    new = int(re.search(r"^CCMSEC_PUBLISH_CALLMANAGER_ADMIN=(\d+)$", text, re.M).group(1))
    assert new != tcp and port_is_free("127.0.0.1", new, "tcp")
    assert text.startswith("# my cluster\nCOMPOSE_PROJECT_NAME=second\n") and "CCMSEC_SCCP_KEEPALIVE=5\n" in text
    assert f"CCMSEC_PUBLISH_CALLMANAGER_ADMIN: 127.0.0.1:{tcp}/tcp is taken; now {new}" in res.stdout
    assert env.stat().st_mode & 0o777 == 0o600
    again = run_cli("compose", "ports", "--env-file", str(env))
    assert again.returncode == 0, again.stderr


def test_a_profile_s_ports_only_when_asked(tmp_path, held):
    tcp, _udp = held
    env = tmp_path / "mon.env"
    env.write_text(f"CCMSEC_PUBLISH_PROMETHEUS={tcp}\n")
    assert run_cli("compose", "ports", "--env-file", str(env)).returncode == 0
    res = run_cli("compose", "ports", "--env-file", str(env), "--profile", "monitoring")
    assert res.returncode == 1 and "CCMSEC_PUBLISH_PROMETHEUS" in res.stderr


@pytest.mark.parametrize("content, message", [
    ("CCMSEC_PUBLISH_CALLMANAGER_ADMIN=http\n", "CCMSEC_PUBLISH_CALLMANAGER_ADMIN='http' is not a port number"),
    ("CCMSEC_PUBLISH_CALLMANAGER_ADMIN=70000\n", "is not a port number (1-65535)"),
    ("just words\n", "not a KEY=VALUE line"),
])
def test_bad_env_file_is_a_clear_error(tmp_path, content, message):
    env = tmp_path / "bad.env"
    env.write_text(content)
    res = run_cli("compose", "ports", "--env-file", str(env))
    assert res.returncode != 0 and message in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_a_missing_env_file_is_a_clear_error(tmp_path):
    res = run_cli("compose", "ports", "--env-file", str(tmp_path / "nope.env"))
    assert res.returncode != 0 and "nope.env: No such file or directory" in res.stderr
    assert "Traceback" not in res.stderr

"""The container healthcheck refuses clearly, in one line, when it cannot confirm SERVING."""

from __future__ import annotations

import os

import pytest

from ccmsec.runtime import healthcheck


@pytest.fixture
def service_env(monkeypatch, tmp_path):
    for key in [k for k in os.environ if k.startswith("CCMSEC_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("CCMSEC_SERVICE", "keymanager")
    monkeypatch.setenv("CCMSEC_DATA_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("bind, probe", [("0.0.0.0", "127.0.0.1"), ("::", "::1"),
                                         ("127.4.5.6", "127.4.5.6")])
def test_wildcard_bind_is_probed_over_loopback(bind, probe):
    assert healthcheck.probe_address(bind) == probe


def test_no_identity_yet_is_unhealthy_and_issues_none(service_env):
    code, line = healthcheck.run()
    folder = service_env / "identities" / "services" / "keymanager"
    assert code == 1
    assert line.startswith(f"unhealthy: keymanager: no identity in {folder} (missing tls.crt")
    assert "\n" not in line
    assert not (service_env / "pki").exists()  # the healthcheck never mints a CA of its own
    assert not folder.exists()


def test_missing_role_is_unhealthy_with_the_variable_named(service_env, monkeypatch):
    monkeypatch.delenv("CCMSEC_SERVICE")
    code, line = healthcheck.run()
    assert code == 1 and "CCMSEC_SERVICE" in line and "\n" not in line


def test_bad_grpc_port_is_unhealthy_with_the_variable_named(service_env, monkeypatch):
    monkeypatch.setenv("CCMSEC_GRPC_PORT", "70000")
    code, line = healthcheck.run()
    assert code == 1 and line.startswith("unhealthy: bad settings: CCMSEC_GRPC_PORT")


def test_main_prints_exactly_one_line(service_env, capsys):
    assert healthcheck.main() == 1
    out = capsys.readouterr()
    assert out.out.count("\n") == 1 and out.out.startswith("unhealthy:") and out.err == ""

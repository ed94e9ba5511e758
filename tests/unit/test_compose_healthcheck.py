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


# --- the start phase: answer as soon as the service serves (Docker < 25 has no start_interval) ----

def test_start_wait_only_while_the_container_is_young():
    assert healthcheck.start_wait(2.0) == healthcheck.START_WAIT
    assert healthcheck.start_wait(healthcheck.START_PERIOD - 5) == 5
    assert healthcheck.start_wait(healthcheck.START_PERIOD) == 0.0   # running: one question, as before
    assert healthcheck.start_wait(3600.0) == 0.0
    assert healthcheck.start_wait(None) == 0.0                      # /proc cannot tell: as before


def test_process_age_reads_proc():
    assert 0 <= healthcheck.process_age(os.getpid()) < 3600
    assert healthcheck.process_age(2 ** 22 + 7) is None              # no such process


def test_the_start_wait_stays_inside_the_compose_health_check():
    from ccmsec.cluster import compose

    assert compose.HEALTH["start_period"] == f"{healthcheck.START_PERIOD:g}s"
    # the longest check (waiting, then one last probe with its own deadline) ends before Docker's timeout
    assert healthcheck.START_WAIT + healthcheck.TIMEOUT + 0.5 < float(compose.HEALTH["timeout"].rstrip("s"))


def _answers(monkeypatch, answers):
    seen = []

    async def check(identity, role, host, port):
        seen.append(answers[min(len(seen), len(answers) - 1)])
        return seen[-1]
    monkeypatch.setattr(healthcheck, "_check", check)
    monkeypatch.setattr(healthcheck, "START_POLL", 0.01)
    return seen


def test_a_starting_service_is_healthy_as_soon_as_it_serves(monkeypatch):
    import asyncio

    seen = _answers(monkeypatch, ["UNAVAILABLE (connection refused)", "NOT_SERVING", "SERVING"])
    assert asyncio.run(healthcheck._check_until_serving(None, "capf", "127.0.0.1", 1, 5.0)) == "SERVING"
    assert len(seen) == 3


def test_a_service_that_never_serves_is_still_unhealthy_after_the_wait(monkeypatch):
    import asyncio
    import time

    seen = _answers(monkeypatch, ["NOT_SERVING"])
    began = time.monotonic()
    assert asyncio.run(healthcheck._check_until_serving(None, "capf", "127.0.0.1", 1, 0.2)) == "NOT_SERVING"
    assert time.monotonic() - began < 2 and len(seen) > 2
    seen.clear()   # a running container (no wait): asked once
    assert asyncio.run(healthcheck._check_until_serving(None, "capf", "127.0.0.1", 1, 0.0)) == "NOT_SERVING"
    assert len(seen) == 1

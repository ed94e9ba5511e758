"""Pure parts of the capf service: parameter checks, RST-6/RST-8 action → event mapping, CERT-3
copy, the CLI's --by parsing."""

from __future__ import annotations

import datetime as dt

import pytest

from ccmsec.cli.capf import parse_deadline
from ccmsec.cli.common import CliError
from ccmsec.pki.ca import create_ca, name, new_key
from ccmsec.policy.resets import required_actions
from ccmsec.runtime.actions import event_for
from ccmsec_capf.certcopy import SERVER_ROLES, capf_cer_path, copy_capf_certificate
from ccmsec_capf.parameters import ParameterError, change_of, validate
from ccmsec_proto import events_pb2


def test_rst8_service_parameters_map_to_one_capf_restart_event():
    """RST-8: one service.restart for role capf, nothing else."""
    events = [event_for(a, "why") for a in required_actions(change_of("service"))]
    assert len(events) == 1
    kind, target, body = events[0]
    assert (kind, target) == ("service.restart", "capf")
    assert body["service_restart"].rule == "RST-8" and list(body["service_restart"].nodes) == []


def test_rst6_enterprise_parameters_map_to_one_reset_of_every_device():
    """RST-6: one device.reset for all devices, nothing else."""
    events = [event_for(a, "why") for a in required_actions(change_of("enterprise"))]
    assert len(events) == 1
    kind, target, body = events[0]
    assert (kind, target) == ("device.reset", None)
    msg = body["device_reset"]
    assert msg.all and msg.rule == "RST-6" and msg.kind == events_pb2.RESET and list(msg.devices) == []


@pytest.mark.parametrize("scope,values,text", [
    ("service", {"max_auth_failures": "x"}, "not a whole number"),
    ("service", {"max_auth_failures": "21"}, "outside 1..20"),
    ("service", {"default_key_type": "ec256"}, "enterprise parameter"),
    ("enterprise", {"max_connections": "5"}, "service parameter"),
    ("enterprise", {"default_key_type": "dsa"}, "not one of"),
    ("enterprise", {"bogus": "1"}, "unknown CAPF parameter"),
    ("enterprise", {}, "no parameter given"),
    ("service", {f"p{i}": "1" for i in range(17)}, "at most 16"),
])
def test_parameter_validation_refuses_bad_names_and_values(scope, values, text):
    with pytest.raises(ParameterError, match=text):
        validate(scope, values)


def test_parameter_values_are_normalised():
    assert validate("service", {"max_auth_failures": " 07 "}) == {"max_auth_failures": "7"}


def test_cert3_copy_writes_der_to_every_server_and_repairs_tampering(tmp_path):
    """CERT-3: DATA/servers/<role>/CAPF.cer for every server; a redelivery rewrites nothing."""
    ca = create_ca(name("CAPF"), key=new_key("ec256"))
    written = copy_capf_certificate(tmp_path, ca.cert)
    assert sorted(p.parent.name for p in written) == sorted(SERVER_ROLES)
    for role in SERVER_ROLES:
        assert capf_cer_path(tmp_path, role).read_bytes() == ca.der
    assert copy_capf_certificate(tmp_path, ca.cert) == []  # idempotent
    capf_cer_path(tmp_path, "callmanager").write_bytes(b"tampered")
    assert copy_capf_certificate(tmp_path, ca.cert) == [capf_cer_path(tmp_path, "callmanager")]
    assert capf_cer_path(tmp_path, "callmanager").read_bytes() == ca.der
    assert not list(tmp_path.rglob("*.tmp*"))  # atomic writes leave no temp files


def test_parse_deadline_forms_and_errors():
    now = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.timezone.utc)
    assert parse_deadline("+2h", now) == now + dt.timedelta(hours=2)
    assert parse_deadline("+3d", now) == now + dt.timedelta(days=3)
    assert parse_deadline("2026-05-02", now) == dt.datetime(2026, 5, 2, 23, 59, 59, tzinfo=dt.timezone.utc)
    assert parse_deadline("2026-05-02T10:00", now).tzinfo == dt.timezone.utc
    assert parse_deadline("2026-05-02T10:00+02:00", now).utcoffset() == dt.timedelta(hours=2)
    for bad in ("tomorrow", "2026-13-01", "+5y", "", "+9999999d"):
        with pytest.raises(CliError, match="bad --by date"):
            parse_deadline(bad, now)

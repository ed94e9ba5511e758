"""Pure parts of the round-two administration API: reset merging over the policy table (RST-1,
RST-2, RST-5, RST-9), CAPF gRPC error mapping (CHK-2, DEV-3), request bodies fuzzed."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.requests import Request

from ccmsec.policy.resets import (
    ALL,
    DeviceSecurityModeChanged,
    DevicesOnServer,
    HardeningChanged,
    ResetDevices,
    ResetDevicesOnServer,
    ResetKind,
    RestartService,
    SrstSecurityChanged,
    required_actions,
)
from ccmsec.runtime.actions import event_bodies
from ccmsec_callmanager.domain import merge_resets
from ccmsec_callmanager.admin.capf import CapfActivation, CapfScheduleRequest, parse_deadline, refusal
from ccmsec_callmanager.admin.errors import ApiError, read_json
from ccmsec_callmanager.admin.events import MemoryEvents
from ccmsec_callmanager.admin.lines import DevicePoolAssignment, LineCreate, PoolCreate, PoolPatch
from ccmsec_callmanager.admin.resets import BulkResetRequest, DeviceResetRequest
from ccmsec_proto import events_pb2

NEW_BODIES = (LineCreate, PoolCreate, PoolPatch, DevicePoolAssignment, BulkResetRequest,
              DeviceResetRequest, CapfScheduleRequest, CapfActivation)


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


# --- resets ------------------------------------------------------------------------------------

def test_rst1_rst2_one_request_changing_both_resets_the_phone_once_naming_both_rules():
    actions = (required_actions(DeviceSecurityModeChanged("P1"))
               + required_actions(HardeningChanged("P1")))
    assert merge_resets(actions) == [ResetDevices(("P1",), ResetKind.RESET, "RST-1,RST-2")]
    (kind, target, body), = event_bodies(merge_resets(actions))
    assert (kind, target, list(body["device_reset"].devices), body["device_reset"].rule) == (
        "device.reset", None, ["P1"], "RST-1,RST-2")


def test_merge_keeps_different_targets_kinds_and_restarts_apart():
    """The bad case for merging: different devices, kinds or a service restart are never folded."""
    actions = [ResetDevices(("P1",), ResetKind.RESET, "RST-1"),
               ResetDevices(("P2",), ResetKind.RESET, "RST-1"),
               ResetDevices(("P1",), ResetKind.RESTART, "RST-4"),
               RestartService("callmanager", "RST-4"),
               ResetDevices(("P1",), ResetKind.RESET, "RST-1")]  # a repeat adds no rule twice
    assert merge_resets(actions) == actions[:4]
    assert merge_resets([]) == []


def test_rst5_and_rst9_actions_become_the_events_call_control_acts_on():
    (rst5,) = event_bodies(required_actions(SrstSecurityChanged("srst1", ("A", "B"))))
    assert list(rst5[2]["device_reset"].devices) == ["A", "B"] and rst5[2]["device_reset"].rule == "RST-5"
    assert required_actions(SrstSecurityChanged("srst1", ())) == [], "no dependent device, no reset"
    (action,) = required_actions(ResetDevicesOnServer("cm-b"))
    assert action.devices == DevicesOnServer("cm-b")
    (rst9,) = event_bodies([action], request_id="r1")
    assert (rst9[2]["device_reset"].server, rst9[2]["device_reset"].request_id) == ("cm-b", "r1")
    (chk13,) = event_bodies([ResetDevices(ALL, ResetKind.RESET, "CHK-13")])
    assert chk13[2]["device_reset"].all is True


def test_memory_events_keep_a_copy_of_each_body():
    events = MemoryEvents()
    body = events_pb2.ConfigChanged(devices=["A"], what="line")
    asyncio.run(events.publish("config.changed", None, {"config_changed": body}))
    body.devices.append("B")
    assert list(events.bodies("config.changed")[0].devices) == ["A"]
    assert events.of_kind("device.reset") == []


# --- CAPF error mapping ------------------------------------------------------------------------

def test_chk2_failed_precondition_from_capf_is_409_naming_the_rule():
    err = refusal(_rpc_error(grpc.StatusCode.FAILED_PRECONDITION,
                             "CAPF service is not activated on the publisher (CHK-2)"))
    assert (err.status, err.rule) == (409, "CHK-2")


def test_dev3_rule_found_in_the_message_but_never_in_the_device_name():
    err = refusal(_rpc_error(grpc.StatusCode.FAILED_PRECONDITION,
                             "CHK-1: DEV-3: model 7912 supports image authentication only"), device="CHK-1")
    assert (err.status, err.rule) == (409, "DEV-3")
    no_rule = refusal(_rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "something else"))
    assert (no_rule.status, no_rule.rule) == (409, None)


@pytest.mark.parametrize("code,status", [
    (grpc.StatusCode.NOT_FOUND, 404), (grpc.StatusCode.INVALID_ARGUMENT, 422),
    (grpc.StatusCode.UNAVAILABLE, 503), (grpc.StatusCode.DEADLINE_EXCEEDED, 503),
    (grpc.StatusCode.INTERNAL, 502), (grpc.StatusCode.UNKNOWN, 502)])
def test_capf_status_codes_map_to_http(code, status):
    err = refusal(_rpc_error(code, "why"))
    assert err.status == status and err.error and err.rule is None
    if status == 503:
        assert err.error.startswith("CAPF service unreachable")


def test_deadline_needs_iso_8601_with_a_time_zone():
    assert parse_deadline("2030-01-01T00:00:00+00:00").year == 2030
    for bad in ("2030-01-01T00:00:00", "tomorrow", "", "2030-13-01T00:00:00Z"):
        with pytest.raises(ValueError):
            parse_deadline(bad)


# --- bodies ------------------------------------------------------------------------------------

def _request(body: bytes) -> Request:
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request({"type": "http", "method": "POST", "path": "/", "query_string": b"",
                    "headers": [(b"content-type", b"application/json")]}, receive)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30)
    | st.sampled_from(["SEP001122334455", "1000", "cm1", "install", "string", "ec256", "HQ",
                       "2030-01-01T00:00:00+00:00", "restart"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)

FIELDS = ["dn", "device", "line_index", "label", "name", "cm_group", "srst", "pool", "all", "server",
          "kind", "operation", "auth_mode", "auth_string", "key_type", "deadline", "active", "x"]


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=7))
def test_fuzz_new_bodies_validate_or_refuse_with_422(data):
    raw = json.dumps(data).encode()
    for model in NEW_BODIES:
        try:
            asyncio.run(read_json(_request(raw), model))
        except ApiError as exc:
            assert exc.status == 422 and exc.error


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_new_bodies_any_bytes_give_a_model_or_a_4xx(raw):
    for model in NEW_BODIES:
        try:
            asyncio.run(read_json(_request(raw), model))
        except ApiError as exc:
            assert 400 <= exc.status < 500

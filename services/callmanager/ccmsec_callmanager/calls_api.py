"""Calls as the interfaces show them: the one converter from the call agent's views
(`ccmsec.calls.model.CallView`) to the gRPC messages and to the HTTPS API's JSON, and the gRPC
handlers (ListCalls, WatchCalls, DriveCtiPort) the CallManager servicer delegates to.

Times: the agent counts on the event loop's clock; `wall_offset` turns them into wall time.
Status names: CALL-1's levels as the phones display them (lock = encrypted, shield =
authenticated, none); a call without a status yet (still dialling) is "unknown".
"""

from __future__ import annotations

import asyncio

import grpc

from ccmsec.calls.model import CallEvent, CallView
from ccmsec.wire.sccp_phone import ICONS, KEYPAD_CODES, PhoneActionError
from ccmsec_proto import callmanager_pb2 as pb
from ccmsec.textsafe import bounded, shown

# SCCP media payload types (compression types) the phones report in CapabilitiesRes.
CODEC_NAMES = {2: "g711a", 4: "g711u", 6: "g722", 9: "g729", 11: "g729a", 0x19: "wideband-256k"}
MAX_CTI_NUMBER = 24


def codec_name(codec: int) -> str:
    return CODEC_NAMES.get(codec, f"type-{codec}")


def icon(status: int) -> str:
    """What a phone shows for a CallInfo security status (CALL-2): lock, shield or none."""
    return ICONS.get(status, "none")


def _ms(t: float | None, wall_offset: float) -> int:
    return int((t + wall_offset) * 1000) if t else 0


def call_dict(view: CallView, *, wall_offset: float = 0.0, node: str = "") -> dict:
    """One call as plain data (the HTTPS API's JSON and the source of the gRPC message)."""
    return {
        "id": view.id, "phase": view.phase, "calling": view.calling, "called": view.called,
        "original_called": view.original_called,
        "legs": [{
            "device": lg.device, "model": lg.model, "kind": lg.kind, "device_mode": lg.device_mode,
            "line": lg.line, "dn": lg.dn, "call_reference": lg.call_reference, "state": lg.state,
            "role": lg.role, "shown": icon(lg.shown_status), "rx": lg.rx, "tx": lg.tx, "user": lg.user,
            "codec": codec_name(lg.codec),
        } for lg in view.legs],
        "codec": codec_name(view.codec), "codec_rule": view.codec_rule,
        "status": view.status_name, "rule": view.rule, "reasons": list(view.reasons),
        "resources": list(view.resources), "barge": view.barge, "barge_rule": view.barge_rule,
        "created_unix_ms": _ms(view.created, wall_offset),
        "connected_unix_ms": _ms(view.connected_at, wall_offset), "node": node,
    }


def call_message(view: CallView, *, wall_offset: float = 0.0, node: str = "") -> pb.ActiveCall:
    d = call_dict(view, wall_offset=wall_offset, node=node)
    legs = [pb.CallLeg(**leg) for leg in d.pop("legs")]
    return pb.ActiveCall(legs=legs, **d)


def event_message(event: CallEvent, *, wall_offset: float = 0.0, node: str = "") -> pb.CallEventMessage:
    return pb.CallEventMessage(kind=event.kind, call=call_message(event.call, wall_offset=wall_offset, node=node),
                               at_unix_ms=_ms(event.at, wall_offset), detail=event.detail)


class CallsServicerMixin:
    """ListCalls / WatchCalls / DriveCtiPort for `CallManagerServicer` (`self.service.callcontrol`)."""

    def _call_service(self):
        cc = self.service.callcontrol
        return cc.calls if cc is not None else None

    def _offset_node(self, calls) -> tuple[float, str]:
        return calls.agent.wall_offset, self.service.node

    async def ListCalls(self, request, context):  # noqa: N802
        calls = self._call_service()
        if calls is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "call control is not running on this node")
        offset, node = self._offset_node(calls)
        return pb.CallsReply(calls=[call_message(v, wall_offset=offset, node=node) for v in calls.calls()])

    async def WatchCalls(self, request, context):  # noqa: N802
        calls = self._call_service()
        if calls is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "call control is not running on this node")
        try:
            queue = calls.watch()
        except RuntimeError as exc:   # too many watchers at once
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, bounded(str(exc)))
        offset, node = self._offset_node(calls)
        try:
            # what is going on now, then every change; the queue was taken first so nothing is missed
            for view in calls.calls():
                yield pb.CallEventMessage(kind="existing", call=call_message(view, wall_offset=offset, node=node),
                                          at_unix_ms=_ms(view.created, offset))
            while True:
                event = await queue.get()
                if event is None:   # call control closing, or this watcher fell behind
                    if queue not in calls.watchers:
                        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                            "call watch dropped: it did not keep up; watch again")
                    return
                yield event_message(event, wall_offset=offset, node=node)
        finally:
            calls.unwatch(queue)

    async def DriveCtiPort(self, request, context):  # noqa: N802
        calls = self._call_service()
        if calls is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "call control is not running on this node")
        action = request.action.strip().lower().replace("-", "")
        number = request.number
        # a '#' ending the number only ends dialling: 24 digits + '#' is a 24-digit number
        if action == "dial" and (not number or len(number.removesuffix("#")) > MAX_CTI_NUMBER
                                 or any(d not in KEYPAD_CODES for d in number)):
            # checked here, not left to the port's phone: its refusal would read as a state
            # problem (FAILED_PRECONDITION) when it is the request that is wrong
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"dial needs a number of 1 to {MAX_CTI_NUMBER} characters 0-9 * # + "
                                f"(and a '#' ending it), got '{shown(number, MAX_CTI_NUMBER + 8)}'")
        try:
            device = calls.cti(request.port, action, request.number)
        except PhoneActionError as exc:
            text = str(exc)
            code = (grpc.StatusCode.NOT_FOUND if text.startswith("no CTI port")
                    else grpc.StatusCode.INVALID_ARGUMENT if text.startswith("unknown CTI action")
                    else grpc.StatusCode.FAILED_PRECONDITION)
            await context.abort(code, bounded(text))
        await asyncio.sleep(0)
        return pb.CtiReply(port=device.profile.name, calls=[
            f"{c.reference} {c.state_name}" for c in device.phone.calls.values()])

"""Callmanager's media plane tells the call agent what the SRTP gateway can do: a gateway whose
audit reports no SRTP makes its calls non-secure (CALL-3), not merely keyless (GW-2)."""

from __future__ import annotations

import types

from ccmsec.calls.agent import CallAgent
from ccmsec.calls.config import DeviceProfile, LineConfig
from ccmsec.domain import DeviceSecurityMode
from ccmsec.policy.calls import EndpointKind
from ccmsec_callmanager import media_plane
from ccmsec_callmanager.media_plane import GATEWAY_DEVICE, GATEWAY_PATTERN, MediaPlaneMixin


class Plane(MediaPlaneMixin):
    def __init__(self, agent: CallAgent) -> None:
        self.callcontrol = types.SimpleNamespace(calls=types.SimpleNamespace(agent=agent))
        self.asked: list[str] = []

    def peer_channel(self, role: str):
        self.asked.append(role)
        return object()


def _gateway_agent() -> CallAgent:
    agent = CallAgent()
    agent.register(DeviceProfile(GATEWAY_DEVICE, model="MGCP gateway", kind=EndpointKind.GATEWAY,
                                 security_mode=DeviceSecurityMode.ENCRYPTED,
                                 lines=(LineConfig("5550000"),), route_pattern=GATEWAY_PATTERN,
                                 auto_answer=True), 0.0)
    return agent


async def test_call3_the_gateways_audit_reaches_the_call_agents_profile(monkeypatch):
    for srtp in (False, True):
        class Stub:
            def __init__(self, channel) -> None:
                pass

            async def AuditEndpoint(self, request, timeout):  # noqa: N802
                return types.SimpleNamespace(srtp_capable=srtp)

        monkeypatch.setattr(media_plane.srtp_gateway_pb2_grpc, "SrtpGatewayStub", Stub)
        agent = _gateway_agent()
        plane = Plane(agent)
        await plane._ask_gateway()
        profile = agent.stations[GATEWAY_DEVICE].profile
        assert plane.asked == ["srtp-gateway"] and plane.gateway_srtp is srtp
        assert profile.srtp_capable is srtp and profile.route_pattern == GATEWAY_PATTERN

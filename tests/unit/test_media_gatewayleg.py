"""GW-1, GW-2, GW-4 as call control decides a phone's leg through the gateway."""

from __future__ import annotations

import pytest

from ccmsec.formats.sdp import parse_sdp
from ccmsec.media.callkeys import DeviceTransport
from ccmsec.media.gatewayleg import plan_gateway_leg
from ccmsec.media.srtp import MasterKey

SECURE = DeviceTransport("encrypted", True, "ECDHE-RSA-AES256-GCM-SHA384")


def test_gw1_srtp_leg_puts_the_phones_send_key_in_the_remote_sdp():
    tx, rx = MasterKey.generate(), MasterKey.generate()
    plan = plan_gateway_leg(SECURE, gateway_srtp=True, cluster_mixed=True, phone_send=tx, phone_receive=rx)
    assert plan.srtp and plan.reason == ""
    sd = parse_sdp(plan.remote_sdp(("127.0.0.9", 30000)))
    audio = sd.audio()
    assert audio.srtp and audio.port == 30000 and [c.key for c in audio.crypto] == [tx]
    assert plan.phone_receive is rx  # what the gateway will encrypt with


@pytest.mark.parametrize("phone, gw, mixed, keys, words", [
    (DeviceTransport("non-secure", False), True, True, True, "GW-2: the phone cannot do SRTP here (ENC-3"),
    (DeviceTransport("encrypted", True, "NULL-SHA256"), True, True, True, "ENC-5"),
    (SECURE, False, True, True, "GW-2: the gateway has no SRTP support"),
    (SECURE, True, False, True, "GW-4"),
    (SECURE, True, True, False, "ENC-4"),
])
def test_gw2_gw4_rtp_when_srtp_cannot_be_used(phone, gw, mixed, keys, words):
    k = MasterKey.generate() if keys else None
    plan = plan_gateway_leg(phone, gateway_srtp=gw, cluster_mixed=mixed, phone_send=k, phone_receive=k)
    assert not plan.srtp and words in plan.reason
    sd = parse_sdp(plan.remote_sdp(("127.0.0.9", 30000)))
    assert not sd.audio().srtp and sd.audio().crypto == ()  # no key leaves call control

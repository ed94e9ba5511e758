"""GW-1, GW-2 for a leg through the gateway, on the plan call control's gateway driver
(`ccmsec.aio.gateway_legs`) really builds from the gateway device's channel blocks. Who gets keys
at all (ENC-3/ENC-5, GW-2/GW-4) is decided earlier, on the live path: test_callmanager_media_plane.py
and test_media_callkeys.py; end to end in tests/integration/test_gateway_calls.py."""

from __future__ import annotations

import pytest

from ccmsec.formats.sdp import parse_sdp
from ccmsec.media.gatewayleg import GatewayLegPlan
from ccmsec.media.keys import to_encryption_info
from ccmsec.media.srtp import MasterKey


def test_gw1_srtp_leg_puts_the_phones_send_key_in_the_remote_sdp():
    tx, rx = MasterKey.generate(), MasterKey.generate()
    # the gateway device's channel: it receives with the phone's send key, transmits with the other
    plan = GatewayLegPlan.for_channel(to_encryption_info(tx), to_encryption_info(rx))
    assert plan.srtp and plan.reason == ""
    sd = parse_sdp(plan.remote_sdp(("127.0.0.9", 30000)))
    audio = sd.audio()
    assert audio.srtp and audio.port == 30000 and [c.key for c in audio.crypto] == [tx]
    assert plan.phone_receive == rx  # what the gateway will encrypt with (its send_key)


@pytest.mark.parametrize("rx, tx", [(False, False), (True, False), (False, True)])
def test_gw2_a_channel_without_both_keys_is_an_rtp_leg_and_no_key_leaves(rx, tx):
    key = MasterKey.generate()
    plan = GatewayLegPlan.for_channel(to_encryption_info(key if rx else None),
                                      to_encryption_info(key if tx else None))
    assert not plan.srtp and "GW-2" in plan.reason
    assert plan.phone_send is None and plan.phone_receive is None
    sd = parse_sdp(plan.remote_sdp(("127.0.0.9", 30000)))
    assert not sd.audio().srtp and sd.audio().crypto == ()  # no key leaves call control

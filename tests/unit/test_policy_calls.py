"""CALL-1..9: call security level, barge and wideband codec rules."""

from __future__ import annotations

import pytest

from ccmsec.policy.calls import (
    CallSecurityLevel as L,
    Endpoint,
    EndpointKind as K,
    barge,
    call_security,
    choose_codec,
    shows_lock_icon,
)
from ccmsec.policy.devices import SecurityMode as M


def phone(name, mode=M.ENCRYPTED, *, registered=None, srtp=True, model="7970", cluster="local"):
    return Endpoint(name, K.PHONE, model, mode, registered or mode, srtp, cluster=cluster)


def test_call1_encrypted_only_when_all_encrypted_with_srtp():
    result = call_security([phone("A"), phone("B")])
    assert result.level is L.ENCRYPTED and result.rule_id == "CALL-1"
    assert result.sccp_status == 3


def test_call1_encrypted_devices_without_srtp_media_are_only_authenticated():
    result = call_security([phone("A"), phone("B", srtp=False)])
    assert result.level is L.AUTHENTICATED and "B" in result.reasons[0]


def test_call1_one_non_secure_device_makes_call_non_secure():
    result = call_security([phone("A"), phone("B"), phone("C", M.NON_SECURE, srtp=False)])
    assert result.level is L.NON_SECURE and "C" in result.reasons[0]


def test_call1_authenticated_when_all_at_least_authenticated():
    assert call_security([phone("A"), phone("B", M.AUTHENTICATED, srtp=False)]).level is L.AUTHENTICATED


def test_call1_registered_mode_counts_not_only_configured():
    # Configured encrypted but registered over an integrity-only channel: not encrypted.
    a = phone("A", M.ENCRYPTED, registered=M.AUTHENTICATED)
    assert call_security([a, phone("B")]).level is L.AUTHENTICATED


@pytest.mark.parametrize("kind", [K.CTI, K.INTER_CLUSTER_TRUNK, K.TRANSCODER, K.MTP,
                                  K.CONFERENCE, K.MUSIC_ON_HOLD, K.SIP, K.H323])
def test_call3_unsecurable_endpoints_make_call_non_secure(kind):
    other = Endpoint("X", kind, None, M.ENCRYPTED, M.ENCRYPTED, True)
    result = call_security([phone("A"), other])
    assert result.level is L.NON_SECURE and result.rule_id == "CALL-3"


def test_call3_gateway_with_and_without_srtp():
    gw = Endpoint("GW", K.GATEWAY, None, M.ENCRYPTED, M.ENCRYPTED, True, srtp_capable=True)
    assert call_security([phone("A"), gw]).level is L.ENCRYPTED
    plain_gw = Endpoint("GW", K.GATEWAY, None, M.ENCRYPTED, M.ENCRYPTED, False, srtp_capable=False)
    assert call_security([phone("A"), plain_gw]).rule_id == "CALL-3"


def test_call3_cross_cluster_and_insecure_models():
    assert call_security([phone("A"), phone("B", cluster="other")]).level is L.NON_SECURE
    assert call_security([phone("A"), phone("B", model="7912")]).rule_id == "CALL-3"


def test_call2_lock_icon_follows_media_leg_changes():
    a, b = phone("A"), phone("B")
    assert shows_lock_icon(call_security([a, b]))
    # Transfer to a non-secure phone: the new leg is not encrypted; the icon goes.
    assert not shows_lock_icon(call_security([a, phone("C", M.NON_SECURE, srtp=False)]))
    # Hold with music on hold: non-secure while held.
    moh = Endpoint("MOH", K.MUSIC_ON_HOLD)
    assert not shows_lock_icon(call_security([a, moh]))
    # Ad hoc conference bridge inserted: non-secure.
    assert not shows_lock_icon(call_security([a, b, Endpoint("CFB", K.CONFERENCE)]))


def test_call4_non_encrypted_initiator_cannot_barge_encrypted_call():
    for mode in (M.NON_SECURE, M.AUTHENTICATED):
        result = barge(phone("I", mode), L.ENCRYPTED)
        assert not result.allowed and result.busy_tone and result.rule_id == "CALL-4"


def test_call5_encrypted_initiator_into_lower_call_makes_it_non_secure():
    for level in (L.AUTHENTICATED, L.NON_SECURE):
        result = barge(phone("I"), level)
        assert result.allowed and result.level is L.NON_SECURE and result.rule_id == "CALL-5"


def test_call6_encrypted_initiator_into_encrypted_call_stays_encrypted():
    result = barge(phone("I"), L.ENCRYPTED)
    assert result.allowed and result.level is L.ENCRYPTED and result.rule_id == "CALL-6"


def test_call7_non_secure_initiator_into_authenticated_call_keeps_authenticated_icon():
    result = barge(phone("I", M.NON_SECURE), L.AUTHENTICATED)
    assert result.allowed and result.level is L.AUTHENTICATED and result.rule_id == "CALL-7"


def test_call8_cbarge_allowed_but_non_secure():
    for level in L:
        result = barge(phone("I", M.NON_SECURE), level, cbarge=True)
        assert result.allowed and result.level is L.NON_SECURE and result.rule_id == "CALL-8"


WIDEBAND, G711 = 0x19, 4


def test_call9_encrypted_7960_skips_wideband():
    eps = [phone("A", model="7960"), phone("B")]
    choice = choose_codec([WIDEBAND, G711], call_level=L.ENCRYPTED, endpoints=eps,
                          wideband_region=True)
    assert choice.codec == G711 and choice.rule_id == "CALL-9"


def test_call9_wideband_allowed_when_other_side_not_encrypted():
    eps = [phone("A", model="7940"), phone("B", M.AUTHENTICATED, srtp=False)]
    for level in (L.AUTHENTICATED, L.NON_SECURE):
        choice = choose_codec([WIDEBAND, G711], call_level=level, endpoints=eps,
                              wideband_region=True)
        assert choice.codec == WIDEBAND


def test_call9_encrypted_7970_only_call_may_use_wideband():
    eps = [phone("A"), phone("B")]
    assert choose_codec([WIDEBAND, G711], call_level=L.ENCRYPTED, endpoints=eps,
                        wideband_region=True).codec == WIDEBAND


def test_call9_no_alternative_codec_gives_none_with_reason():
    choice = choose_codec([WIDEBAND], call_level=L.ENCRYPTED,
                          endpoints=[phone("A", model="7960"), phone("B")], wideband_region=True)
    assert choice.codec is None and "no other codec" in choice.reason


def test_call_needs_two_endpoints():
    with pytest.raises(ValueError):
        call_security([phone("A")])

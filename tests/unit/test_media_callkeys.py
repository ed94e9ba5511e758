"""ENC-3, ENC-4, ENC-5 as call control applies them: who may receive keys, and which set goes in
which block."""

from __future__ import annotations

import pytest

from ccmsec.media.callkeys import CallKeyRing, DeviceTransport, PairKeys, may_receive_keys
from ccmsec.media.srtp import MasterKey
from ccmsec.media.stream import AudioReceived, MediaStream

AES = "ECDHE-RSA-AES256-GCM-SHA384"


@pytest.mark.parametrize("device, ok, words", [
    (DeviceTransport("encrypted", True, AES), True, ""),
    (DeviceTransport("authenticated", True, "NULL-SHA256"), False, "ENC-3"),
    (DeviceTransport("encrypted", True, "NULL-SHA256"), False, "ENC-5: TLS cipher NULL-SHA256"),
    (DeviceTransport("encrypted", False, ""), False, "ENC-5: registered on the clear SCCP port"),
    (DeviceTransport("non-secure", False, ""), False, "ENC-3"),
    (DeviceTransport("encrypted", True, AES, srtp_capable=False), False, "SRTP capability"),
    # DEV-1: encrypted means AES; a cipher that is neither AES nor NULL is not encrypted (no keys)
    (DeviceTransport("encrypted", True, "ECDHE-RSA-CHACHA20-POLY1305"), False, "ENC-5: TLS cipher ECDHE-RSA-CHACHA20"),
    (DeviceTransport("encrypted", True, "DES-CBC3-SHA"), False, "does not encrypt with AES"),
    (DeviceTransport("encrypted", True, ""), False, "ENC-5: TLS cipher (none)"),
    (DeviceTransport("encrypted", True, "TLS_AES_256_GCM_SHA384"), True, ""),
])
def test_enc3_enc5_who_may_receive_keys(device, ok, words):
    allowed, why = may_receive_keys(device)
    assert allowed is ok and words in why


def test_enc4_a_sends_with_the_first_set_and_receives_with_the_second():
    ring = CallKeyRing()
    a_to_b, b_to_a = MasterKey.generate(), MasterKey.generate()
    ring.put(ring.pair_id(7, 11, 12), PairKeys(a_to_b, b_to_a))
    assert ring.key_for(7, 11, 12, "tx") is a_to_b and ring.key_for(7, 11, 12, "rx") is b_to_a
    assert ring.key_for(7, 12, 11, "tx") is b_to_a and ring.key_for(7, 12, 11, "rx") is a_to_b
    # the two devices built from those blocks really talk SRTP to each other, both ways
    a = MediaStream(0, send_key=ring.key_for(7, 11, 12, "tx"), receive_key=ring.key_for(7, 11, 12, "rx"))
    b = MediaStream(0, send_key=ring.key_for(7, 12, 11, "tx"), receive_key=ring.key_for(7, 12, 11, "rx"))
    assert isinstance(b.receive(a.packet_for(bytes(320))), AudioReceived)
    assert isinstance(a.receive(b.packet_for(bytes(320))), AudioReceived)
    assert ring.key_for(8, 11, 12, "tx") is None
    with pytest.raises(ValueError):
        ring.key_for(7, 11, 12, "both")


def test_keys_are_forgotten_with_the_call_or_the_leg():
    ring = CallKeyRing()
    for pair in [(1, 1, 2), (1, 2, 3), (2, 5, 6)]:
        ring.put(ring.pair_id(*pair), PairKeys(MasterKey.generate(), MasterKey.generate()))
    assert ring.forget(1, leg=3) == 1 and len(ring) == 2
    assert ring.forget(1) == 1 and ring.forget(2) == 1 and len(ring) == 0

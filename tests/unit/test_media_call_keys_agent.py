"""The key source plugged into the real call agent (in memory, no sockets): ENC-3, ENC-4, ENC-5
and the fall-backs of CALL-2/CALL-3/GW-3, read from the SCCP messages the agent sends."""

from __future__ import annotations

from ccmsec.media.callkeys import CallKeySource, DeviceTransport, PairKeys
from ccmsec.media.keys import from_encryption_info
from ccmsec.media.srtp import MasterKey
from ccmsec.media.stream import AudioReceived, MediaStream
from ccmsec.wire import sccp as s
from tests.unit.calls_harness import AUTH, ENC, NS, Harness

A, B, C = "SEP0000000000A1", "SEP0000000000B1", "SEP0000000000C1"
AES = "ECDHE-ECDSA-AES256-GCM-SHA384"
LOCK, SHIELD, NOT_AUTH = 3, 2, 1


class Keys:
    """A key source with a registry view like call control's, fed by fresh key pairs."""

    def __init__(self):
        self.transports: dict[str, DeviceTransport] = {}
        self.taken = 0
        self.source = CallKeySource(self._take, self.transports.get)

    def _take(self):
        self.taken += 1
        return PairKeys(MasterKey.generate(), MasterKey.generate())


def _setup(keys, modes, transports=None):
    h = Harness(key_source=keys.source.key_source)
    phones = []
    for (name, dn), mode in zip(((A, "1001"), (B, "1002"), (C, "1003")), modes):
        default = {ENC: DeviceTransport("encrypted", True, AES), AUTH: DeviceTransport("authenticated", True, "NULL-SHA256"),
                   NS: DeviceTransport("non-secure", False)}[mode]
        keys.transports[name] = (transports or {}).get(name, default)
        phones.append(h.add(name, dn, mode=mode))
    return h, phones


def _blocks(h, device):
    out = {}
    for direction, dev, m in h.log:
        if direction == "down" and dev == device and isinstance(m, (s.OpenReceiveChannel, s.StartMediaTransmission)):
            out.setdefault(type(m).__name__, []).append(m.encryption)
    return out


def _shown(phone):
    return [c.security for c in phone.calls.values()]


def test_enc4_both_encrypted_get_both_sets_in_the_right_blocks_and_show_the_lock():
    keys = Keys()
    h, (pa, pb) = _setup(keys, (ENC, ENC))
    h.call(A, "1002")
    pb.answer()
    h.pump()
    a, b = _blocks(h, A), _blocks(h, B)
    a_rx, a_tx = from_encryption_info(a["OpenReceiveChannel"][0]), from_encryption_info(a["StartMediaTransmission"][0])
    b_rx, b_tx = from_encryption_info(b["OpenReceiveChannel"][0]), from_encryption_info(b["StartMediaTransmission"][0])
    assert a_tx == b_rx and b_tx == a_rx and a_tx != b_tx   # ENC-4: two sets, crossed
    assert keys.taken == 1
    # the blocks really make a working SRTP pair
    sa, sb = MediaStream(0, send_key=a_tx, receive_key=a_rx), MediaStream(0, send_key=b_tx, receive_key=b_rx)
    assert isinstance(sb.receive(sa.packet_for(bytes(320))), AudioReceived)
    assert isinstance(sa.receive(sb.packet_for(bytes(320))), AudioReceived)
    assert _shown(pa) == _shown(pb) == [LOCK]
    # the call ends: call control forgets its keys
    call_id = next(iter(h.agent.calls))
    pa.hang_up()
    h.pump()
    assert keys.source.forget_call(call_id) == 1 and len(keys.source.ring) == 0


def test_enc3_enc5_a_phone_that_cannot_take_keys_gets_none_and_neither_does_its_peer():
    for transports, why in [
        ({B: DeviceTransport("encrypted", False)}, "ENC-5: registered on the clear SCCP port"),
        ({B: DeviceTransport("encrypted", True, "NULL-SHA256")}, "ENC-5: TLS cipher NULL-SHA256"),
    ]:
        keys = Keys()
        h, (pa, pb) = _setup(keys, (ENC, ENC), transports)
        h.call(A, "1002")
        pb.answer()
        h.pump()
        for dev in (A, B):
            assert all(not blk.is_encrypted for blks in _blocks(h, dev).values() for blk in blks)
        assert keys.taken == 0 and why in keys.source.refusals[B]
        assert LOCK not in _shown(pa) + _shown(pb)
    keys = Keys()
    h, (pa, pb) = _setup(keys, (ENC, AUTH))
    h.call(A, "1002")
    pb.answer()
    h.pump()
    assert keys.taken == 0 and "ENC-3" in keys.source.refusals[B]
    assert _shown(pa) == _shown(pb) == [SHIELD]


def test_gw3_call3_music_on_hold_is_rtp_and_resume_brings_the_lock_back():
    keys = Keys()
    h, (pa, pb) = _setup(keys, (ENC, ENC))
    h.call(A, "1002")
    pb.answer()
    h.pump()
    assert _shown(pb) == [LOCK]
    n = len(h.log)
    pa.hold()
    h.pump()
    moh = [m for d, dev, m in h.log[n:] if d == "down" and dev == B and isinstance(m, (s.OpenReceiveChannel, s.StartMediaTransmission))]
    assert moh and all(not m.encryption.is_encrypted for m in moh)   # the MoH stream is RTP
    assert _shown(pb) == [NOT_AUTH]
    pa.resume()
    h.pump()
    assert _shown(pa) == _shown(pb) == [LOCK]


def test_gw3_call2_transfer_to_a_non_secure_phone_falls_back_to_rtp():
    keys = Keys()
    h, (pa, pb, pc) = _setup(keys, (ENC, ENC, NS))
    h.call(A, "1002")
    pb.answer()
    h.pump()
    assert _shown(pa) == [LOCK]
    n = len(h.log)
    pb.transfer()
    h.pump()
    pb.keypad("1003")
    h.pump()
    pc.answer()
    h.pump()
    pb.transfer(pb.active_call().reference)
    h.pump()
    late = [m for d, dev, m in h.log[n:] if d == "down" and dev in (A, C)
            and isinstance(m, (s.OpenReceiveChannel, s.StartMediaTransmission))]
    assert late and all(not m.encryption.is_encrypted for m in late)   # A <-> C: RTP (GW-3)
    assert _shown(pa) == _shown(pc) == [NOT_AUTH]
    assert "ENC-5" in keys.source.refusals[C] or "ENC-3" in keys.source.refusals[C]


def test_enc4_resume_after_hold_gets_a_fresh_pair_never_the_held_media_keys():
    """A pair of sets keys the media it was issued for and nothing after it: the channels of a
    resumed call are new media (new channels, new streams), so they get a fresh pair from the key
    manager and the held call's pair is forgotten — reusing it would key two media sessions
    between the same phones with one master key."""
    keys = Keys()
    h, (pa, pb) = _setup(keys, (ENC, ENC))
    h.call(A, "1002")
    pb.answer()
    h.pump()
    first = {from_encryption_info(b) for blks in _blocks(h, A).values() for b in blks}
    assert keys.taken == 1 and len(first) == 2
    for _ in range(2):
        pa.hold()
        h.pump()
        pa.resume()
        h.pump()
    a, b = _blocks(h, A), _blocks(h, B)
    assert len(a["OpenReceiveChannel"]) == len(a["StartMediaTransmission"]) == 3
    assert keys.taken == 3 and len(keys.source.ring) == 1   # one pair per media session, old ones gone
    sessions = [{from_encryption_info(a["OpenReceiveChannel"][i]), from_encryption_info(a["StartMediaTransmission"][i])}
                for i in range(3)]
    assert sessions[0] == first and not (sessions[0] & sessions[1]) and not (sessions[1] & sessions[2])
    # the resumed blocks are still ENC-4's crossed pair, a working SRTP pair both ways
    a_rx, a_tx = from_encryption_info(a["OpenReceiveChannel"][-1]), from_encryption_info(a["StartMediaTransmission"][-1])
    b_rx, b_tx = from_encryption_info(b["OpenReceiveChannel"][-1]), from_encryption_info(b["StartMediaTransmission"][-1])
    assert a_tx == b_rx and b_tx == a_rx
    sa, sb = MediaStream(0, send_key=a_tx, receive_key=a_rx), MediaStream(0, send_key=b_tx, receive_key=b_rx)
    assert isinstance(sb.receive(sa.packet_for(bytes(320))), AudioReceived)
    assert isinstance(sa.receive(sb.packet_for(bytes(320))), AudioReceived)
    assert _shown(pa) == _shown(pb) == [LOCK]


def test_enc3_resumed_media_is_keyed_only_if_both_phones_still_may_receive_keys():
    keys = Keys()
    h, (pa, pb) = _setup(keys, (ENC, ENC))
    h.call(A, "1002")
    pb.answer()
    h.pump()
    pa.hold()
    h.pump()
    keys.transports[B] = DeviceTransport("encrypted", True, "NULL-SHA256")   # what it has now
    n = len(h.log)
    pa.resume()
    h.pump()
    late = [m for d, dev, m in h.log[n:] if d == "down" and dev in (A, B)
            and isinstance(m, (s.OpenReceiveChannel, s.StartMediaTransmission))]
    assert late and all(not m.encryption.is_encrypted for m in late)
    assert keys.taken == 1 and "ENC-5" in keys.source.refusals[B] and len(keys.source.ring) == 0
    assert LOCK not in _shown(pa) + _shown(pb)

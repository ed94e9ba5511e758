"""The gateway relay's C packet path (ccmsec/aio/relay_core.c) against its Python path (ENC-2,
ENC-4, GW-1, GW-2): the same datagrams sent to an echo leg on each, over loopback UDP, must come
back as the same bytes and leave the same counters — good packets, replayed, tampered, wrong-key,
short and oversize ones, a foreign payload type or SSRC, headers with CSRCs or an extension,
lost, reordered and restarted sequences, plain RTP legs — and a leg must keep its state when the
gateway changes it (mode, far end, keys) while packets flow."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ccmsec.aio import relay_core
from ccmsec.aio.media_relay import MediaRelay
from ccmsec.media.packetiser import Packetiser
from ccmsec.media.rtp import RtpPacket
from ccmsec.media.srtp import MAX_SRTP_PACKET, MasterKey, SrtpReceiver, SrtpRefused, SrtpSender, SrtpSuite
from ccmsec.media.stream import MediaStream

PAYLOAD = bytes(range(160))


def compiler_present() -> bool:
    return bool(os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc"))


@pytest.fixture(scope="module")
def core():
    if not compiler_present():   # the gateway then runs the Python path; CI installs gcc
        pytest.skip("no C compiler (cc): the relay's C path cannot be built here")
    built, why = relay_core.build()
    assert built is not None, f"a C compiler is here, so the relay's C path must build: {why}"
    return built


class Phone:
    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind(("127.0.0.1", 0))
        self.address = self.sock.getsockname()

    def drain(self) -> list[bytes]:
        got = []
        while True:
            try:
                got.append(self.sock.recv(4096))
            except BlockingIOError:
                return got

    def close(self):
        self.sock.close()


class Pair:
    """The same leg twice: on the C path and on the Python path, each with its own phone."""

    def __init__(self, core, send_key, receive_key, payload_type=0):
        self.relays = {"c": MediaRelay(core), "python": MediaRelay(None)}
        self.legs, self.phones = {}, {}
        for path, relay in self.relays.items():
            stream = MediaStream(payload_type, send_key=send_key, receive_key=receive_key, ssrc=0x5EED)
            stream.packetiser.sequence, stream.packetiser.timestamp = 1000, 5000
            leg = relay.open("127.0.0.1", 0, stream)
            phone = Phone()
            leg.echo = True
            leg.remote = phone.address
            self.legs[path], self.phones[path] = leg, phone

    async def send(self, datagrams: list[bytes]) -> dict[str, list[bytes]]:
        """Each datagram to both legs, one at a time (each relayed before the next is sent)."""
        back = {path: [] for path in self.legs}
        for datagram in datagrams:
            for path, leg in self.legs.items():
                self.phones[path].sock.sendto(datagram, leg.local_address)
            await asyncio.sleep(0.004)
            for path, phone in self.phones.items():
                back[path] += phone.drain()
        await asyncio.sleep(0.02)
        for path, phone in self.phones.items():
            back[path] += phone.drain()
        return back

    def state(self, path: str) -> dict:
        leg = self.legs[path]
        counters = leg.counters()
        s = leg.stream
        return {**counters, "datagrams_in": leg.datagrams_in, "octets_in": leg.octets_in,
                "octets_out": leg.octets_out, "send_errors": leg.send_errors, "discarded": leg.discarded,
                "remote_ssrc": s.remote_ssrc, "tracker": vars(s.tracker).copy(),
                "packetiser": (s.packetiser.sequence, s.packetiser.timestamp, s.packetiser._first)}

    def close(self):
        for relay in self.relays.values():
            relay.close()
        for phone in self.phones.values():
            phone.close()


def _odd_headers(sender, ssrc, start):
    """Valid SRTP whose RTP header has CSRCs, or an extension, or padding."""
    return [sender.protect(RtpPacket(0, start, 160 * start, ssrc, PAYLOAD, csrcs=(1, 2)).to_bytes()),
            sender.protect(RtpPacket(0, start + 1, 160 * (start + 1), ssrc, PAYLOAD,
                                     extension=(0xBEDE, bytes(8))).to_bytes()),
            sender.protect(RtpPacket(0, start + 2, 160 * (start + 2), ssrc, PAYLOAD, padding=4).to_bytes())]


@pytest.mark.parametrize("suite", list(SrtpSuite))
async def test_enc4_c_path_matches_python_path_bytes_and_counters_every_suite(core, suite):
    up, down = MasterKey.generate(suite), MasterKey.generate(suite)
    pair = Pair(core, send_key=down, receive_key=up)
    try:
        assert pair.legs["c"].on_c_path and not pair.legs["python"].on_c_path
        sender = SrtpSender(up)
        pk = Packetiser(0, ssrc=0xCAFE, sequence=10)
        good = [sender.protect(pk.datagram(PAYLOAD)) for _ in range(6)]
        tampered = bytearray(sender.protect(pk.datagram(PAYLOAD)))
        tampered[30] ^= 0x40
        stranger = SrtpSender(MasterKey.generate(suite)).protect(Packetiser(0).datagram(PAYLOAD))
        foreign_ssrc = sender.protect(Packetiser(0, ssrc=0xD00D, sequence=40).datagram(PAYLOAD))
        foreign_pt = sender.protect(Packetiser(8, ssrc=0xCAFE, sequence=41).datagram(PAYLOAD))
        datagrams = (good[:3] + [good[1]]                 # a replay
                     + [bytes(tampered), stranger, b"\x80\x00junk", bytes(MAX_SRTP_PACKET + 10)]
                     + [foreign_ssrc, foreign_pt] + _odd_headers(sender, 0xCAFE, 50)
                     + [good[5], good[4]])                # a gap, then a late packet
        back = await pair.send(datagrams)
        assert back["c"] == back["python"] and len(back["c"]) == 8
        c, py = pair.state("c"), pair.state("python")
        assert c == py
        assert (c["received"], c["refused_replay"], c["refused_authentication"], c["malformed"],
                c["foreign"], c["sent"]) == (8, 1, 2, 2, 2, 8)
        echo = SrtpReceiver(down)
        assert [echo.unprotect(d)[12:] for d in back["c"]] == [PAYLOAD] * 8   # the audio, unchanged
    finally:
        pair.close()


async def test_gw2_c_path_matches_python_path_on_plain_rtp_legs(core):
    pair = Pair(core, send_key=None, receive_key=None, payload_type=8)
    try:
        assert pair.legs["c"].on_c_path
        pk = Packetiser(8, ssrc=77)
        datagrams = ([pk.datagram(PAYLOAD) for _ in range(3)] + [bytes(1501), b"\x80\x08", b"\x00" * 20]
                     + [RtpPacket(8, 9, 9, 77, PAYLOAD, csrcs=(5,)).to_bytes(), Packetiser(0, ssrc=77).datagram(PAYLOAD)])
        back = await pair.send(datagrams)
        assert back["c"] == back["python"] and len(back["c"]) == 4
        assert pair.state("c") == pair.state("python")
        assert pair.state("c")["malformed"] == 3 and pair.state("c")["foreign"] == 1
    finally:
        pair.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=12), st.integers(0, 0xFFFF))
async def test_c_path_sequence_accounting_matches_python_loss_reorder_restart(core, offsets, start):
    """Plain RTP so any sequence is accepted: the C tracker must count loss, misorder and
    restarts exactly as SequenceTracker (RFC 3550 A.1)."""
    pair = Pair(core, send_key=None, receive_key=None)
    try:
        seqs = [(start + o) & 0xFFFF for o in offsets]
        back = await pair.send([RtpPacket(0, s, 0, 99, PAYLOAD).to_bytes() for s in seqs])
        assert back["c"] == back["python"]
        assert pair.state("c") == pair.state("python")
    finally:
        pair.close()


async def test_leg_changes_while_packets_flow_keep_state_on_both_paths(core):
    """Mode off and on, new keys and a new far end (a transfer): the C path hands its state back
    to Python and takes it again; every counter ends as on the Python path."""
    up, down = MasterKey.generate(), MasterKey.generate()
    pair = Pair(core, send_key=down, receive_key=up)
    try:
        sender = SrtpSender(up)
        pk = Packetiser(0, ssrc=1)
        await pair.send([sender.protect(pk.datagram(PAYLOAD)) for _ in range(3)])
        for leg in pair.legs.values():
            leg.receiving = False                     # MDCX mode inactive: dropped, counted
        assert not pair.legs["c"].on_c_path
        await pair.send([sender.protect(pk.datagram(PAYLOAD)) for _ in range(2)])
        for leg in pair.legs.values():
            leg.receiving = True
        assert pair.legs["c"].on_c_path
        await pair.send([sender.protect(pk.datagram(PAYLOAD)) for _ in range(2)])
        up2, down2 = MasterKey.generate(), MasterKey.generate()
        others = {path: Phone() for path in pair.legs}
        try:
            for path, leg in pair.legs.items():
                leg.set_keys(down2, up2)                  # a transfer: new keys, new far end
                leg.remote = others[path].address
                pair.phones[path], others[path] = others[path], pair.phones[path]
            assert pair.legs["c"].on_c_path
            sender2 = SrtpSender(up2)
            pk2 = Packetiser(0, ssrc=2)
            back = await pair.send([sender.protect(pk.datagram(PAYLOAD))]          # old key: refused
                                   + [sender2.protect(pk2.datagram(PAYLOAD)) for _ in range(3)])
            assert back["c"] == back["python"] and len(back["c"]) == 3
            assert [SrtpReceiver(down2).unprotect(d)[12:] for d in back["c"]] == [PAYLOAD] * 3
            assert all(old.drain() == [] for old in others.values())   # nothing to the old far end
        finally:
            for old in others.values():
                old.close()
        c, py = pair.state("c"), pair.state("python")
        assert c == py and c["discarded"] == 2 and c["refused_authentication"] == 1 and c["received"] == 8
        pair.legs["c"].send_payload(PAYLOAD)             # the ticker's path on a leg on the C path
        pair.legs["python"].send_payload(PAYLOAD)
        await asyncio.sleep(0.01)
        assert pair.phones["c"].drain() == pair.phones["python"].drain()
        assert pair.state("c") == pair.state("python") and pair.legs["c"].on_c_path
    finally:
        pair.close()


async def test_closed_leg_is_off_the_c_path_and_its_counters_are_final(core):
    up, down = MasterKey.generate(), MasterKey.generate()
    pair = Pair(core, send_key=down, receive_key=up)
    try:
        sender = SrtpSender(up)
        pk = Packetiser(0, ssrc=3)
        await pair.send([sender.protect(pk.datagram(PAYLOAD)) for _ in range(4)])
        leg = pair.legs["c"]
        port = leg.local_address
        await leg.close()
        assert not leg.on_c_path and leg.counters()["received"] == 4 and leg.datagrams_in == 4
        # the closed port is gone: nothing relayed, nothing counted
        pair.phones["c"].sock.sendto(sender.protect(pk.datagram(PAYLOAD)), port)
        await asyncio.sleep(0.02)
        assert pair.phones["c"].drain() == [] and leg.counters()["received"] == 4
    finally:
        pair.close()


def test_build_failure_is_explained_and_c_required_refuses(monkeypatch):
    monkeypatch.setenv("CC", "/bin/false")
    built, why = relay_core.build()
    assert built is None and "/bin/false failed" in why
    monkeypatch.setattr(relay_core, "_loaded", (None, why))
    with pytest.raises(relay_core.RelayCoreUnavailable, match="CCMSEC_RELAY_CORE=c .*false failed"):
        relay_core.load("c")
    assert relay_core.load("auto") is None and relay_core.load("python") is None
    with pytest.raises(ValueError, match="use one of auto, c, python"):
        relay_core.load("fast")


async def test_odd_header_on_the_c_path_is_not_overwritten_by_a_python_leg_in_the_same_round(core):
    """One drain finds a Python-path leg (a party that listens) ready before a C-path echo whose
    packet has a CSRC: the echo must send back its own caller's audio, not the other call's."""
    relay = MediaRelay(core)
    listener_phone, echo_phone = Phone(), Phone()
    try:
        heard = []
        listener = relay.open("127.0.0.1", 0, MediaStream(0))
        listener.on_payload = heard.append
        listener.remote = listener_phone.address
        echo = relay.open("127.0.0.1", 0, MediaStream(0))
        echo.echo = True
        echo.remote = echo_phone.address
        assert echo.on_c_path and not listener.on_c_path
        listener_phone.sock.sendto(RtpPacket(0, 1, 0, 0xAAAA, b"A" * 160).to_bytes(), listener.local_address)
        echo_phone.sock.sendto(RtpPacket(0, 1, 0, 0xBBBB, b"B" * 160, csrcs=(7,)).to_bytes(), echo.local_address)
        await asyncio.sleep(0.05)
        relay._drain()                      # both ready in one round, the listener's first
        await asyncio.sleep(0.02)
        [back] = echo_phone.drain()
        assert back[12:] == b"B" * 160 and heard == [b"A" * 160]
        assert echo.counters()["received"] == 1 and echo.counters()["foreign"] == 0   # (syncs the stream)
        assert echo.stream.remote_ssrc == 0xBBBB and listener.stream.remote_ssrc == 0xAAAA
    finally:
        relay.close()
        listener_phone.close()
        echo_phone.close()


async def test_a_new_stream_and_a_far_end_by_name_keep_the_leg_right(core):
    """The gateway replaces a leg's stream when the first description picks the codec; a far
    end given by name (not an IPv4 address) stays on the Python path, which resolves it."""
    relay = MediaRelay(core)
    phone = Phone()
    try:
        leg = relay.open("127.0.0.1", 0, MediaStream(0))
        leg.echo = True
        leg.remote = ("localhost", phone.address[1])
        assert not leg.on_c_path
        phone.sock.sendto(Packetiser(0, ssrc=5).datagram(PAYLOAD), leg.local_address)
        await asyncio.sleep(0.05)
        assert len(phone.drain()) == 1
        leg.remote = phone.address
        assert leg.on_c_path
        leg.stream = MediaStream(8, ssrc=9)          # PCMA now: a PCMU packet is foreign
        assert leg.on_c_path
        phone.sock.sendto(Packetiser(0, ssrc=5).datagram(PAYLOAD), leg.local_address)
        phone.sock.sendto(Packetiser(8, ssrc=6).datagram(PAYLOAD), leg.local_address)
        await asyncio.sleep(0.05)
        [back] = phone.drain()
        assert back[1] & 0x7F == 8 and back[8:12] == (9).to_bytes(4, "big")
        assert leg.counters()["foreign"] == 1 and leg.counters()["received"] == 1
    finally:
        relay.close()
        phone.close()


def test_relay_core_setting_any_case_and_bad_values_refused(tmp_path):
    from pydantic import ValidationError

    from ccmsec_srtp_gateway.main import GatewaySettings
    base = {"service": "srtp-gateway", "data_dir": tmp_path}
    assert GatewaySettings(**base, relay_core="C").relay_core == "c"
    with pytest.raises(ValidationError, match="relay_core"):
        GatewaySettings(**base, relay_core="fast")

"""PortAudio on real UDP ports: keys from the encryption-info blocks as call control sends them
(ENC-4), the lock condition (CALL-2: both directions SRTP), a re-key when a new block arrives
(transfer / resume), and RTP when the blocks carry no key."""

from __future__ import annotations

import asyncio
import socket

import pytest

from ccmsec.aio.media import PortAudio
from ccmsec.media import tones
from ccmsec.media.keys import to_encryption_info
from ccmsec.media.srtp import MasterKey
from ccmsec.wire.sccp import EncryptionInfo

pytestmark = pytest.mark.timeout(30)


class UdpPort(asyncio.DatagramProtocol):
    """The media-port seam call signalling leaves (bind, start/stop, send, callbacks), on a real
    socket: what a phone opens for OpenReceiveChannel."""

    def __init__(self):
        self.remote = None
        self.codec = 4
        self.rx_encryption = EncryptionInfo()
        self.tx_encryption = EncryptionInfo()
        self.on_datagram = self.on_start = self.on_stop = None
        self.transport = None

    @classmethod
    async def open(cls):
        _, port = await asyncio.get_running_loop().create_datagram_endpoint(cls, local_addr=("127.0.0.1", 0))
        return port

    @property
    def local(self):
        return self.transport.get_extra_info("sockname")[:2]

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        if self.on_datagram:
            self.on_datagram(data, addr)

    def start(self, remote, codec=4, encryption=None):
        self.remote, self.codec = remote, codec
        self.tx_encryption = encryption or EncryptionInfo()
        self.on_start(self)

    def stop(self):
        self.remote = None
        self.on_stop(self)

    def send(self, data):
        if self.remote is not None:
            self.transport.sendto(data, self.remote)

    def close(self):
        self.transport.close()


async def _wait(pred, timeout=5.0):
    end = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < end, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_enc4_call2_port_audio_srtp_both_ways_from_the_blocks():
    a_to_b, b_to_a = MasterKey.generate(), MasterKey.generate()
    pa, pb = await UdpPort.open(), await UdpPort.open()
    # OpenReceiveChannel: each phone's receive block carries the other direction's set
    pa.rx_encryption, pb.rx_encryption = to_encryption_info(b_to_a), to_encryption_info(a_to_b)
    a = PortAudio(pa, tones.tone(440).frame, record=True, keep_sent=True)
    b = PortAudio(pb, tones.tone(880).frame, record=True, keep_sent=True)
    assert not a.is_srtp  # receive keyed, not sending yet: no lock
    pa.start(pb.local, 4, to_encryption_info(a_to_b))   # StartMediaTransmission
    pb.start(pa.local, 4, to_encryption_info(b_to_a))
    await _wait(lambda: a.counters()["received"] >= 10 and b.counters()["received"] >= 10)
    assert a.is_srtp and b.is_srtp
    assert a.counters()["refused"] == 0 and b.counters()["refused"] == 0
    assert len(b.recording) >= 10 * 320 and b.sent_payloads and a.sent_payloads
    # a transfer: B's far end changes and the new block has no key (a non-secure phone): RTP
    pb.stop()
    pa.stop()
    c = await UdpPort.open()
    cc = PortAudio(c, tones.tone(300).frame)
    pb.rx_encryption = EncryptionInfo()
    pb.start(c.local, 4, EncryptionInfo())
    c.start(pb.local, 4, EncryptionInfo())
    before = b.counters()["received"]
    await _wait(lambda: b.counters()["received"] >= before + 10 and cc.counters()["received"] >= 10)
    assert not b.is_srtp and not cc.is_srtp and b.counters()["refused"] == 0
    for p, audio in ((pa, a), (pb, b), (c, cc)):
        audio.close()
        p.close()


async def test_enc2_a_phone_with_the_wrong_block_refuses_and_counts():
    right, wrong = MasterKey.generate(), MasterKey.generate()
    pa, pb = await UdpPort.open(), await UdpPort.open()
    pb.rx_encryption = to_encryption_info(wrong)
    b = PortAudio(pb)
    a = PortAudio(pa, tones.tone(440).frame)
    pa.start(pb.local, 4, to_encryption_info(right))
    await _wait(lambda: b.counters()["refused_authentication"] >= 5)
    assert b.counters()["received"] == 0
    a.close()
    pa.close()
    pb.close()

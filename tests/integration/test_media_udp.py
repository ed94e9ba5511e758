"""The asyncio UDP media adapter on loopback: paced 20 ms G.711 both ways, SRTP, counters; an
attacker's replayed and tampered datagrams arrive on the real socket and are refused (ENC-2)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from ccmsec.aio.media import MediaEndpoint
from ccmsec.media import tones
from ccmsec.media.srtp import MasterKey
from ccmsec.media.stream import MediaStream

pytestmark = pytest.mark.timeout(30)


async def _wait(pred, timeout=5.0):
    end = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < end, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_enc4_two_endpoints_exchange_paced_srtp_and_refuse_replay_and_tamper():
    k1, k2 = MasterKey.generate(), MasterKey.generate()
    a = await MediaEndpoint.open("127.0.0.1", stream=MediaStream(0, send_key=k1, receive_key=k2), record=True)
    b = await MediaEndpoint.open("127.0.0.1", stream=MediaStream(0, send_key=k2, receive_key=k1), record=True)
    captured = []
    real_send = a.stream.packet_for
    a.stream.packet_for = lambda pcm: captured.append(real_send(pcm)) or captured[-1]
    loop = asyncio.get_running_loop()
    started = loop.time()
    src = tones.tone(1004)
    frames = iter([src.frame() for _ in range(25)])
    a.start_sending(lambda: next(frames, None), b.local_address)
    b.start_sending(tones.tone(440).frame, a.local_address)
    await _wait(lambda: b.stream.counters.received == 25)
    elapsed = loop.time() - started
    assert 0.4 <= elapsed < 2.5, elapsed  # paced at 20 ms, not a burst
    await _wait(lambda: a.stream.counters.received >= 10)
    await b.stop_sending()
    # the attacker: replays one captured packet and flips a bit in another, from its own socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as evil:
        evil.sendto(captured[3], b.local_address)
        bad = bytearray(real_send(bytes(320)))  # a fresh index: refused for its tag, not as a replay
        bad[30] ^= 0x40
        evil.sendto(bytes(bad), b.local_address)
    await _wait(lambda: b.stream.counters.refused == 2)
    c = b.counters()
    assert (c["received"], c["lost"], c["refused_replay"], c["refused_authentication"]) == (25, 0, 1, 1)
    assert len(b.recording) == 25 * 320
    await a.close()
    await b.close()

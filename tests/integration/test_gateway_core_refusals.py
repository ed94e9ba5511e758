"""The gateway's media core (`Gateway`, no gRPC) on loopback UDP: a refused ModifyConnection
leaves the connection exactly as it was — a refusal is never half applied — and a modify that
keeps the keys keeps the SRTP sessions (replay window, rollover counter)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from ccmsec.aio import relay_core
from ccmsec.formats.sdp import audio_session
from ccmsec.media.srtp import MasterKey
from ccmsec.media.stream import AudioReceived, MediaStream
from ccmsec_srtp_gateway.gateway import Gateway
from ccmsec_srtp_gateway.mgcp import ConnectionMode, MgcpError

pytestmark = pytest.mark.timeout(30)

LINE = "aaln/S1/SU0/1@gw1"


async def test_a_refused_codec_change_does_not_change_the_connection_mode():
    gw = Gateway("gw1", "127.0.0.1", lines=2, relay_core=None)
    try:
        conn = await gw.create(endpoint=LINE, call_id="1", number="5550102", mode=ConnectionMode.INACTIVE,
                               remote_sdp=audio_session("127.0.0.1", 40000).to_text(), srtp=False,
                               send_key=None)
        with pytest.raises(MgcpError, match="534 codec change"):
            await gw.modify(endpoint=LINE, call_id="1", connection_id=conn.id, mode=ConnectionMode.SENDRECV,
                            remote_sdp=audio_session("127.0.0.1", 40002, payload_type=8).to_text(),
                            change_security=False, srtp=False, send_key=None)
        # still inactive: it neither sends nor receives, still to the first far end, still PCMU
        assert conn.mode is ConnectionMode.INACTIVE
        assert not conn.media.sending and not conn.media.receiving
        assert conn.remote == "127.0.0.1:40000" and conn.payload_type == 0
    finally:
        await gw.close()



async def test_a_huge_dialled_number_is_refused_in_a_short_message():
    """The refusal text becomes the gRPC status message: a number echoed back whole (100 kB here)
    passed the client's limit on trailing metadata, and the caller got no MGCP error at all."""
    gw = Gateway("gw1", "127.0.0.1", lines=2, relay_core=None)
    try:
        with pytest.raises(MgcpError, match="510 dialled number") as err:
            await gw.create(endpoint=LINE, call_id="1", number="9" * 100_000, mode=None, remote_sdp="",
                            srtp=False, send_key=None)
        assert len(str(err.value)) < 100 and not gw.connections
    finally:
        await gw.close()


async def test_a_media_port_that_cannot_be_opened_is_a_clear_502_not_a_traceback():
    """The socket's OSError escaped CreateConnection: the servicer maps only MGCP errors, so call
    control got gRPC UNKNOWN and the gateway logged a traceback."""
    gw = Gateway("gw1", "192.0.2.1", lines=2, relay_core=None)    # TEST-NET: not this host's
    try:
        with pytest.raises(MgcpError, match="502 insufficient resources: cannot open a media port") as err:
            await gw.create(endpoint=LINE, call_id="1", number="5550102", mode=None, remote_sdp="",
                            srtp=False, send_key=None)
        assert err.value.code == MgcpError.NO_RESOURCES
        assert not gw.connections and not gw._by_endpoint and not gw._talkers   # nothing half-made
    finally:
        await gw.close()

def _core(path):
    if path == "python":
        return None
    from tests.integration.test_media_relay_core import compiler_present
    if not compiler_present():
        pytest.skip("no C compiler (cc): the relay's C path cannot be built here")
    built, why = relay_core.build()
    assert built is not None, why
    return built


@pytest.mark.parametrize("path", ["python", "c"])
async def test_a_modify_with_the_same_keys_keeps_the_srtp_sessions_GW_1(path):
    """MDCX re-sending the same remote description (same a=crypto, same send key): the gateway's
    SRTP sessions go on. A new receive session emptied the replay window — a packet recorded
    before the modify was accepted again — and a new send session restarted the rollover counter,
    so after a sequence wrap the phone refused every packet the gateway sent."""
    up, down = MasterKey.generate(), MasterKey.generate()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    phone = MediaStream(0, send_key=up, receive_key=down)
    sdp = audio_session("127.0.0.1", sock.getsockname()[1], key=up).to_text()
    gw = Gateway("gw1", "127.0.0.1", lines=2, relay_core=_core(path))
    sent: list[bytes] = []

    def drain() -> int:
        heard = 0
        while True:
            try:
                back = sock.recv(2048)
            except BlockingIOError:
                return heard
            heard += isinstance(phone.receive(back), AudioReceived)

    async def exchange(n: int) -> int:
        heard = 0
        for _ in range(n):
            datagram = phone.packet_for(bytes(320))
            sent.append(datagram)
            sock.sendto(datagram, ("127.0.0.1", port))
            await asyncio.sleep(0.01)
            heard += drain()
        await asyncio.sleep(0.05)
        return heard + drain()

    try:
        conn = await gw.create(endpoint=LINE, call_id="1", number="5550102", mode=ConnectionMode.SENDRECV,
                               remote_sdp=sdp, srtp=True, send_key=down)
        assert conn.media.on_c_path is (path == "c")
        conn.media.receiving = False                         # off the C path: its state copied out
        conn.media.stream.packetiser.sequence = 65530        # the gateway's sequence wraps soon
        conn.media.receiving = True
        port = conn.media.local_address[1]
        assert await exchange(20) == 20                      # the echo, across the wrap
        await gw.modify(endpoint=LINE, call_id="1", connection_id=conn.id, mode=ConnectionMode.SENDRECV,
                        remote_sdp=sdp, change_security=False, srtp=False, send_key=None)
        assert conn.srtp and conn.media.on_c_path is (path == "c")
        before = conn.media.counters()
        sock.sendto(sent[3], ("127.0.0.1", port))            # replayed after the modify
        await asyncio.sleep(0.1)
        drain()
        after = conn.media.counters()
        assert after["refused_replay"] == before["refused_replay"] + 1
        assert after["received"] == before["received"]
        assert await exchange(20) == 20, "the phone refused the gateway's packets after the modify"
        assert phone.counters.refused_authentication == 0
    finally:
        await gw.close()
        sock.close()

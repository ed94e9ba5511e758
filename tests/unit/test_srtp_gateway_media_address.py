"""The SRTP gateway's media address in its SDP when it binds every address (compose: CCMSEC_HOST
0.0.0.0): the address it advertises, never 0.0.0.0 — a peer told 0.0.0.0 sends to itself, and the
echo of `demo --attach` never came back in compose."""

from __future__ import annotations

import asyncio

from ccmsec.formats.sdp import parse_sdp
from ccmsec_srtp_gateway.gateway import Gateway
from ccmsec_srtp_gateway.main import media_address


async def _sdp_host(gateway: Gateway) -> tuple[str, int]:
    try:
        conn = await gateway.create(endpoint="aaln/S1/SU0/1@gw", call_id="A1B2C3", number="5550102", mode=None,
                                    remote_sdp="", srtp=False, send_key=None)
        sd = parse_sdp(gateway.local_sdp(conn))
        audio = sd.audio()
        return audio.connection or sd.connection, audio.port
    finally:
        await gateway.close()


def test_a_gateway_on_every_address_advertises_its_own_address():
    host, port = asyncio.run(_sdp_host(Gateway("gw", "0.0.0.0", advertise="10.9.8.7")))
    assert host == "10.9.8.7" and port > 0


def test_bad_case_without_an_advertised_address_the_sdp_says_0_0_0_0():
    assert asyncio.run(_sdp_host(Gateway("gw", "0.0.0.0")))[0] == "0.0.0.0"
    # a gateway on its own address says that address, whatever is advertised
    assert asyncio.run(_sdp_host(Gateway("gw", "127.0.0.1", advertise="10.9.8.7")))[0] == "127.0.0.1"


def test_media_address_only_for_a_wildcard_and_never_loopback():
    assert media_address("127.0.0.7") is None
    found = media_address("0.0.0.0")
    assert found is None or not found.startswith("127.")

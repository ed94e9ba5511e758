"""The gateway's media core (`Gateway`, no gRPC) on loopback UDP: a refused ModifyConnection
leaves the connection exactly as it was — a refusal is never half applied."""

from __future__ import annotations

import pytest

from ccmsec.formats.sdp import audio_session
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

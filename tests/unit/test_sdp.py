"""SDP (RFC 4566) with SDES a=crypto (RFC 4568): round trips, the keys exactly, and clear errors
for bad input (GW-1: one SRTP key per stream, no second key, audio only)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings, strategies as st

from ccmsec.formats.sdp import CryptoAttribute, SdpError, audio_session, parse_sdp
from ccmsec.media.srtp import MasterKey, SrtpSuite


@pytest.mark.parametrize("suite", list(SrtpSuite))
def test_gw1_audio_session_with_crypto_round_trips_the_key_exactly(suite):
    key = MasterKey.generate(suite)
    text = audio_session("127.0.0.9", 40000, key=key, direction="recvonly", session_id=7).to_text()
    assert text.startswith("v=0\r\n") and text.endswith("\r\n")
    assert f"m=audio 40000 RTP/SAVP 0\r\n" in text and "c=IN IP4 127.0.0.9\r\n" in text
    inline = base64.b64encode(key.key + key.salt).decode()
    assert f"a=crypto:1 {suite.name} inline:{inline}\r\n" in text
    sd = parse_sdp(text)
    audio = sd.audio()
    assert audio.srtp and audio.port == 40000 and audio.direction == "recvonly"
    assert sd.address_of(audio) == "127.0.0.9"
    assert len(audio.crypto) == 1 and audio.crypto[0].key == key


def test_plain_rtp_session_has_no_crypto():
    sd = parse_sdp(audio_session("10.0.0.1", 5004, payload_type=8).to_text())
    assert not sd.audio().srtp and sd.audio().crypto == () and sd.audio().formats == ("8",)
    assert ("rtpmap", "8 PCMA/8000") in sd.audio().attributes


def test_parses_a_typical_foreign_offer_with_lifetime_and_session_params():
    key = MasterKey.generate()
    b64 = base64.b64encode(key.key_and_salt).decode()
    text = ("v=0\no=jdoe 2890844526 2890842807 IN IP4 10.47.16.5\ns=SDP Seminar\ni=info\n"
            "c=IN IP4 192.0.2.10\nt=2873397496 2873404696\na=recvonly\n"
            f"m=audio 49170 RTP/SAVP 0 8\na=rtpmap:0 PCMU/8000\na=crypto:7 AES_CM_128_HMAC_SHA1_80 inline:{b64}|2^20 KDR=0\n"
            "m=video 0 RTP/AVP 31\n")
    sd = parse_sdp(text)
    audio = sd.audio()
    assert sd.username == "jdoe" and sd.session_id == 2890844526 and sd.connection == "192.0.2.10"
    assert audio.direction == "recvonly" and audio.formats == ("0", "8")
    c = audio.crypto[0]
    assert (c.tag, c.lifetime, c.session_params, c.key) == (7, 1 << 20, ("KDR=0",), key)
    assert "|2^20 KDR=0" in c.value()


def test_session_params_that_ask_for_what_we_do_are_kept():
    """KDR=0 (one derivation), a replay-window hint within ours, optional '-' parameters (§6.3.7)."""
    key = MasterKey.generate()
    b64 = base64.b64encode(key.key_and_salt).decode()
    c = CryptoAttribute.parse(f"1 AES_CM_128_HMAC_SHA1_80 inline:{b64} KDR=0 WSH=64 WSH=1024 -X_OPTIONAL=7")
    assert c.key == key and c.session_params == ("KDR=0", "WSH=64", "WSH=1024", "-X_OPTIONAL=7")


B64 = base64.b64encode(bytes(30)).decode()
HEAD = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"


@pytest.mark.parametrize("text, words", [
    ("", "empty"),
    ("o=- 1 1 IN IP4 1.2.3.4\r\n", "starts with v="),
    ("v=1\r\n", "version"),
    ("v=0\r\ns=-\r\nt=0 0\r\n", "missing o="),
    ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nt=0 0\r\n", "missing s="),
    ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nm=audio 1 RTP/AVP 0\r\n", "m= before any t="),
    ("v=0\r\no=- x 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\n", "must be numbers"),
    ("v=0\r\ns=-\r\no=- 1 1 IN IP4 1.2.3.4\r\nt=0 0\r\n", "out of order"),
    (HEAD + "c=IN IP4 1.1.1.1\r\n", "out of order"),
    ("v=0\r\nv=0\r\n", "second 'v='"),
    (HEAD + "x=1\r\n", "not allowed"),
    (HEAD + "garbage\r\n", "not of the form"),
    (HEAD + "m=audio 99999 RTP/AVP 0\r\n", "not 0..65535"),
    (HEAD + "m=audio 1/2 RTP/AVP 0\r\n", "port counts"),
    (HEAD + "m=audio 1 RTP/AVP\r\n", "at least one format"),
    (HEAD.replace("127.0.0.1\r\nt", "224.0.0.1\r\nt"), "multicast"),
    (HEAD.replace("c=IN IP4 127.0.0.1", "c=IN IP6 ::1"), "IPv4 only"),
    (HEAD.replace("c=IN IP4 127.0.0.1", "c=IN IP4 nothere"), "not an IPv4"),
    (HEAD + "m=audio 1 RTP/AVP 0\r\na=sendonly\r\na=recvonly\r\n", "second direction"),
    (HEAD + f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{B64}\r\n", "belongs in a media section"),
    (HEAD + f"m=audio 1 RTP/AVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{B64}\r\n", "only for an RTP/SAVP audio"),
    (HEAD + f"m=video 1 RTP/SAVP 31\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{B64}\r\n", "audio only"),
    (HEAD + f"m=audio 1 RTP/SAVP 0\r\na=crypto:1 F8_128_HMAC_SHA1_80 inline:{B64}\r\n", "unsupported SRTP suite"),
    (HEAD + f"m=audio 1 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{B64[:-4]}\r\n", "needs 30 bytes"),
    (HEAD + "m=audio 1 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:!!!!\r\n", "not valid base64"),
    (HEAD + f"m=audio 1 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{B64}|2^20|1:4\r\n", "MKI"),
    (HEAD + f"m=audio 1 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{B64};inline:{B64}\r\n", "several keys"),
    (HEAD + f"m=audio 1 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{B64} FEC_KEY=inline:{B64}\r\n", "GW-1"),
    (HEAD + f"m=audio 1 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 key:{B64}\r\n", "must be 'inline:'"),
    # RFC 4568 §6.3: parameters that change how the stream is keyed or protected are refused, not ignored
    *[(HEAD + f"m=audio 1 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{B64} KDR=0 {param}\r\n",
       f"session parameter '{param}' refused: {words}") for param, words in [
        ("UNENCRYPTED_SRTP", "unencrypted SRTP is not supported"),
        ("UNENCRYPTED_SRTCP", "unencrypted SRTCP"),
        ("UNAUTHENTICATED_SRTP", "unauthenticated SRTP"),
        ("KDR=1", "key re-derivation"),
        ("KDR=24", "key re-derivation"),
        ("KDR=", "key re-derivation"),
        ("FEC_ORDER=FEC_SRTP", "forward error correction"),
        ("WSH=32", "window size hint"),
        ("WSH=4096", "window size hint"),
        ("WSH=x", "window size hint"),
        ("NEW_THING=1", "unknown mandatory session parameter"),
    ]],
    (HEAD + f"m=audio 1 RTP/SAVP 0\r\na=crypto:x AES_CM_128_HMAC_SHA1_80 inline:{B64}\r\n", "tag"),
    (HEAD + f"m=audio 1 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{B64}|2^99\r\n", "lifetime"),
    (HEAD + f"m=audio 1 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{B64}\r\n"
            f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{B64}\r\n", "used twice"),
    (HEAD + "a=\r\n", "bad attribute name"),
    (HEAD + "m=audio 1 RTP/AVP 0\r\n" * 9, "more than 8 media"),
    (HEAD + "a=x\r\n" * 200, "lines exceed"),
    (HEAD + "a=" + "x" * 2000 + "\r\n", "longer than"),
    ("v=0\r\n" + "a" * 9000, "exceeds"),
])
def test_bad_sdp_is_one_clear_error(text, words):
    with pytest.raises(SdpError, match=words):
        parse_sdp(text)


def test_bytes_input_must_be_utf8_and_no_audio_is_an_error():
    with pytest.raises(SdpError, match="not UTF-8"):
        parse_sdp(b"v=0\r\n\xff\r\n")
    sd = parse_sdp(HEAD + "m=audio 0 RTP/AVP 0\r\n")
    with pytest.raises(SdpError, match="no active audio"):
        sd.audio()


@given(st.text(max_size=400))
@settings(max_examples=300, deadline=None)
def test_parser_raises_only_sdp_error(text):
    try:
        parse_sdp(text)
    except SdpError:
        pass


@given(st.lists(st.sampled_from(["v=0", "o=- 1 1 IN IP4 1.2.3.4", "s=-", "c=IN IP4 1.2.3.4", "t=0 0",
                                 "m=audio 9 RTP/SAVP 0", "a=sendonly", f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{B64}",
                                 "m=audio 9 RTP/AVP 0", "a=rtpmap:0 PCMU/8000", "b=AS:64"]), max_size=14))
@settings(max_examples=300, deadline=None)
def test_shuffled_valid_lines_parse_or_fail_cleanly(lines):
    try:
        sd = parse_sdp("\r\n".join(lines) + "\r\n")
    except SdpError:
        return
    assert parse_sdp(sd.to_text()) == sd

"""MGCP vocabulary of the gateway's control API (RFC 3435): endpoint names and wildcards,
connection modes, call ids — with clear errors for bad names."""

from __future__ import annotations

import pytest

from ccmsec_srtp_gateway.mgcp import ConnectionMode, MgcpError, check_call_id, check_number, parse_endpoint
from ccmsec_srtp_gateway.pstn import EchoParty, NUMBERS, party_for


def test_endpoint_names_and_wildcards():
    line1 = parse_endpoint("aaln/S1/SU0/1@gw1")
    assert str(line1) == "aaln/S1/SU0/1@gw1" and line1.wildcard is None
    assert parse_endpoint("AALN/s1/su0/1@GW1").matches(line1)  # case-insensitive
    assert parse_endpoint("aaln/S1/SU0/$@gw1").matches(line1)
    assert parse_endpoint("aaln/S1/SU0/*@gw1").matches(line1)
    assert parse_endpoint("*@gw1").matches(line1)
    assert not parse_endpoint("aaln/S1/SU0/2@gw1").matches(line1)
    assert not parse_endpoint("aaln/S1/SU0/1@gw2").matches(line1)
    assert not parse_endpoint("aaln/S1/SU1/*@gw1").matches(line1)
    assert parse_endpoint("ds/ds1-1/3@[127.0.0.1]").domain == "[127.0.0.1]"


@pytest.mark.parametrize("name, words", [
    ("", "missing"),
    ("aaln/S1/SU0/1", "<local name>@<gateway>"),
    ("@gw1", "<local name>@<gateway>"),
    ("aaln/*/1@gw1", "only as the last term"),
    ("aaln//1@gw1", "bad term"),
    ("aaln/S1 x/1@gw1", "bad term"),
    ("aaln/1@-gw", "bad gateway domain"),
    ("a" * 300 + "@gw1", "longer than 255"),
    ("aaln/S1/SU0/1\n@gw1", "bad term"),           # `$` in a regex lets a final newline in
    ("aaln/S1/SU0/1@gw1\n", "bad gateway domain"),
])
def test_bad_endpoint_names(name, words):
    with pytest.raises(MgcpError, match=words) as err:
        parse_endpoint(name)
    assert err.value.code == 510


def test_modes_call_ids_and_numbers():
    assert ConnectionMode.SENDRECV.sends and ConnectionMode.SENDRECV.receives
    assert ConnectionMode.RECVONLY.receives and not ConnectionMode.RECVONLY.sends
    assert ConnectionMode.SENDONLY.sends and not ConnectionMode.SENDONLY.receives
    assert not ConnectionMode.INACTIVE.sends and not ConnectionMode.INACTIVE.receives
    assert ConnectionMode.from_proto(0, ConnectionMode.SENDRECV) is ConnectionMode.SENDRECV
    with pytest.raises(MgcpError, match="517"):
        ConnectionMode.from_proto(7, None)
    assert check_call_id("a1b2") == "A1B2"
    for bad in ("", "x", "1" * 33, "1A\n"):
        with pytest.raises(MgcpError, match="hexadecimal"):
            check_call_id(bad)
    assert isinstance(party_for("5550102", 0), EchoParty) and party_for("999", 0) is None
    tone = party_for("5550100", 8)
    frames = [tone.payload() for _ in range(51)]
    assert len(frames[0]) == 160 and frames[50] == frames[0]  # a seamless one-second loop
    assert set(NUMBERS) == {"5550100", "5550101", "5550102"}


def test_dialled_numbers_are_bounded_and_never_echoed_back_whole():
    assert check_number("5550102") == "5550102" and check_number("*67#") == "*67#"
    assert check_number("") == ""       # no number: the telephone network says it has none
    for bad in ("9" * 100_000, "555 0102", "5550102\n", "555\u0661"):
        with pytest.raises(MgcpError, match="at most 32 digits") as err:
            check_number(bad)
        assert err.value.code == 510 and len(str(err.value)) < 100


def test_local_connection_options_choose_a_g711_codec_and_refuse_any_other():
    """RFC 3435 `L:` (`ccmsec.wire.mgcp`): `a:` names the connection's codec, the first listed;
    the gateway speaks PCMU and PCMA only — anything else is refused 534, never replaced."""
    from ccmsec.wire.mgcp import for_payload_type, parse_local_options
    from ccmsec_srtp_gateway.mgcp import parse_local_options as gateway_options
    assert parse_local_options("").payload_type is None
    assert parse_local_options("a:PCMA").payload_types == (8,)
    assert parse_local_options("p:20, a:pcmu;PCMA").payload_types == (0, 8)
    assert for_payload_type(8).to_text() == "a:PCMA" and for_payload_type(0).to_text() == "a:PCMU"
    with pytest.raises(ValueError):
        for_payload_type(18)
    for text, code, words in [("a:G729", 534, "codec negotiation failure"),
                              ("a:PCMU;G722", 534, "'G722' not supported"),
                              ("p:30", 532, "20 ms only"), ("e:on", 532, "not supported"),
                              ("a:", 510, "<name>:<value>"), ("a:PCMU, a:PCMA", 510, "twice"),
                              ("a:" + "X" * 300, 510, "longer than")]:
        with pytest.raises(MgcpError) as exc:
            gateway_options(text)
        assert exc.value.code == code and words in str(exc.value), (text, exc.value)
        assert len(str(exc.value)) < 200      # bounded: never the whole input echoed back

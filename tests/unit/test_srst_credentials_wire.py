"""The SRST credentials exchange (TLS 2445, SRST-2): framing, bounds and garbage."""

from __future__ import annotations

import pytest

from ccmsec.wire import srstcreds as w


def test_request_and_answer_round_trip_in_any_chunking():
    client = w.CredentialsClientSession("callmanager")
    server = w.CredentialsServerSession()
    request = client.request()
    asked = None
    for i in range(len(request)):  # one byte at a time
        asked = server.receive(request[i:i + 1]) or asked
    assert asked == w.GetCertificate("callmanager")
    answer = server.answer(b"\x30\x82der")
    assert client.receive(answer[:5]) is None
    assert client.receive(answer[5:]) == w.Certificate(b"\x30\x82der")


def test_refusal_reaches_the_client():
    client = w.CredentialsClientSession()
    reply = client.receive(w.CredentialsServerSession.refuse("not one of our call-control servers"))
    assert reply == w.CredentialsError("not one of our call-control servers")


@pytest.mark.parametrize("data, problem", [
    (b"XXXX\x01\x01\x00\x00\x00\x00", "bad magic"),
    (b"SRSC\x02\x01\x00\x00\x00\x00", "unsupported version"),
    (b"SRSC\x01\x09\x00\x00\x00\x00", "unknown message type"),
    (b"SRSC\x01\x02\x00\x01\x00\x00", "exceeds"),          # a 64 KiB certificate
    (b"SRSC\x01\x02\x00\x00\x00\x00", "empty"),
    (b"SRSC\x01\x03\x00\x00\x00\x02\xff\xfe", "not UTF-8"),
])
def test_garbage_is_refused_with_a_reason(data, problem):
    with pytest.raises(w.CredentialsProtocolError, match=problem):
        w.FrameReader().feed(data)


def test_server_takes_one_short_request_only():
    server = w.CredentialsServerSession()
    with pytest.raises(w.CredentialsProtocolError, match="exceeds"):
        server.receive(b"SRSC\x01\x01\x00\x00\x10\x00")   # a 4 KiB "name" is not a request
    server = w.CredentialsServerSession()
    two = w.encode(w.GetCertificate("a")) * 2
    with pytest.raises(w.CredentialsProtocolError, match="one GetCertificate"):
        server.receive(two)
    with pytest.raises(w.CredentialsProtocolError, match="expects GetCertificate"):
        w.CredentialsServerSession().receive(w.encode(w.Certificate(b"x")))


def test_names_are_bounded():
    with pytest.raises(w.CredentialsProtocolError):
        w.encode(w.GetCertificate("x" * 300))
    with pytest.raises(w.CredentialsProtocolError, match="not a DER"):
        w.Certificate(b"junk").certificate()


def test_a_refusal_of_any_length_and_script_is_sent_cut_to_the_bound():
    for reason in ("é" * 200, "x" * 1000, "路由器" * 100):
        reply = w.CredentialsClientSession().receive(w.CredentialsServerSession.refuse(reason))
        assert isinstance(reply, w.CredentialsError) and reason.startswith(reply.reason)
        assert 0 < len(reply.reason.encode()) <= w.MAX_TEXT

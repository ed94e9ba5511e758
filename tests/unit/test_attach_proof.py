"""Pieces of `ccmsec demo --attach` that need no cluster: the wire proof's audio check and the CTL
Provider's port as the command line reaches it (the published one when it listens everywhere)."""

from __future__ import annotations

import os
from types import SimpleNamespace

from ccmsec.ctlclient import provider_port
from ccmsec.media.capture import StreamReport, audio_proof


def _audio(n: int) -> list[bytes]:
    return [bytes((i * 7 + k) % 251 for k in range(160)) for i in range(n)]


def test_audio_proof_no_plaintext_and_the_audio_sent():
    sent = _audio(20)
    captured = [os.urandom(12) + os.urandom(160) + os.urandom(10) for _ in sent]   # what SRTP looks like
    report = StreamReport(("127.0.0.1", 1), ("127.0.0.1", 2), packets=20, suite="AES_CM_128_HMAC_SHA1_80",
                          decrypted=20, payloads=list(sent))
    assert audio_proof(report, captured, sent) == (
        "plaintext audio in 0 of 20 packets; decrypted back to the audio sent: yes (20 of 20 frames)")


def test_audio_proof_bad_cases_plaintext_seen_and_audio_not_the_one_sent():
    sent = _audio(20)
    leaked = [b"\x80\x00" + bytes(10) + p for p in sent[:3]] + [os.urandom(172) for _ in sent[3:]]
    report = StreamReport(("127.0.0.1", 1), ("127.0.0.1", 2), packets=20, suite="AES_CM_128_HMAC_SHA1_80",
                          decrypted=19, payloads=list(sent[:19]))
    line = audio_proof(report, leaked, sent)
    assert line.startswith("plaintext audio in 3 of 20 packets")
    assert line.endswith("decrypted back to the audio sent: NO (19 of 20 frames)")
    other = StreamReport(("127.0.0.1", 1), ("127.0.0.1", 2), payloads=_audio(21)[1:])
    assert "audio sent: NO" in audio_proof(other, [], sent)


def test_provider_port_published_when_the_provider_listens_everywhere():
    svc = {"host": "127.0.0.1", "grpc_port": 15051, "ctl_provider_port": 40444}
    assert provider_port(SimpleNamespace(host="0.0.0.0", listening_port=2444), svc) == 40444
    # the bad case of always taking the endpoints' port: a provider on its own address keeps its port
    assert provider_port(SimpleNamespace(host="127.5.6.2", listening_port=2555), svc) == 2555
    assert provider_port(SimpleNamespace(host="0.0.0.0", listening_port=2444), {"host": "capf"}) == 2444

"""SRST fallback call processing on real sockets (SRST-1): the router's SCCP 2000 and TLS 2443
listeners with the registration decision call control uses, the call-processing core, and phones
that call each other with real audio.

* only phones of the directory register (an unknown device is refused, SRST-1);
* TLS: the router presents its own self-signed certificate, the phone pins it (CERT-6); a phone
  certificate from an issuer the directory does not name is refused (CERT-2);
* calls by directory number, with audio both ways, and the fallback notice on each phone;
* keys made on the router, in the encryption-info blocks, only when both phones are encrypted on
  TLS and security is configured on the reference (ENC-3/4/5, SRST-2); otherwise RTP;
* the directory survives call control's absence: the last copy on disk is used;
* a held party hears tone on hold streamed from the router (decoded from the real packets) in a
  G.711 law it offered, SRTP exactly when the call is (ENC-3/4, SRST-2); a phone offering neither
  law plays tone on hold itself and is sent nothing (CALL-9); resume stops either; the key made
  for the tone goes with its stream, and a call held again gets a fresh one.
"""

from __future__ import annotations

import asyncio

import pytest

from ccmsec.aio.media import PortAudio
from ccmsec.aio.sccp import SccpConnectError, SccpRegistrationRejected, connect_phone
from ccmsec.aio.sccp_calling import CallingPhone
from ccmsec.domain import ClusterMode, DeviceSecurityMode
from ccmsec.media import tones
from ccmsec.pki import tls
from ccmsec.pki.ca import Issued, create_ca, name, new_key
from ccmsec.pki.lsc import issue_lsc
from ccmsec.pki.servercert import ensure_server_certificate
from ccmsec.policy.calls import EndpointKind
from ccmsec.wire import sccp as s
from ccmsec.wire.sccp_calls import CallStateCode as CS
from ccmsec.wire.sccp_calls import Tone
from ccmsec_proto import callmanager_pb2 as pb
from ccmsec_srst.fallback import FALLBACK_NOTICE, FallbackCallControl, SrstDirectory

pytestmark = pytest.mark.timeout(90)

KEY = new_key()
PHONES = {  # name: (model, device type, mode, number)
    "SEP0000005A5701": ("7970", 30006, DeviceSecurityMode.ENCRYPTED, "4001"),
    "SEP0000005A5702": ("7960", 7, DeviceSecurityMode.ENCRYPTED, "4002"),
    "SEP0000005A5703": ("7960", 7, DeviceSecurityMode.NON_SECURE, "4003"),
    "SEP0000005A5704": ("7960", 7, DeviceSecurityMode.NON_SECURE, "4004"),
}
A, B, C, D = PHONES


def der(cert):
    from cryptography.hazmat.primitives import serialization
    return cert.public_bytes(serialization.Encoding.DER)


async def wait_for(predicate, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


class Router:
    def __init__(self, tmp_path, secure=True):
        self.capf = _ca("CAPF-test")
        self.identity = ensure_server_certificate(tmp_path / "router", "srst", ip="127.0.0.1")
        self.secure = secure
        self.answers = 0
        self.fail = False
        self.directory = SrstDirectory(tmp_path / "srst-data", self.fetch)

    def snapshot(self) -> pb.SrstDirectory:
        reply = pb.SrstDirectory(cluster_mode=ClusterMode.MIXED.to_proto(), generated_unix_ms=1,
                                 reference="BRANCH", secure=self.secure, lsc_issuers=[der(self.capf.cert)])
        for n, (model, _, mode, dn) in PHONES.items():
            reply.phones.append(pb.SrstPhone(device=n, model=model, mode=mode.to_proto(),
                                             lines=[pb.Line(dn=dn, device=n, line_index=1)]))
        return reply

    async def fetch(self):
        if self.fail:
            raise ConnectionError("call control unreachable")
        self.answers += 1
        return self.snapshot()


def _ca(cn) -> Issued:
    return create_ca(name(cn))


@pytest.fixture
async def router(tmp_path):
    r = Router(tmp_path)
    assert await r.directory.refresh()
    fb = FallbackCallControl("srst", "127.0.0.1", 0, 0, r.identity, r.directory, keepalive_interval=5)
    await fb.start()
    r.fb = fb
    yield r
    await fb.close()


async def phone(r, name, audio=None, *, lsc_ca=None, plain=False, codecs=(4,)):
    model, device_type, mode, _ = PHONES[name]
    register = s.Register(name, "127.0.0.1", device_type=device_type)
    if mode is DeviceSecurityMode.NON_SECURE or plain:
        conn = await connect_phone("127.0.0.1", r.fb.plain.port, register)
    else:
        lsc = Issued(issue_lsc(lsc_ca or r.capf, name, KEY.public_key()), KEY)
        ctx = tls.sccp_phone_context(mode, [r.identity.cert], lsc=lsc)   # pinned: the SRST certificate
        conn = await connect_phone("127.0.0.1", r.fb.tls.port, register, ssl_context=ctx,
                                   pinned_ccm_certificates=[r.identity.cert])
    conn.session.capabilities = s.CapabilitiesRes(tuple(s.MediaCapability(cd) for cd in codecs),
                                                  encryption_capable=mode is DeviceSecurityMode.ENCRYPTED)
    src = tones.tone(400 + 100 * list(PHONES).index(name))

    def on_media(what, port):
        if what == "open" and audio is not None:
            audio[name] = PortAudio(port, src.frame, record=True)
    p = CallingPhone(conn, bind_host="127.0.0.1", on_media=on_media)
    await p.wait_ready()
    return p


async def call(caller, callee, number, audio, names):
    caller.act(caller.display.dial, number)
    await callee.wait_for(lambda d: any(cl.state == CS.RING_IN for cl in d.calls.values()), what="ringing")
    callee.act(callee.display.answer)
    await wait_for(lambda: all(n in audio and audio[n].counters()["received"] >= 10 for n in names), 15)


def _metric(name: str, **labels) -> float:
    """The router's own metrics (issue 16), as its /metrics endpoint would show them."""
    from ccmsec.runtime.metrics import REGISTRY

    if name in ("ccmsec_phones_registered", "ccmsec_calls_in_progress"):  # read at scrape time
        for family in REGISTRY.collect():
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_fallback_registration_notice_and_calls_SRST_1(router):
    audio = {}
    accepted = _metric("ccmsec_phone_registrations_total", node="srst", mode="non-secure")
    c, d = await phone(router, C, audio), await phone(router, D, audio)
    for p in (c, d):
        assert FALLBACK_NOTICE in p.display.notifications    # the phone shows it is in fallback
    assert sorted(router.fb.registered()) == [C, D]
    assert _metric("ccmsec_phone_registrations_total", node="srst", mode="non-secure") == accepted + 2
    assert _metric("ccmsec_phones_registered", node="srst", mode="non-secure") == 2
    await call(c, d, "4004", audio, [C, D])
    assert _metric("ccmsec_calls_in_progress", node="srst", security="non-secure") == 1
    assert not audio[C].is_srtp and not audio[D].is_srtp     # non-secure phones: RTP
    c.act(c.display.hang_up)
    await d.wait_for(lambda disp: not disp.calls, what="the call cleared on the far phone")
    for p in (c, d):
        await p.close()
    await wait_for(lambda: not router.fb.registrations)


async def test_unknown_devices_and_foreign_certificates_are_refused_SRST_1_CERT_2(router):
    refused = _metric("ccmsec_phone_registration_refusals_total", node="srst", rule="SRST-1")
    conn = await connect_phone("127.0.0.1", router.fb.plain.port, s.Register("SEP0000005A57FF", "127.0.0.1"))
    with pytest.raises(SccpRegistrationRejected, match="SRST-1"):
        await conn.wait_registered()
    await conn.close()
    assert _metric("ccmsec_phone_registration_refusals_total", node="srst", rule="SRST-1") == refused + 1
    other_ca = _ca("Not-our-CAPF")
    with pytest.raises((SccpConnectError, SccpRegistrationRejected, ConnectionError, TimeoutError)):
        await phone(router, A, lsc_ca=other_ca)
    assert A not in router.fb.registrations


async def test_encrypted_phones_get_keys_made_on_the_router_ENC_4_SRST_2(router):
    audio = {}
    a, b = await phone(router, A, audio), await phone(router, B, audio)
    await call(a, b, "4002", audio, [A, B])
    assert audio[A].is_srtp and audio[B].is_srtp
    assert [cl.icon for cl in a.display.calls.values()] == ["lock"]
    a.act(a.display.hang_up)
    await b.wait_for(lambda disp: not disp.calls, what="the call cleared")
    await wait_for(lambda: len(router.fb.keys.ring) == 0)    # keys live only as long as the call
    for p in (a, b):
        await p.close()


async def test_no_keys_when_the_reference_is_not_secure_SRST_2(router):
    """Without security on the reference the phones' files carry no certificate to pin: secure
    phones fall back non-secure on 2000 (TLS is refused), and calls are RTP."""
    router.secure = False
    assert await router.directory.refresh()
    with pytest.raises((SccpConnectError, SccpRegistrationRejected, ConnectionError, TimeoutError)):
        await phone(router, A)
    audio = {}
    a, b = await phone(router, A, audio, plain=True), await phone(router, B, audio, plain=True)
    await call(a, b, "4002", audio, [A, B])
    assert not audio[A].is_srtp and not audio[B].is_srtp
    for p in (a, b):
        await p.close()


async def test_the_last_directory_serves_when_call_control_is_gone(router, tmp_path):
    router.fail = True
    assert not await router.directory.refresh() and "unreachable" in router.directory.last_error
    assert A in router.directory.phones                       # still the last answer in memory
    fresh = SrstDirectory(tmp_path / "srst-data", router.fetch)
    assert fresh.load_file() and set(fresh.phones) == set(PHONES)   # and on disk (restart)
    assert fresh.trust.capf == router.capf.cert
    mode = oct(fresh.path.stat().st_mode & 0o777)
    assert mode == "0o600", mode


async def test_a_new_capf_certificate_in_the_directory_is_trusted_on_2443_CERT_2(router):
    """The 2443 listener follows the directory's issuers. Its context was rebuilt only when the
    issuers' `id()`s changed — and a refresh frees the old certificate objects, so CPython hands
    their addresses to the next ones: with a new CAPF certificate at a reused id the listener kept
    the old CA and refused every phone enrolled by the new CAPF. Refreshing until the ids repeat
    (with that bug it takes a few refreshes; without it they cannot repeat: the listener holds the
    certificates it was built for), then a phone enrolled by the new CAPF must register."""
    # the listener's context was built at start for CAPF 1 (no phone yet: a registration's chain
    # check would keep these certificate objects alive in its cache of trust stores)
    built = tuple(id(c) for c in router.directory.trust.tls_anchors)
    router.capf = _ca("CAPF-rekeyed")                          # CAPF's certificate replaced
    for _ in range(200):
        assert await router.directory.refresh()
        if tuple(id(c) for c in router.directory.trust.tls_anchors) == built:
            break
    assert router.directory.trust.capf == router.capf.cert
    a = await phone(router, A)                                  # an LSC from the new CAPF
    assert A in router.fb.registrations
    await a.close()


# -- hold in fallback: tone on hold ---------------------------------------------------------------

G729 = 18
TONE_ON_HOLD_HZ = 1400   # tones.tone_on_hold(); the phones' own tones are 400..700 Hz


def _level(pcm: bytes, freq: float) -> float:
    """Goertzel: how much of `freq` the decoded 16-bit PCM holds."""
    import math
    import struct

    n = len(pcm) // 2
    coeff = 2 * math.cos(2 * math.pi * freq / 8000)
    s1 = s2 = 0.0
    for x in struct.unpack(f"<{n}h", pcm[:2 * n]):
        s1, s2 = x + coeff * s1 - s2, s1
    return math.sqrt(max(s1 * s1 + s2 * s2 - coeff * s1 * s2, 0.0)) / max(n, 1)


async def _hears_tone_on_hold(audio, name, before):
    """The held phone's new receive channel (its talking one was closed) carries the router's tone
    on hold: real packets, decoded; nothing refused (an SRTP key mismatch would be)."""
    await wait_for(lambda: audio[name] is not before and audio[name].counters()["received"] >= 25, 15)
    held = audio[name]
    counters = held.counters()
    assert counters["refused"] == counters["refused_authentication"] == counters["malformed"] == 0
    heard = bytes(held.recording)
    assert _level(heard, TONE_ON_HOLD_HZ) > 20 * _level(heard, 400 + 100 * list(PHONES).index(name))
    return held


async def _resume_stops_it(router, holder, audio, name, held):
    holder.act(holder.display.resume)
    await wait_for(lambda: not router.fb.hold_tones.audio and not router.fb.hold_tones.keys)
    await wait_for(lambda: audio[name] is not held and audio[name].counters()["received"] >= 10)
    received = held.counters()["received"]
    await asyncio.sleep(0.3)
    assert held.counters()["received"] == received     # the tone stopped with its stream


async def test_a_held_encrypted_phone_hears_tone_on_hold_over_srtp_SRST_1_ENC_4_CALL_9(router):
    """The fix: before, a party held in fallback heard silence (no music on hold, and the tone
    on hold came only with music). Now the router streams it, keyed like the call: SRTP."""
    audio = {}
    a, b = await phone(router, A, audio), await phone(router, B, audio)
    await call(a, b, "4002", audio, [A, B])
    talking = audio[B]
    assert talking.is_srtp
    a.act(a.display.hold)
    held = await _hears_tone_on_hold(audio, B, talking)
    assert held.stream.receive_srtp                   # the call is SRTP, so is its tone on hold
    (key,) = router.fb.hold_tones.audio
    assert key[0] is EndpointKind.TONE_ON_HOLD
    assert router.fb.hold_tones.keys[key].is_encrypted
    assert all(cl.tone != Tone.HOLD for cl in b.display.calls.values())   # streamed, not local
    await _resume_stops_it(router, a, audio, B, held)
    assert audio[B].is_srtp and audio[A].is_srtp
    assert [cl.icon for cl in b.display.calls.values()] == ["lock"]
    a.act(a.display.hang_up)
    await b.wait_for(lambda disp: not disp.calls, what="the call cleared")
    for p in (a, b):
        await p.close()


async def test_tone_on_hold_is_rtp_when_the_call_is_ENC_3_SRST_2(router):
    """An encrypted phone in a call with a non-secure one: the call is RTP, and so is the tone
    on hold the encrypted phone hears when held — the call's protection, no key of its own."""
    audio = {}
    a, c = await phone(router, A, audio), await phone(router, C, audio)
    await call(a, c, "4003", audio, [A, C])
    talking = audio[A]
    assert not talking.is_srtp
    c.act(c.display.hold)
    held = await _hears_tone_on_hold(audio, A, talking)
    assert not held.stream.receive_srtp
    assert not any(info.is_encrypted for info in router.fb.hold_tones.keys.values())
    await _resume_stops_it(router, c, audio, A, held)
    for p in (a, c):
        await p.close()


async def test_a_held_phone_offering_no_g711_law_gets_the_tone_path_not_a_stream_CALL_9(router):
    """The bad case: D offers G.729 only. Held, it is sent no stream in a codec it never offered:
    it plays tone on hold itself (StartTone hold), and resume stops it. The other way round C,
    which offers µ-law too, hears the router's tone on hold (RTP: a non-secure call)."""
    audio = {}
    c = await phone(router, C, audio, codecs=(G729, 4))
    d = await phone(router, D, audio, codecs=(G729,))
    await call(c, d, "4004", audio, [C, D])
    c.act(c.display.hold)
    await d.wait_for(lambda disp: any(cl.tone == Tone.HOLD for cl in disp.calls.values()),
                     what="tone on hold played by the phone")
    assert not router.fb.hold_tones.audio and not router.fb.resources.ports
    c.act(c.display.resume)
    await d.wait_for(lambda disp: all(cl.tone == 0 for cl in disp.calls.values()), what="tone stopped")
    await wait_for(lambda: all(audio[n].counters()["received"] >= 5 for n in (C, D)))
    talking = audio[C]
    d.act(d.display.hold)
    held = await _hears_tone_on_hold(audio, C, talking)
    assert held.port.codec == 4 and not held.stream.receive_srtp
    await _resume_stops_it(router, d, audio, C, held)
    for p in (c, d):
        await p.close()


def _tone_key(router):
    """The one tone-on-hold stream on the router and the key block made for it."""
    (key,) = router.fb.hold_tones.keys
    assert set(router.fb.hold_tones.audio) == {key} and key in router.fb.resources.ports
    return key, router.fb.hold_tones.keys[key]


async def _no_tone_key(router):
    await wait_for(lambda: not router.fb.hold_tones.keys and not router.fb.hold_tones.audio
                   and not router.fb.resources.ports)


async def test_a_tone_on_hold_key_lives_only_as_long_as_its_stream_SRST_1_ENC_4(router):
    """The SRTP key the router makes for a held phone's tone on hold goes with the stream: on
    resume, and a call held again gets a fresh key — never the old one (same call, same held leg,
    same stream name) —; on the held party hanging up; on the call cleared by the holding phone's
    unregistering; and on the router shutting down with a call on hold."""
    audio = {}
    a, b = await phone(router, A, audio), await phone(router, B, audio)
    await call(a, b, "4002", audio, [A, B])
    a.act(a.display.hold)
    held = await _hears_tone_on_hold(audio, B, audio[B])
    stream, first = _tone_key(router)
    assert first.is_encrypted
    await _resume_stops_it(router, a, audio, B, held)          # resume: the key is gone
    a.act(a.display.hold)
    await _hears_tone_on_hold(audio, B, audio[B])
    again, second = _tone_key(router)
    assert again == stream and second.is_encrypted
    assert (second.key, second.salt) != (first.key, first.salt)   # bad case: the old key again
    b.act(b.display.hang_up)                                    # the held party hangs up
    await a.wait_for(lambda disp: not disp.calls, what="the call cleared")
    await _no_tone_key(router)
    # the call cleared by the holding phone's going (unregistered: connection closed)
    audio.clear()
    await call(a, b, "4002", audio, [A, B])
    a.act(a.display.hold)
    await _hears_tone_on_hold(audio, B, audio[B])
    assert _tone_key(router)[1].is_encrypted
    await a.close()
    await b.wait_for(lambda disp: not disp.calls, what="the call cleared")
    await _no_tone_key(router)
    # the router shutting down while a call is on hold
    a = await phone(router, A, audio)
    audio.clear()
    await call(a, b, "4002", audio, [A, B])
    a.act(a.display.hold)
    await _hears_tone_on_hold(audio, B, audio[B])
    assert _tone_key(router)[1].is_encrypted
    await router.fb.close()
    assert not router.fb.hold_tones.keys and not router.fb.hold_tones.audio
    for p in (a, b):
        await p.close()

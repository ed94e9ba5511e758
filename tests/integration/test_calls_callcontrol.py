"""Call control as a real SCCP call agent: phones register over TCP 2000 and TLS 2443, finish the
set-up exchange, call each other, open real UDP media ports, and see each call's security status.

`CallControl` runs in process with a migrated SQLite database (no bus, no gRPC); phones are
`ccmsec.aio.sccp_calling.CallingPhone`s — the same adapter phone-sim uses. The whole cluster
(gRPC, CLI, phone-sim) is exercised in tests/e2e/test_calls.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ccmsec.aio.sccp import SccpRegistrationRejected, connect_phone
from ccmsec.aio.sccp_calling import CallingPhone
from ccmsec.calls.config import AgentSettings
from ccmsec.db import calls as calls_db
from ccmsec.db.devices import Device
from ccmsec_callmanager.cluster_state import ClusterState, ClusterStateFollower
from ccmsec.db.lines import Line
from ccmsec.pki.ca import Issued, load_pair, new_key
from ccmsec.pki.lsc import issue_lsc
from ccmsec.pki.tls import sccp_phone_context
from ccmsec.runtime.database import open_database
from ccmsec.wire import sccp as s
from ccmsec.wire.sccp_calls import CallStateCode as CS
from ccmsec.wire.sccp_calls import Tone
from ccmsec_callmanager.callcontrol import CallControl, CallControlConfig

pytestmark = pytest.mark.timeout(90)

HOST = "127.0.0.1"
KEY = new_key()
PHONES = {  # name: (model, mode, directory numbers)
    "SEP0000000C0A01": ("7970", "encrypted", ["2001"]),
    "SEP0000000C0A02": ("7960", "encrypted", ["2002", "2900"]),
    "SEP0000000C0A03": ("7960", "non-secure", ["2003"]),
    "SEP0000000C0A04": ("7940", "authenticated", ["2004", "2900"]),
}
A, B, C, D = PHONES


class Cluster:
    def __init__(self, cc: CallControl, data: Path):
        self.cc, self.data = cc, data
        self.capf = load_pair(data / "pki" / "capf.crt", data / "pki" / "capf.key")
        self.phones: dict[str, CallingPhone] = {}

    async def phone(self, name: str) -> CallingPhone:
        model, mode, _ = PHONES[name]
        device_type = {"7970": 30006, "7960": 7, "7940": 8}[model]
        if mode == "non-secure":
            conn = await connect_phone(HOST, self.cc.plain.port, s.Register(name, HOST, device_type=device_type))
        else:
            lsc = Issued(issue_lsc(self.capf, name, KEY.public_key()), KEY)
            ctx = sccp_phone_context(mode, [self.cc.server_certificate], lsc=lsc)
            conn = await connect_phone(HOST, self.cc.tls.port, s.Register(name, HOST, device_type=device_type),
                                       ssl_context=ctx, pinned_ccm_certificates=[self.cc.server_certificate])
        caps = s.CapabilitiesRes((s.MediaCapability(4), s.MediaCapability(2)),
                                 encryption_capable=mode == "encrypted")
        conn.session.capabilities = caps
        phone = CallingPhone(conn, bind_host=HOST)
        await phone.wait_ready()
        self.phones[name] = phone
        return phone

    async def close(self):
        for phone in self.phones.values():
            await phone.close()


@pytest.fixture
async def cluster(tmp_path):
    engine, sm = await open_database(f"sqlite:///{tmp_path / 'ccmsec.db'}")
    async with sm() as session, session.begin():
        for name, (model, mode, dns) in PHONES.items():
            session.add(Device(name=name, model=model, security_mode=mode))
        await session.flush()
        for name, (model, mode, dns) in PHONES.items():
            for index, dn in enumerate(dns, 1):
                session.add(Line(dn=dn, device=name, line_index=index, label=""))
        session.add(calls_db.SpeedDial(device=A, idx=1, number="2002", label="Bob"))
    config = CallControlConfig("callmanager", HOST, 0, 0, tmp_path, agent=AgentSettings(
        inter_digit_timeout=0.5, no_answer_timeout=2.0, server_name="callmanager"))
    # a mixed cluster with a CTL, as its owner (the CTL Provider) would tell call control
    cc = CallControl(config, sm, cluster_state=ClusterStateFollower.fixed(ClusterState("mixed", True, 1)))
    await cc.start()
    cl = Cluster(cc, tmp_path)
    yield cl
    await cl.close()
    await cc.close()
    await engine.dispose()


async def poll(predicate, what: str, timeout: float = 5.0) -> None:
    """For conditions no phone event announces (a datagram reaching a port)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"no {what} within {timeout} s")
        await asyncio.sleep(0.02)


def calls_of(phone: CallingPhone, state: CS) -> list:
    return [c for c in phone.display.calls.values() if c.state == state]


async def connected(phone: CallingPhone):
    await phone.wait_for(lambda d: any(c.state == CS.CONNECTED for c in d.calls.values())
                         and all(ch.tx for ch in d.channels.values()) and d.channels,
                         what="a connected call with media")
    return calls_of(phone, CS.CONNECTED)[0]


async def test_setup_exchange_over_tls_shows_lines_speed_dials_and_softkeys(cluster):
    a = await cluster.phone(A)
    b = await cluster.phone(B)
    assert a.display.lines[1].number == "2001" and a.display.speed_dials == {1: ("2002", "Bob")}
    assert [ln.number for _, ln in sorted(b.display.lines.items())] == ["2002", "2900"]
    assert a.display.config.device_name == A and a.display.servers[0].name == "callmanager"
    assert "Barge" in a.display.softkey_labels.values()


async def test_encrypted_phones_call_over_tls_with_real_media_ports_and_hang_up(cluster):
    a, b = await cluster.phone(A), await cluster.phone(B)
    a.act(a.display.dial, "2002")
    await b.wait_for(lambda d: calls_of_d(d, CS.RING_IN), what="ringing")
    b.act(b.display.answer)
    ca, cb = await connected(a), await connected(b)
    # CALL-1 before SRTP: both devices encrypted, media RTP -> authenticated (shield), not lock.
    assert ca.icon == cb.icon == "shield"
    (view,) = cluster.cc.calls.calls()
    assert view.status == 2 and view.reasons[0].startswith("media not SRTP")
    # issue 16: the metrics endpoint counts it under the status the phones show
    assert calls_metric() == {"non-secure": 0, "authenticated": 1, "encrypted": 0}
    # The addresses exchanged are real UDP ports: a datagram from A's port reaches B's.
    (pa,), (pb,) = a.ports.ports.values(), b.ports.ports.values()
    assert pa.remote == pb.local and pb.remote == pa.local
    pa.send(b"probe")
    await poll(lambda: pb.datagrams_in == 1, "a datagram on B's media port")
    # No keys on the wire before the media issue: the encryption-info blocks are empty.
    assert not pa.rx_encryption.is_encrypted and not pa.tx_encryption.is_encrypted
    a.act(a.display.hang_up)
    await b.wait_for(lambda d: not d.calls and not d.channels, what="the call cleared")
    assert not b.ports.ports and not a.ports.ports and not cluster.cc.calls.agent.calls
    assert calls_metric() == {"non-secure": 0, "authenticated": 0, "encrypted": 0}


def calls_of_d(display, state):
    return [c for c in display.calls.values() if c.state == state]


def calls_metric() -> dict[str, float]:
    """ccmsec_calls_in_progress{node="callmanager"} by security, read as a scrape reads it."""
    from ccmsec.runtime.metrics import REGISTRY

    return {security: REGISTRY.get_sample_value("ccmsec_calls_in_progress",
                                                {"node": "callmanager", "security": security})
            for security in ("non-secure", "authenticated", "encrypted")}


async def test_non_secure_phone_on_2000_makes_the_call_non_secure(cluster):
    a, c = await cluster.phone(A), await cluster.phone(C)
    c.act(c.display.dial, "2001")
    await a.wait_for(lambda d: calls_of_d(d, CS.RING_IN), what="ringing")
    a.act(a.display.answer)
    ca, cc_ = await connected(a), await connected(c)
    assert ca.icon == cc_.icon == "none" and ca.security == 1
    assert calls_metric() == {"non-secure": 1, "authenticated": 0, "encrypted": 0}


async def test_a_phone_that_disappears_mid_call_clears_the_other_side(cluster):
    a, b = await cluster.phone(A), await cluster.phone(B)
    a.act(a.display.dial, "2002")
    await b.wait_for(lambda d: calls_of_d(d, CS.RING_IN), what="ringing")
    b.act(b.display.answer)
    await connected(a)
    a.act(a.display.hold)
    await b.wait_for(lambda d: "music on hold" in cluster.cc.calls.calls()[0].resources,
                     what="music on hold")
    moh_ports = dict(cluster.cc.calls.resources.ports.ports)
    assert len(moh_ports) == 1
    await a.conn.close()   # the phone vanishes (TCP closed) while its call is held
    await b.wait_for(lambda d: not d.calls and not d.channels, what="the call cleared")
    assert cluster.cc.calls.agent.calls == {} and cluster.cc.calls.resources.ports.ports == {}
    assert all(p.closed for p in moh_ports.values())


async def test_shared_line_first_answer_wins_and_barge_refused_with_busy_tone(cluster):
    """2900 is on B (encrypted) and D (authenticated). A (encrypted) calls 2900; B answers; D sees
    the call in use remote and barges: CALL-4 refuses (D is not encrypted) with busy tone."""
    a, b, d = await cluster.phone(A), await cluster.phone(B), await cluster.phone(D)
    a.act(a.display.dial, "2900")
    await b.wait_for(lambda x: calls_of_d(x, CS.RING_IN), what="ringing on B")
    await d.wait_for(lambda x: calls_of_d(x, CS.RING_IN), what="ringing on D")
    b.act(b.display.answer)
    await connected(b)
    await d.wait_for(lambda x: calls_of_d(x, CS.REMOTE_MULTILINE), what="in use remote")
    d.act(d.display.barge)
    await d.wait_for(lambda x: calls_of_d(x, CS.BUSY), what="the refused barge")
    (refused,) = calls_of_d(d.display, CS.BUSY)
    assert refused.tone == Tone.BUSY
    (view,) = cluster.cc.calls.calls()
    assert sorted(lg.device for lg in view.legs) == [A, B]


async def test_cti_port_and_trunk_are_real_non_secure_participants(cluster):
    a = await cluster.phone(A)
    svc = cluster.cc.calls
    assert {"CTI7000", "CTI7001", "ICT-CLUSTER2"} <= set(svc.virtual)
    a.act(a.display.dial, "7000")
    await a.wait_for(lambda d: calls_of_d(d, CS.RING_OUT), what="ring-back")
    svc.cti("CTI7000", "answer")
    ca = await connected(a)
    assert ca.icon == "none"
    (view,) = svc.calls()
    assert view.rule == "CALL-3" and any("cti" in r for r in view.reasons)
    cti_port = next(iter(svc.virtual["CTI7000"].ports.ports.values()))
    assert next(iter(a.ports.ports.values())).remote == cti_port.local
    svc.cti("CTI7000", "hangup")
    await a.wait_for(lambda d: not d.calls, what="cleared by the CTI port")
    a.act(a.display.dial, "8123")   # the trunk's pattern: the far cluster answers
    ca = await connected(a)
    assert ca.icon == "none" and svc.calls()[0].rule == "CALL-3"
    a.act(a.display.hang_up)
    await a.wait_for(lambda d: not d.calls)
    with pytest.raises(Exception, match="no CTI port"):
        svc.cti("CTI9999", "dial", "2001")


async def test_unknown_number_busy_and_speed_dial(cluster):
    a, b = await cluster.phone(A), await cluster.phone(B)
    a.act(a.display.dial, "2999")
    await a.wait_for(lambda d: calls_of_d(d, CS.INVALID_NUMBER), what="unknown number")
    assert calls_of_d(a.display, CS.INVALID_NUMBER)[0].tone == Tone.REORDER
    a.act(a.display.hang_up)
    await a.wait_for(lambda d: not d.calls)
    a.act(a.display._send, s.OffHook())
    await a.wait_for(lambda d: calls_of_d(d, CS.OFF_HOOK))
    assert calls_of_d(a.display, CS.OFF_HOOK)[0].tone == Tone.DIAL
    a.act(a.display.keypad, "2002")
    await b.wait_for(lambda d: calls_of_d(d, CS.RING_IN), what="ringing after keypad digits")
    await asyncio.sleep(0)


def _tone_power(pcm: bytes, freq: float, rate: int = 8000) -> float:
    """Goertzel: the power of one frequency in 16-bit little-endian PCM (normalised per sample)."""
    import array
    import math

    samples = array.array("h")
    samples.frombytes(pcm[: len(pcm) - len(pcm) % 2])
    coeff = 2 * math.cos(2 * math.pi * freq / rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coeff * s1 - s2, s1
    return (s1 * s1 + s2 * s2 - coeff * s1 * s2) / max(1, len(samples)) ** 2


async def test_conference_bridge_mixes_everyone_else_never_your_own_voice(cluster):
    """Ad hoc conference (issue 10): the bridge really mixes. Each phone talks at its own pitch;
    through the bridge each hears the two others and not itself. The call shows non-secure
    (CALL-3: the bridge) on every phone."""
    from ccmsec.aio.media import PhoneAudio

    pitches = {A: 500.0, B: 800.0, C: 1300.0}
    phones, audio = {}, {}
    for name, pitch in pitches.items():
        phones[name] = await cluster.phone(name)
        audio[name] = PhoneAudio(pitch, record=True)
        phones[name].on_media = audio[name].hook
    a, b, c = phones[A], phones[B], phones[C]
    a.act(a.display.dial, "2002")
    await b.wait_for(lambda d: calls_of_d(d, CS.RING_IN), what="B ringing")
    b.act(b.display.answer)
    await connected(a)
    a.act(a.display.conference)
    await a.wait_for(lambda d: calls_of_d(d, CS.OFF_HOOK), what="the consultation's dial tone")
    a.act(a.display.keypad, "2003")
    await c.wait_for(lambda d: calls_of_d(d, CS.RING_IN), what="C ringing")
    c.act(c.display.answer)
    await connected(c)
    a.act(a.display.conference, a.display.active_call().reference)
    await a.wait_for(lambda d: len(d.calls) == 1 and calls_of_d(d, CS.CONNECTED), what="the conference")
    (view,) = cluster.cc.calls.calls()
    assert "conference bridge" in view.resources and sorted(lg.device for lg in view.legs) == [A, B, C]
    bridge_ports = {p.local for p in cluster.cc.calls.resources.ports.ports.values()}
    for phone in phones.values():
        await phone.wait_for(lambda d: d.channels and all(ch.tx in bridge_ports for ch in d.channels.values()),
                             what="media through the bridge")
        await phone.wait_for(lambda d: all(cl.icon == "none" for cl in d.calls.values()), what="non-secure")
    # listen to one second of the conference on each phone's bridge stream
    marks = {}
    for name in phones:
        (port,) = phones[name].ports.ports.values()
        marks[name] = (port, len(audio[name].of(port).recording))
    await poll(lambda: all(len(audio[n].of(p).recording) - at >= 8000 * 2 for n, (p, at) in marks.items()),
               "a second of mixed audio on every phone", timeout=10)
    for name, (port, at) in marks.items():
        heard = bytes(audio[name].of(port).recording[at:])
        own = _tone_power(heard, pitches[name])
        others = [_tone_power(heard, p) for n, p in pitches.items() if n != name]
        assert min(others) > 50 * max(own, 1.0), (name, own, others)
    # C leaves: back to a direct call A-B without the bridge, its streams freed
    c.act(c.display.hang_up)
    await a.wait_for(lambda d: all(ch.tx not in bridge_ports for ch in d.channels.values()) and d.channels,
                     what="a direct call again")
    await poll(lambda: not cluster.cc.calls.resources.bridges, "the bridge freed")


async def test_registers_are_decided_in_the_callback_when_everything_is_at_hand(cluster):
    """With the cluster mode, the device snapshot and the directory fresh, a Register is decided
    in the adapter's callback (issue 15: no task and no event-loop turn per phone in a storm),
    with the outcome of the awaiting path: accepted with its lines, refused with the same rule.
    Whatever needs a look-up — the first Register (snapshots to load), a device the snapshot does
    not hold, a snapshot dropped by a reset — still takes the awaiting path."""
    cc = cluster.cc
    later: list[str] = []
    awaiting = cc._decide_later

    def counting(request):
        later.append(request.device_name)
        return awaiting(request)
    cc._decide_later = counting

    await cluster.phone(A)                       # snapshots not loaded yet: awaited
    b = await cluster.phone(B)                   # decided at once, same profile as ever
    assert later == [A]
    assert [ln.number for _, ln in sorted(b.display.lines.items())] == ["2002", "2900"]
    assert cc.registry.get(B).certificate_kind == "LSC"

    # refused at once with the rule the awaiting path gives: an LSC naming another device
    wrong = Issued(issue_lsc(cluster.capf, A, KEY.public_key()), KEY)
    ctx = sccp_phone_context("authenticated", [cc.server_certificate], lsc=wrong)
    conn = await connect_phone(HOST, cc.tls.port, s.Register(D, HOST, device_type=8), ssl_context=ctx)
    with pytest.raises(SccpRegistrationRejected, match="AUTH-2"):
        await conn.wait_registered()
    await conn.close()
    assert later == [A] and cc.registry.refusals[-1].reason.startswith("AUTH-2")

    # not in the snapshot: asked of the database (unknown in mixed mode: MODE-4)
    unknown = "SEP0000000C0AFF"
    ctx = sccp_phone_context("encrypted", [cc.server_certificate],
                             lsc=Issued(issue_lsc(cluster.capf, unknown, KEY.public_key()), KEY))
    conn = await connect_phone(HOST, cc.tls.port, s.Register(unknown, HOST, device_type=30006), ssl_context=ctx)
    with pytest.raises(SccpRegistrationRejected, match="MODE-4"):
        await conn.wait_registered()
    await conn.close()
    assert later == [A, unknown]

    cc.forget_devices()                          # as before any reset: fresh data first
    await cluster.phone(C)
    assert later == [A, unknown, C]

"""Encrypted calls end to end with the real services in process — callmanager (SCCP over TLS and
clear TCP, the call agent), keymanager and srtp-gateway on their own loopback addresses, gRPC
over mutual TLS with the authorization policy, NATS — and phones that send and receive real
G.711 audio over UDP. Everything is captured with dumpcap and checked from the wire:

* ENC-3/ENC-4: two encrypted phones get both key sets, crossed, over TLS; libsrtp with the keys
  read from the TLS-decrypted SCCP (key log) decrypts every captured packet; no plaintext.
* ENC-5: a phone on port 2000 and a phone on an integrity-only (NULL) TLS connection never receive
  key material — every encryption-info block sent to them, read from the capture, is empty.
* GW-1: a call to the gateway's echo number is SRTP on the gateway leg, keys through SDP.
* CALL-1/CALL-2: the status each phone shows follows (lock only when both directions are SRTP).
"""

from __future__ import annotations

import asyncio
import secrets
import shutil

import pytest
import pytest_asyncio

from ccmsec.aio.media import PortAudio
from ccmsec.aio.sccp import connect_phone
from ccmsec.aio.sccp_calling import CallingPhone
from ccmsec.calls.config import AgentSettings  # noqa: F401
from ccmsec.cluster.pki import issue_service_identity
from ccmsec.db.devices import SETTING_CTL_VERSION, SETTING_SECURITY_MODE, Device, set_setting
from ccmsec.db.lines import Line
from ccmsec.media import tones
from ccmsec.media.capture import CaptureError, LoopbackCapture, capture_available, sccp_from_capture, verify_capture
from ccmsec.pki import tls
from ccmsec.pki.ca import Issued, load_pair, new_key
from ccmsec.pki.lsc import issue_lsc
from ccmsec.runtime.database import open_database
from ccmsec.runtime.settings import load_settings
from ccmsec.wire import sccp as s
from ccmsec.wire.sccp_calls import CallStateCode as CS
from ccmsec_callmanager.main import CallManagerService
from ccmsec_ctl_provider.main import CtlProviderService
from ccmsec_keymanager.main import KeyManagerService
from ccmsec_srtp_gateway.main import GatewaySettings, SrtpGatewayService
from tests.conftest import free_port
from tests.integration.test_callmanager_service import pki_template, wait_for  # noqa: F401
from tests.integration.test_srtp_gateway_service import module_nats  # noqa: F401

pytestmark = [pytest.mark.timeout(120), pytest.mark.asyncio(loop_scope="module")]

KEY = new_key()
PHONES = {  # name: (model, device type, mode, number)
    "SEP0000000E0A01": ("7970", 30006, "encrypted", "3001"),
    "SEP0000000E0A02": ("7960", 7, "encrypted", "3002"),
    "SEP0000000E0A03": ("7960", 7, "non-secure", "3003"),
    "SEP0000000E0A04": ("7940", 8, "authenticated", "3004"),
}
A, B, C, D = PHONES


class Cluster:
    pass


async def _service(cls, settings, subscriptions):
    svc = cls(settings)
    task = asyncio.create_task(svc.run())
    # serving once its subscriptions are in place: the base ones come after setup and gRPC start
    # (callmanager's 8 of its own are made during setup, the cluster mode's first)
    await wait_for(lambda: task.done() or (svc.bus is not None and len(svc.bus._subs) >= subscriptions), timeout=30)
    if task.done():
        task.result()
    return svc, task


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory, module_nats, pki_template):
    if capture_available():
        pytest.skip(capture_available())
    data = tmp_path_factory.mktemp("secure-calls")
    for folder in ("pki", "servers"):
        shutil.copytree(pki_template / folder, data / folder)
    base = f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250)}"
    hosts = {"callmanager": f"{base}.5", "keymanager": f"{base}.6", "srtp-gateway": f"{base}.7",
             "ctl-provider": f"{base}.2"}  # the cluster mode's owner: call control asks it
    for role, host in hosts.items():
        issue_service_identity(data, role, role, host)
    engine, sm = await open_database(f"sqlite+aiosqlite:///{data / 'ccmsec.db'}")
    async with sm() as session, session.begin():
        await set_setting(session, SETTING_CTL_VERSION, "1")
        await set_setting(session, SETTING_SECURITY_MODE, "mixed")
        for name, (model, _, mode, dn) in PHONES.items():
            session.add(Device(name=name, model=model, security_mode=mode))
        await session.flush()
        for name, (_, _, _, dn) in PHONES.items():
            session.add(Line(dn=dn, device=name, line_index=1, label=""))
    await engine.dispose()
    common = dict(data_dir=data, metrics_port=0, nats_url=module_nats, shutdown_grace=1.0,
                  bus_connect_timeout=10, peers=hosts)
    cm = hosts["callmanager"]
    started = []
    for cls, role, extra, settings_cls, subs in (
            (CtlProviderService, "ctl-provider", dict(ctl_provider_port=free_port(hosts["ctl-provider"])), None, 2),
            (KeyManagerService, "keymanager", {}, None, 2),
            (SrtpGatewayService, "srtp-gateway", {}, GatewaySettings, 3),
            (CallManagerService, "callmanager", dict(sccp_port=free_port(cm), sccp_tls_port=free_port(cm),
                                                     admin_port=free_port(cm)), None, 10)):
        args = dict(service=role, host=hosts[role], grpc_port=50051, **common, **extra)
        settings = load_settings(settings_cls, **args) if settings_cls else load_settings(**args)
        started.append(await _service(cls, settings, subs))
    c = Cluster()
    c.data, c.hosts = data, hosts
    c.cm = started[3][0]
    c.gw = started[2][0]
    c.cc = c.cm.callcontrol
    await c.cm.key_pool.wait_ready(2, timeout=20)
    c.keylog = data / "sccp-keys.log"
    c.capf = load_pair(data / "pki" / "capf.crt", data / "pki" / "capf.key")
    yield c
    for svc, task in reversed(started):
        svc.request_stop()
        await asyncio.wait_for(task, 15)


async def _phone(c, name, audio):
    model, device_type, mode, _ = PHONES[name]
    host = c.hosts["callmanager"]
    register = s.Register(name, "127.0.0.1", device_type=device_type)
    if mode == "non-secure":
        conn = await connect_phone(host, c.cc.plain.port, register)
    else:
        lsc = Issued(issue_lsc(c.capf, name, KEY.public_key()), KEY)
        ctx = tls.enable_keylog(tls.sccp_phone_context(mode, [c.cc.server_certificate], lsc=lsc), c.keylog)
        conn = await connect_phone(host, c.cc.tls.port, register, ssl_context=ctx,
                                   pinned_ccm_certificates=[c.cc.server_certificate])
    conn.session.capabilities = s.CapabilitiesRes((s.MediaCapability(4),), encryption_capable=mode == "encrypted")
    src = tones.tone(400 + 100 * list(PHONES).index(name))

    def on_media(what, port):
        if what == "open":
            audio[name] = PortAudio(port, src.frame, record=True, keep_sent=True)
    phone = CallingPhone(conn, bind_host="127.0.0.1", on_media=on_media)
    await phone.wait_ready()
    return phone


async def _talk(caller, callee, number, audio, names, packets=25):
    caller.act(caller.display.dial, number)
    if callee is not None:
        await callee.wait_for(lambda d: any(cl.ringing or cl.state == CS.RING_IN for cl in d.calls.values()),
                              what="ringing")
        callee.act(callee.display.answer)
    await wait_for(lambda: all(n in audio and audio[n].counters()["received"] >= packets for n in names), 15)


async def _hang_up(phone):
    phone.act(phone.display.hang_up)
    await phone.wait_for(lambda d: not d.calls, what="the call cleared")


async def test_enc3_enc4_enc5_gw1_secure_and_insecure_calls_proved_from_the_wire(cluster):
    c = cluster
    cm = c.hosts["callmanager"]
    cap = LoopbackCapture(bpf=f"(host {cm} and tcp) or udp", directory=c.data)
    try:
        await asyncio.to_thread(cap.start)
    except CaptureError as exc:
        pytest.skip(str(exc))
    audio: dict[str, PortAudio] = {}
    shown = {}
    try:
        a, b, cp, d = [await _phone(c, n, audio) for n in (A, B, C, D)]
        # 1. encrypted <-> encrypted over TLS: SRTP both ways, the lock
        await _talk(a, b, "3002", audio, [A, B])
        shown["ab"] = ([cl.icon for cl in a.display.calls.values()], [cl.icon for cl in b.display.calls.values()])
        ab_srtp = (audio[A].is_srtp, audio[B].is_srtp)
        # hold: B hears music on hold over plain RTP and the lock goes; resume brings it back (GW-3)
        a.act(a.display.hold)
        await b.wait_for(lambda d: any(cl.icon == "none" for cl in d.calls.values()), what="the status on hold")
        await wait_for(lambda: B in audio and audio[B].counters()["received"] >= 10 and not audio[B].is_srtp, 10)
        moh = (audio[B].is_srtp, audio[B].counters()["refused"])
        a.act(a.display.resume)
        await b.wait_for(lambda d: any(cl.icon == "lock" for cl in d.calls.values()), what="the lock after resume")
        await wait_for(lambda: audio[A].is_srtp and audio[B].is_srtp and audio[B].counters()["received"] >= 10, 10)
        await _hang_up(a)
        audio.clear()
        # 2. encrypted -> the gateway's echo number: SRTP on the gateway leg
        await _talk(a, None, "5550102", audio, [A])
        shown["gw"] = [cl.icon for cl in a.display.calls.values()]
        gw_srtp = audio[A].is_srtp
        await _hang_up(a)
        audio.clear()
        # 3. non-secure (port 2000) -> encrypted: RTP, no keys for anyone
        await _talk(cp, b, "3002", audio, [C, B])
        shown["cb"] = ([cl.icon for cl in cp.display.calls.values()], [cl.icon for cl in b.display.calls.values()])
        await _hang_up(cp)
        audio.clear()
        # 4. authenticated (NULL cipher) -> encrypted: RTP, no keys for anyone
        await _talk(d, a, "3001", audio, [D, A])
        shown["da"] = ([cl.icon for cl in d.display.calls.values()], [cl.icon for cl in a.display.calls.values()])
        await _hang_up(d)
        for p in (a, b, cp, d):
            await p.close()
    finally:
        await asyncio.to_thread(cap.stop)
    assert ab_srtp == (True, True) and shown["ab"] == (["lock"], ["lock"])
    assert moh == (False, 0)   # music on hold: RTP, nothing refused
    assert gw_srtp and shown["gw"] == ["lock"]
    assert shown["cb"] == (["none"], ["none"]) and shown["da"] == (["shield"], ["shield"])
    # --- from the wire --------------------------------------------------------------------------
    tls_msgs = await asyncio.to_thread(sccp_from_capture, cap.path, c.cc.tls.port, keylog=c.keylog)
    plain_msgs = await asyncio.to_thread(sccp_from_capture, cap.path, c.cc.plain.port)
    media_blocks = lambda msgs: [m.encryption for d_, m in msgs if d_ == "to-phone" and isinstance(
        m, (s.OpenReceiveChannel, s.StartMediaTransmission))]
    keyed = [blk for blk in media_blocks(tls_msgs) if blk.is_encrypted]
    assert len(keyed) >= 6   # A and B (call 1): 2 blocks each; A (gateway call): 2
    assert plain_msgs and all(not blk.is_encrypted and blk.key == b"" for blk in media_blocks(plain_msgs))  # ENC-5
    raw = cap.path.read_bytes()
    assert not any(blk.key in raw for blk in keyed)  # the keys never crossed the wire in the clear
    # D's connection is integrity-only TLS: the blocks sent to D carried no key either (ENC-5)
    by_device = await asyncio.to_thread(sccp_from_capture, cap.path, c.cc.tls.port, keylog=c.keylog, by_device=True)
    to = lambda name: [m.encryption for dev, d_, m in by_device if dev == name and d_ == "to-phone"
                       and isinstance(m, (s.OpenReceiveChannel, s.StartMediaTransmission))]
    assert len(to(D)) >= 2 and all(not blk.is_encrypted and blk.key == b"" for blk in to(D))
    assert any(blk.is_encrypted for blk in to(A)) and any(blk.is_encrypted for blk in to(B))
    # every SRTP stream decrypts under the key its StartMediaTransmission carried; no plaintext
    reports = await asyncio.to_thread(verify_capture, cap.path, sccp_port=c.cc.tls.port, keylog=c.keylog,
                                      media=await asyncio.to_thread(cap.datagrams))
    srtp = [r for r in reports if r.srtp]
    lines = [r.line() for r in reports]
    assert all(r.refused == 0 and r.decrypted == r.packets for r in srtp), lines
    assert len([r for r in srtp if r.packets >= 20]) >= 3, lines   # A->B, B->A, A->gateway at least

"""The srtp-gateway service in process with a real call manager (cluster mode), real NATS,
gRPC over mutual TLS and UDP media on loopback; an IP "phone" is a `MediaEndpoint`.

GW-1 (keys for the SRTP stream, as SDP a=crypto), GW-2 (RTP when told or when the gateway has no
SRTP), GW-3 (fallback to RTP with a modify), GW-4 (SRTP only in mixed mode; the control link
needs this cluster's client certificate), MGCP semantics and bad input."""

from __future__ import annotations

import asyncio
import shutil
import socket

import grpc
import pytest
import pytest_asyncio

from ccmsec.aio.media import MediaEndpoint
from ccmsec.db.devices import SETTING_CTL_VERSION, SETTING_SECURITY_MODE, cluster_security_mode, set_setting
from ccmsec.domain import ClusterMode
from ccmsec.runtime.bus import EventBus, make_event
from ccmsec.formats.sdp import audio_session, parse_sdp
from ccmsec.media import tones
from ccmsec.media.keys import to_proto
from ccmsec.media.srtp import MasterKey
from ccmsec.media.stream import MediaStream
from ccmsec.runtime.grpcio import secure_channel
from ccmsec.runtime.identity import client_identity, service_identity
from ccmsec.runtime.settings import load_settings
from ccmsec_proto import callmanager_pb2_grpc, common_pb2, events_pb2
from ccmsec_proto import srtp_gateway_pb2 as pb
from ccmsec_proto import srtp_gateway_pb2_grpc
from ccmsec_srtp_gateway.main import GatewaySettings, SrtpGatewayService
from tests.conftest import free_port
from tests.ownerdb import owner_db
from tests.integration.test_callmanager_service import _start, pki_template, wait_for  # noqa: F401

pytestmark = [pytest.mark.timeout(90), pytest.mark.asyncio(loop_scope="module")]

TONE, ANNOUNCEMENT, ECHO = "5550100", "5550101", "5550102"


class Cluster:
    def __init__(self, data, cm_svc, cm_task, gw_svc, gw_task):
        self.data, self.cm_svc, self.cm_task, self.gw_svc, self.gw_task = data, cm_svc, cm_task, gw_svc, gw_task
        ident = client_identity(data)  # the administrator: cluster mode
        self.cc_ident = call_control_identity(data)  # call control drives the gateway
        self.gw_channel = secure_channel(self.cc_ident, "127.0.0.1", gw_svc.settings.grpc_port, "srtp-gateway")
        self.cm_channel = secure_channel(ident, cm_svc.settings.host, cm_svc.settings.grpc_port, "callmanager")
        self.gw = srtp_gateway_pb2_grpc.SrtpGatewayStub(self.gw_channel)
        self.cm = callmanager_pb2_grpc.CallManagerStub(self.cm_channel)

    async def set_mode(self, mode):
        """As the mode's owner, ctl-provider, changes it (issue 9 §5): stored in its table, then
        `mode.changed`, which the gateway follows (the RST-3 resets are not sent here)."""
        known = self.gw_svc.cluster_mode.mode
        if known == mode or (known is None and mode == common_pb2.CLUSTER_NON_SECURE):
            return
        async with owner_db(self.cm_svc.settings.db_url, "ctl-provider") as db, db() as session, session.begin():
            previous = await cluster_security_mode(session)
            await set_setting(session, SETTING_SECURITY_MODE, ClusterMode.from_proto(mode).value)
        bus = EventBus(self.cm_svc.settings.nats_url, "test-ctl-provider", role="ctl-provider")
        await bus.connect()
        try:
            await bus.publish(make_event("mode.changed", "ctl-provider", mode_changed=events_pb2.SecurityModeChanged(
                mode=mode, previous=previous.to_proto(), actor="cli/cli", rule="MODE-2")))
        finally:
            await bus.close()
        await wait_for(lambda: self.gw_svc.cluster_mode.mode == mode, 10)

    async def mixed(self):
        async with owner_db(self.cm_svc.settings.db_url, "ctl-provider") as db, db() as session, session.begin():
            await set_setting(session, SETTING_CTL_VERSION, "1")
        await self.set_mode(common_pb2.CLUSTER_MIXED)


def call_control_identity(data):
    from ccmsec.cluster.pki import issue_service_identity
    return issue_service_identity(data, "callmanager", "cc-test", "127.0.0.1", out_dir=data / "cc-test")


async def _start_gateway(tmp_path, nats_url, cm_host, **extra):
    service_identity(tmp_path, "srtp-gateway", "srtp-gateway", "127.0.0.1")
    settings = load_settings(GatewaySettings, service="srtp-gateway", data_dir=tmp_path, host="127.0.0.1",
                             grpc_port=free_port(), metrics_port=0, nats_url=nats_url, shutdown_grace=1.0,
                             bus_connect_timeout=10, peers={"callmanager": cm_host or "127.0.0.1"}, **extra)
    svc = SrtpGatewayService(settings)
    task = asyncio.create_task(svc.run())
    await wait_for(lambda: task.done() or (svc.bus is not None and len(svc.bus._subs) >= 3), timeout=20)
    if task.done():
        task.result()
    return svc, task


@pytest.fixture(scope="module")
def module_nats(tmp_path_factory):
    """One NATS for the module (call manager and gateway start once: they are the slow part)."""
    import subprocess
    import time
    import socket
    from tests.conftest import nats_binary
    port = free_port()
    proc = subprocess.Popen([nats_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd",
                             str(tmp_path_factory.mktemp("nats"))], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"nats://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory, module_nats, pki_template):
    tmp_path = tmp_path_factory.mktemp("gw-cluster")
    nats_server = module_nats
    for folder in ("pki", "servers", "identities"):
        shutil.copytree(pki_template / folder, tmp_path / folder)
    # call control on its own loopback address with the standard gRPC port, as `ccmsec up` lays it out,
    # so the gateway reaches it through CCMSEC_PEERS like in a real cluster
    import secrets
    cm_host = f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250)}.5"
    cms = load_settings(service="callmanager", data_dir=tmp_path, host=cm_host, grpc_port=50051,
                        metrics_port=0, nats_url=nats_server, sccp_port=free_port(cm_host),
                        sccp_tls_port=free_port(cm_host), admin_port=free_port(cm_host),
                        shutdown_grace=1.0, bus_connect_timeout=10)
    cm_svc, cm_task = await _start(cms)
    gw_svc, gw_task = await _start_gateway(tmp_path, nats_server, cm_host, gateway_lines=4)
    c = Cluster(tmp_path, cm_svc, cm_task, gw_svc, gw_task)
    yield c
    await gw_svc.gateway.close()
    await c.gw_channel.close()
    await c.cm_channel.close()
    for svc, task in ((gw_svc, gw_task), (cm_svc, cm_task)):
        svc.request_stop()
        await asyncio.wait_for(task, 10)


async def _phone(send_key=None, receive_key=None, pt=0):
    return await MediaEndpoint.open("127.0.0.1", stream=MediaStream(pt, send_key=send_key, receive_key=receive_key),
                                    record=True)


def _remote(phone, key=None, pt=0):
    host, port = phone.local_address
    return audio_session(host, port, key=key, payload_type=pt).to_text()


@pytest_asyncio.fixture(loop_scope="module")
async def gw(cluster):
    """The shared cluster, with no connection left over from the previous test."""
    yield cluster
    await cluster.gw_svc.gateway.close()


async def test_gw4_srtp_refused_in_a_non_secure_cluster_and_gw2_rtp_works(gw):
    cluster = gw
    await cluster.set_mode(common_pb2.CLUSTER_NON_SECURE)
    phone = await _phone()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cluster.gw.CreateConnection(pb.CreateConnectionRequest(
            endpoint="aaln/S1/SU0/1@gw1", call_id="A1", dialled_number=TONE, srtp=True,
            send_key=to_proto(MasterKey.generate()), remote_sdp=_remote(phone, MasterKey.generate())))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "GW-4" in err.value.details() and "mixed mode" in err.value.details()
    # GW-2: plain RTP is what call control asks for then, and it flows
    reply = await cluster.gw.CreateConnection(pb.CreateConnectionRequest(
        endpoint="aaln/S1/SU0/1@gw1", call_id="A1", dialled_number=TONE, remote_sdp=_remote(phone)))
    local = parse_sdp(reply.local_sdp).audio()
    assert not reply.srtp and not local.srtp and local.crypto == ()
    await wait_for(lambda: phone.stream.counters.received >= 10)
    assert phone.stream.counters.refused == 0
    assert gateway_connections() == {"rtp": 1, "srtp": 0}  # the refused SRTP one was never counted
    await phone.close()


def gateway_connections() -> dict[str, float]:
    """ccmsec_gateway_connections{gateway="gw1"} by media, read as a scrape reads it (issue 16)."""
    from ccmsec.runtime.metrics import REGISTRY

    return {media: REGISTRY.get_sample_value("ccmsec_gateway_connections", {"gateway": "gw1", "media": media})
            for media in ("rtp", "srtp")}


async def test_gw1_srtp_echo_and_tone_through_the_gateway(gw):
    cluster = gw
    await cluster.mixed()
    # phone -> gateway key (in the remote SDP) and gateway -> phone key (send_key), both from call control
    up, down = MasterKey.generate(), MasterKey.generate()
    phone = await _phone(send_key=up, receive_key=down)
    reply = await cluster.gw.CreateConnection(pb.CreateConnectionRequest(
        endpoint="aaln/S1/SU0/$@gw1", call_id="C0FFEE", dialled_number=ECHO, srtp=True,
        send_key=to_proto(down), remote_sdp=_remote(phone, up)))
    assert reply.srtp and reply.endpoint == "aaln/S1/SU0/1@gw1" and len(reply.connection_id) == 16
    local = parse_sdp(reply.local_sdp)
    audio = local.audio()
    assert audio.srtp and audio.crypto[0].key == down  # GW-1: the SRTP stream's key, as SDP
    assert audio.direction == "sendrecv"
    sent = []
    src = tones.tone(700)
    loop_frames = iter([src.frame() for _ in range(25)])

    def next_frame():
        f = next(loop_frames, None)
        if f is not None:
            sent.append(f)
        return f
    phone.start_sending(next_frame, (local.address_of(audio), audio.port))
    await wait_for(lambda: phone.stream.counters.received == 25, 10)
    from ccmsec.media import g711
    assert bytes(phone.recording) == b"".join(g711.ulaw_decode(g711.ulaw_encode(f)) for f in sent)
    audit = await cluster.gw.AuditEndpoint(pb.AuditEndpointRequest(endpoint="aaln/S1/SU0/*@gw1"))
    [conn] = [c for e in audit.endpoints for c in e.connections]
    assert (conn.packets_received, conn.packets_sent, conn.srtp) == (25, 25, True)
    assert audit.srtp_capable and len(audit.endpoints) == 4
    # a second line calls the tone number: SRTP audio arrives and decrypts to the 1004 Hz tone
    up2, down2 = MasterKey.generate(), MasterKey.generate()
    phone2 = await _phone(send_key=up2, receive_key=down2)
    await cluster.gw.CreateConnection(pb.CreateConnectionRequest(
        endpoint="aaln/S1/SU0/2@gw1", call_id="C0FFEF", dialled_number=TONE, srtp=True,
        send_key=to_proto(down2), remote_sdp=_remote(phone2, up2)))
    await wait_for(lambda: phone2.stream.counters.received >= 20, 10)
    assert phone2.stream.counters.refused == 0 and any(phone2.recording)
    assert gateway_connections() == {"rtp": 0, "srtp": 2}
    deleted = await cluster.gw.DeleteConnection(pb.DeleteConnectionRequest(endpoint="aaln/S1/SU0/*@gw1"))
    assert sorted(d.call_id for d in deleted.deleted) == ["C0FFEE", "C0FFEF"]
    assert cluster.gw_svc.gateway.connections == {}
    assert gateway_connections() == {"rtp": 0, "srtp": 0}
    await phone.close()
    await phone2.close()


async def test_gw3_modify_modes_and_fallback_to_rtp(gw):
    cluster = gw
    await cluster.mixed()
    up, down = MasterKey.generate(), MasterKey.generate()
    phone = await _phone(send_key=up, receive_key=down)
    reply = await cluster.gw.CreateConnection(pb.CreateConnectionRequest(
        endpoint="aaln/S1/SU0/3@gw1", call_id="B0B", dialled_number=ANNOUNCEMENT, srtp=True,
        send_key=to_proto(down), mode=pb.RECVONLY, remote_sdp=_remote(phone, up)))
    assert parse_sdp(reply.local_sdp).audio().direction == "recvonly"
    await asyncio.sleep(0.2)
    assert phone.stream.counters.received == 0  # recvonly: the gateway sends nothing
    await cluster.gw.ModifyConnection(pb.ModifyConnectionRequest(
        endpoint="aaln/S1/SU0/3@gw1", call_id="B0B", connection_id=reply.connection_id, mode=pb.SENDRECV))
    await wait_for(lambda: phone.stream.counters.received >= 5)
    # GW-3: the far end becomes a non-secure device -> the leg falls back to RTP
    plain = await _phone()
    mod = await cluster.gw.ModifyConnection(pb.ModifyConnectionRequest(
        endpoint="aaln/S1/SU0/3@gw1", call_id="B0B", connection_id=reply.connection_id,
        remote_sdp=_remote(plain), change_security=True, srtp=False))
    assert not mod.srtp and not parse_sdp(mod.local_sdp).audio().srtp
    await wait_for(lambda: plain.stream.counters.received >= 5)
    assert plain.stream.counters.malformed == 0
    stats = (await cluster.gw.DeleteConnection(pb.DeleteConnectionRequest(
        endpoint="aaln/S1/SU0/3@gw1", connection_id=reply.connection_id))).deleted[0]
    assert not stats.srtp and stats.packets_sent >= 10 and stats.octets_sent == 160 * stats.packets_sent
    await phone.close()
    await plain.close()


async def test_mgcp_bad_commands_are_clear(gw):
    cluster = gw
    await cluster.mixed()
    phone = await _phone()
    key = to_proto(MasterKey.generate())
    ok = dict(endpoint="aaln/S1/SU0/4@gw1", call_id="1", dialled_number=ECHO)
    first = await cluster.gw.CreateConnection(pb.CreateConnectionRequest(**ok))
    cases = [
        (pb.CreateConnectionRequest(**{**ok, "endpoint": "aaln/S1/SU0/9@gw1"}), grpc.StatusCode.NOT_FOUND, "500 endpoint unknown"),
        (pb.CreateConnectionRequest(**{**ok, "endpoint": "nothing"}), grpc.StatusCode.INVALID_ARGUMENT, "510"),
        (pb.CreateConnectionRequest(**{**ok, "endpoint": "aaln/*/1@gw1"}), grpc.StatusCode.INVALID_ARGUMENT, "last term"),
        (pb.CreateConnectionRequest(**{**ok, "endpoint": "aaln/S1/SU0/*@gw1"}), grpc.StatusCode.INVALID_ARGUMENT, "not allowed here"),
        (pb.CreateConnectionRequest(**ok), grpc.StatusCode.RESOURCE_EXHAUSTED, "502 endpoint busy"),
        (pb.CreateConnectionRequest(**{**ok, "endpoint": "aaln/S1/SU0/2@gw1", "call_id": "xyz"}), grpc.StatusCode.INVALID_ARGUMENT, "hexadecimal"),
        (pb.CreateConnectionRequest(**{**ok, "endpoint": "aaln/S1/SU0/2@gw1", "dialled_number": "123"}), grpc.StatusCode.NOT_FOUND, "no number '123'"),
        (pb.CreateConnectionRequest(**{**ok, "endpoint": "aaln/S1/SU0/2@gw1", "mode": 9}), grpc.StatusCode.INVALID_ARGUMENT, "517"),
        (pb.CreateConnectionRequest(**{**ok, "endpoint": "aaln/S1/SU0/2@gw1", "srtp": True}), grpc.StatusCode.INVALID_ARGUMENT, "GW-1"),
        (pb.CreateConnectionRequest(**{**ok, "endpoint": "aaln/S1/SU0/2@gw1", "send_key": key}), grpc.StatusCode.INVALID_ARGUMENT, "GW-2"),
        (pb.CreateConnectionRequest(**{**ok, "endpoint": "aaln/S1/SU0/2@gw1", "srtp": True, "send_key": key,
                                       "remote_sdp": _remote(phone)}), grpc.StatusCode.INVALID_ARGUMENT, "RTP/SAVP"),
        # RFC 4568 §6.3: a session parameter we do not implement refuses the offer (MGCP 510), never ignored
        (pb.CreateConnectionRequest(**{**ok, "endpoint": "aaln/S1/SU0/2@gw1", "srtp": True, "send_key": key,
                                       "remote_sdp": _remote(phone, MasterKey.generate()).replace(
                                           "\r\na=rtpmap", " UNENCRYPTED_SRTP\r\na=rtpmap")}),
         grpc.StatusCode.INVALID_ARGUMENT, "510 remote session description: line 7: a=crypto: session parameter "
                                           "'UNENCRYPTED_SRTP' refused"),
        (pb.CreateConnectionRequest(**{**ok, "endpoint": "aaln/S1/SU0/2@gw1", "remote_sdp": "v=0\r\nbogus"}),
         grpc.StatusCode.INVALID_ARGUMENT, "remote session description"),
        (pb.CreateConnectionRequest(**{**ok, "endpoint": "aaln/S1/SU0/2@gw1", "srtp": True,
                                       "send_key": common_pb2.KeyMaterial(suite=2, master_key=b"short")}),
         grpc.StatusCode.INVALID_ARGUMENT, "send_key"),
    ]
    for request, code, words in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await cluster.gw.CreateConnection(request)
        assert err.value.code() == code and words in err.value.details(), (words, err.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cluster.gw.ModifyConnection(pb.ModifyConnectionRequest(endpoint="aaln/S1/SU0/4@gw1", connection_id="FFFF"))
    assert "515" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cluster.gw.DeleteConnection(pb.DeleteConnectionRequest(
            endpoint="aaln/S1/SU0/4@gw1", call_id="2", connection_id=first.connection_id))
    assert "516" in err.value.details()
    assert len(cluster.gw_svc.gateway.connections) == 1  # nothing half-made by the refusals
    await phone.close()


async def test_gw2_gateway_without_srtp_support_refuses_srtp(tmp_path, nats_server, pki_template):
    for folder in ("pki", "servers", "identities"):
        shutil.copytree(pki_template / folder, tmp_path / folder)
    svc, task = await _start_gateway(tmp_path, nats_server, None, gateway_srtp=False)
    svc.cluster_mode.mode = common_pb2.CLUSTER_MIXED  # as a mode.changed event would set it
    try:
        async with secure_channel(call_control_identity(tmp_path), "127.0.0.1", svc.settings.grpc_port, "srtp-gateway") as ch:
            stub = srtp_gateway_pb2_grpc.SrtpGatewayStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.CreateConnection(pb.CreateConnectionRequest(
                    endpoint="aaln/S1/SU0/1@gw1", call_id="1", dialled_number=ECHO, srtp=True,
                    send_key=to_proto(MasterKey.generate())))
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "GW-2" in err.value.details()
            audit = await stub.AuditEndpoint(pb.AuditEndpointRequest(endpoint="*@gw1"))
            assert not audit.srtp_capable and list(audit.suites) == []
    finally:
        svc.request_stop()
        await asyncio.wait_for(task, 10)


async def test_gw4_chk12_control_link_needs_this_clusters_certificate(gw, tmp_path_factory):
    stranger = client_identity(tmp_path_factory.mktemp("elsewhere"))
    async with secure_channel(stranger, "127.0.0.1", gw.gw_svc.settings.grpc_port, "srtp-gateway") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await srtp_gateway_pb2_grpc.SrtpGatewayStub(ch).CreateConnection(pb.CreateConnectionRequest(
                endpoint="aaln/S1/SU0/1@gw1", call_id="1", dialled_number=ECHO), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert gw.gw_svc.gateway.connections == {}


async def _capture_echo_call(cluster, *, srtp: bool, line: str, call_id: str):
    """A phone leg to the echo number, captured on loopback; returns (proof up, proof down, reply)."""
    from ccmsec.media import g711
    from ccmsec.media.capture import LoopbackCapture, capture_available, media_proof
    why = capture_available()
    if why:
        pytest.skip(why)
    up, down = (MasterKey.generate(), MasterKey.generate()) if srtp else (None, None)
    phone = await _phone(send_key=up, receive_key=down)
    remote_sdp = _remote(phone, up)
    reply = await cluster.gw.CreateConnection(pb.CreateConnectionRequest(
        endpoint=line, call_id=call_id, dialled_number=ECHO, srtp=srtp,
        send_key=to_proto(down) if down else None, remote_sdp=remote_sdp))
    audio = parse_sdp(reply.local_sdp).audio()
    gw_port, phone_port = audio.port, phone.local_address[1]
    src = tones.announcement()
    pcm = [src.frame() for _ in range(25)]
    sent_payloads = [g711.ulaw_encode(f) for f in pcm]
    frames = iter(pcm)
    cap = LoopbackCapture([gw_port, phone_port], directory=cluster.data)
    await asyncio.to_thread(cap.start)  # the gateway keeps running on this loop meanwhile
    try:
        phone.start_sending(lambda: next(frames, None), ("127.0.0.1", gw_port))
        await wait_for(lambda: phone.stream.counters.received == 25, 10)
    finally:
        await asyncio.to_thread(cap.stop)
    await phone.close()
    packets = await asyncio.to_thread(cap.datagrams)
    upward = [d.payload for d in packets if d.dst[1] == gw_port]
    downward = [d.payload for d in packets if d.dst[1] == phone_port]
    # the keys an eavesdropper with the SDP (call control's view) would hold
    up_key = parse_sdp(remote_sdp).audio().crypto[0].key if srtp else None
    down_key = audio.crypto[0].key if srtp else None
    return media_proof(upward, sent_payloads, up_key), media_proof(downward, sent_payloads, down_key), reply


async def test_gw1_enc2_captured_gateway_leg_has_no_plaintext_and_decrypts_with_the_sdp_keys(gw):
    """Proof on the wire for a call through the gateway: dumpcap on loopback sees only SRTP; libsrtp
    with the keys from the SDP a=crypto lines turns the captured packets back into exactly the
    audio sent, both directions."""
    await gw.mixed()
    up, down, reply = await _capture_echo_call(gw, srtp=True, line="aaln/S1/SU0/1@gw1", call_id="CA97")
    for proof in (up, down):
        assert proof.packets == 25 and proof.plaintext_hits == 0, proof.summary()
        assert proof.decrypted == 25 and proof.audio_matches, proof.summary()
    assert reply.srtp


async def test_gw2_captured_rtp_leg_carries_the_audio_in_the_clear(gw):
    """The bad case the proof must catch: a plain RTP leg shows the audio to anyone capturing."""
    up, down, reply = await _capture_echo_call(gw, srtp=False, line="aaln/S1/SU0/2@gw1", call_id="CA98")
    assert not reply.srtp
    assert up.plaintext_hits == 25 and down.plaintext_hits == 25 and up.audio_matches and down.audio_matches


async def test_gw4_only_call_control_drives_the_gateway(gw):
    """A cluster identity that is not call control (the administrator's, a phone simulator's) may
    audit or nothing, but never create, modify or delete connections."""
    from ccmsec.cluster.pki import issue_service_identity
    for ident in (client_identity(gw.data),
                  issue_service_identity(gw.data, "phone-sim", "phone-sim", "127.0.0.1", out_dir=gw.data / "ps")):
        async with secure_channel(ident, "127.0.0.1", gw.gw_svc.settings.grpc_port, "srtp-gateway") as ch:
            stub = srtp_gateway_pb2_grpc.SrtpGatewayStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.CreateConnection(pb.CreateConnectionRequest(
                    endpoint="aaln/S1/SU0/1@gw1", call_id="1", dialled_number=ECHO), timeout=5)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert gw.gw_svc.gateway.connections == {}


async def test_gw1_enc2_gateway_relay_refuses_replayed_tampered_and_foreign_datagrams_and_counts_them(gw):
    """The relay's in-place path (one buffer, SRTP decrypted and re-encrypted where it lies) still
    refuses and counts what it must: an attacker on the path replays a packet the gateway already
    took (refused: replay), flips one bit of another (refused: authentication), and sends junk and
    a packet under a key nobody signalled — none is echoed, each is counted in the audit, and the
    genuine packets are still relayed."""
    await gw.mixed()
    up, down = MasterKey.generate(), MasterKey.generate()
    phone = await _phone(send_key=up, receive_key=down)
    reply = await gw.gw.CreateConnection(pb.CreateConnectionRequest(
        endpoint="aaln/S1/SU0/4@gw1", call_id="BAD1", dialled_number=ECHO, srtp=True,
        send_key=to_proto(down), remote_sdp=_remote(phone, up)))
    audio = parse_sdp(reply.local_sdp).audio()
    target = (parse_sdp(reply.local_sdp).address_of(audio), audio.port)
    wires = [phone.stream.packet_for_payload(bytes([i]) * 160) for i in range(4)]
    attacker = await _phone()   # another socket on the path
    send = phone.transport.sendto
    send(wires[0], target)
    send(wires[1], target)
    await wait_for(lambda: phone.stream.counters.received == 2, 10)
    tampered = bytearray(wires[2])
    tampered[30] ^= 0x01
    stranger = MediaStream(0, send_key=MasterKey.generate()).packet_for_payload(bytes(160))
    for bad in (wires[0], bytes(tampered), b"\x80junk", stranger):
        attacker.transport.sendto(bad, target)
    send(wires[2], target)      # the genuine one still passes after the tampered copy
    send(wires[3], target)
    await wait_for(lambda: phone.stream.counters.received == 4, 10)

    async def counted():
        audit = await gw.gw.AuditEndpoint(pb.AuditEndpointRequest(endpoint="aaln/S1/SU0/4@gw1"))
        return [c for e in audit.endpoints for c in e.connections][0]
    for _ in range(100):
        conn = await counted()
        if conn.refused_authentication + conn.refused_replay + conn.malformed >= 4:
            break
        await asyncio.sleep(0.05)
    assert (conn.packets_received, conn.packets_sent) == (4, 4)
    assert conn.refused_replay == 1
    assert conn.refused_authentication == 2      # the flipped bit and the unknown key
    assert conn.malformed == 1                   # five bytes cannot hold a header and a tag
    assert phone.stream.counters.refused == 0
    assert attacker.stream.counters.received == 0   # nothing is ever sent to the attacker
    # with a C compiler on the machine `auto` relays all of it on the C packet path
    from tests.integration.test_media_relay_core import compiler_present
    on_c = compiler_present()
    assert gw.gw_svc.status_message().details["relay_path"] == ("c" if on_c else "python")
    assert gw.gw_svc.gateway.connections[reply.connection_id].media.on_c_path is on_c
    await phone.close()
    await attacker.close()


async def test_gateway_told_to_use_the_c_relay_path_does_not_start_without_it(tmp_path, nats_server, pki_template,
                                                                              monkeypatch):
    """CCMSEC_RELAY_CORE=c on a machine where the C path cannot be built: the gateway stops at
    start-up saying why, instead of relaying at a fraction of the expected rate."""
    from ccmsec.aio import relay_core
    for folder in ("pki", "servers", "identities"):
        shutil.copytree(pki_template / folder, tmp_path / folder)
    monkeypatch.setattr(relay_core, "_loaded", None)      # build again, with a compiler that fails
    monkeypatch.setenv("CC", "/bin/false")
    with pytest.raises(relay_core.RelayCoreUnavailable, match="CCMSEC_RELAY_CORE=c .*/bin/false failed"):
        await _start_gateway(tmp_path, nats_server, None, relay_core="c")


async def test_local_connection_options_codec_receive_only_leg_and_refusals(gw):
    """CreateConnection's `a:` local connection option (RFC 3435) over gRPC: a receive-only leg
    with no remote description (music on hold for a held telephone-network caller) runs the law
    asked for and takes packets in it; a packet in the other law is not used (counted malformed).
    A codec the gateway does not speak is refused 534, one the remote description contradicts
    524, an unknown option 532 — each a clear INVALID_ARGUMENT, and no connection is left."""
    cluster = gw
    await cluster.mixed()
    reply = await cluster.gw.CreateConnection(pb.CreateConnectionRequest(
        endpoint="aaln/S1/SU0/$@gw1", call_id="B0", dialled_number=TONE, mode=pb.RECVONLY,
        local_connection_options="a:PCMA"))
    local = parse_sdp(reply.local_sdp).audio()
    assert local.formats == ("8",) and local.direction == "recvonly" and reply.mode == pb.RECVONLY
    [conn] = cluster.gw_svc.gateway.connections.values()
    heard: list[bytes] = []
    conn.media.on_payload = heard.append
    target = (parse_sdp(reply.local_sdp).address_of(local), local.port)
    alaw, ulaw = MediaStream(8), MediaStream(0)
    frame = tones.tone(440).frame()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(5):
            sock.sendto(alaw.packet_for(frame), target)
        await wait_for(lambda: len(heard) == 5)
        for _ in range(3):
            sock.sendto(ulaw.packet_for(frame), target)      # a law it never asked for
        await asyncio.sleep(0.2)
    from ccmsec.media import g711
    assert heard == [g711.alaw_encode(frame)] * 5            # the µ-law packets were not used
    audit = await cluster.gw.AuditEndpoint(pb.AuditEndpointRequest(endpoint="*@gw1"))
    [stats] = [c for e in audit.endpoints for c in e.connections]
    assert stats.packets_received == 5 and stats.malformed == 3 and stats.packets_sent == 0
    phone = await _phone()
    for options, remote, code in [("a:G729", "", "534"), ("a:PCMA", _remote(phone, pt=0), "524"),
                                  ("x:1", "", "532"), ("a:PCMU, a:PCMA", "", "510")]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await cluster.gw.CreateConnection(pb.CreateConnectionRequest(
                endpoint="aaln/S1/SU0/$@gw1", call_id="B1", dialled_number=TONE, remote_sdp=remote,
                local_connection_options=options))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith(code), (options, err.value.details())
    # ModifyConnection: the codec fixed by `a:` is not changed (534), the connection unchanged
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cluster.gw.ModifyConnection(pb.ModifyConnectionRequest(
            endpoint=str(conn.endpoint), connection_id=conn.id, mode=pb.SENDRECV,
            local_connection_options="a:PCMU"))
    assert err.value.details().startswith("534") and conn.payload_type == 8
    assert conn.mode.name == "RECVONLY"
    assert len(cluster.gw_svc.gateway.connections) == 1
    await phone.close()

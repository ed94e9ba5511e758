"""The tftp-signer service in process: real NATS, the migrated SQLite publisher database, a real UDP
TFTP listener on loopback and gRPC over mutual TLS (AUTH-1, AUTH-3, AUTH-4, CERT-5, DEV-4, MODE-6)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import time

import grpc
import pytest
from cryptography import x509
from sqlalchemy import select

from ccmsec import firmware
from ccmsec.db.capf import schedule_operation
from ccmsec.db.devices import Device, set_setting
from ccmsec.formats.cnfxml import parse_cnf_xml
from ccmsec.formats.ctl import Role, build_ctl, record_from_certificate
from ccmsec.formats.sgn import SignatureError, parse_sgn, verify_sgn
from ccmsec.pki.ca import create_ca, issue_with_new_key
from ccmsec.pki.ca import name as dn
from ccmsec.pki.tokens import FileSigner
from ccmsec.runtime.bus import EventBus, make_event
from ccmsec.runtime.grpcio import secure_channel
from ccmsec.runtime.identity import client_identity, service_identity
from ccmsec.runtime.settings import ServiceSettings, load_settings
from ccmsec.wire.tftp import ERR_ACCESS_VIOLATION, ERR_FILE_NOT_FOUND, TftpError
from ccmsec.aio.tftp import tftp_get
from ccmsec_proto import common_pb2, events_pb2, tftp_signer_pb2, tftp_signer_pb2_grpc
from ccmsec_tftp_signer.main import TftpSignerService
from tests.conftest import free_port
from tests.ownerdb import owner_db
from tests.tftpowners import tftp_owners

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"
DEVICE = "SEP00112233AA01"
LOAD_7970 = firmware.load_name("7970")
MODES = {"non-secure": common_pb2.CLUSTER_NON_SECURE, "mixed": common_pb2.CLUSTER_MIXED}


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Running:
    def __init__(self, svc: TftpSignerService, task: asyncio.Task, data):
        self.svc, self.task, self.data = svc, task, data
        self.port = svc.settings.tftp_port
        self._channel = None
        self._provider_channel = None

    async def get(self, filename: str, **kw) -> bytes:
        return await tftp_get(HOST, self.port, filename, timeout=1.0, retries=3, **kw)

    def stub(self) -> tftp_signer_pb2_grpc.TftpSignerStub:
        if self._channel is None:
            self._channel = secure_channel(client_identity(self.data), HOST, self.svc.settings.grpc_port,
                                           "tftp-signer")
        return tftp_signer_pb2_grpc.TftpSignerStub(self._channel)

    def provider_stub(self) -> tftp_signer_pb2_grpc.TftpSignerStub:
        """As the CTL Provider, the one role allowed to publish the trust list (PublishFile)."""
        if self._provider_channel is None:
            ident = service_identity(self.data, "ctl-provider", "ctl-provider", HOST)
            self._provider_channel = secure_channel(ident, HOST, self.svc.settings.grpc_port, "tftp-signer")
        return tftp_signer_pb2_grpc.TftpSignerStub(self._provider_channel)

    @property
    def cert(self) -> x509.Certificate:
        return self.svc.certificate

    # The state the files are built from is other owners' (issue 9 §5): arranged as they write it.
    def as_owner(self, role):
        return owner_db(self.owners.url_of(role), role, data_dir=self.data)

    async def add_device(self, name=DEVICE, model="7970", mode="non-secure", **hardening):
        async with self.as_owner("callmanager") as db, db() as s, s.begin():
            s.add(Device(name=name, model=model, security_mode=mode, **hardening))

    async def update_device(self, name=DEVICE, **values):
        async with self.as_owner("callmanager") as db, db() as s, s.begin():
            device = await s.scalar(select(Device).where(Device.name == name))
            for k, v in values.items():
                setattr(device, k, v)

    async def set_mode(self, mode: str):
        async with self.as_owner("ctl-provider") as db, db() as s, s.begin():
            await set_setting(s, "security_mode", mode)

    async def close(self):
        for channel in (self._channel, self._provider_channel):
            if channel is not None:
                await channel.close()
        self.svc.request_stop()
        await asyncio.wait_for(self.task, 15)


async def _publish_as(role: str, tftp, kind: str, target, **body):
    """An event as its owner publishes it (BUS-2/3: tftp-signer itself may not send these)."""
    bus = EventBus(tftp.svc.settings.nats_url, f"test-{role}", role=role, connect_timeout=5)
    await bus.connect()
    try:
        event = make_event(kind, role, **body)
        await bus.publish(event, target)
        return event
    finally:
        await bus.close()


@contextlib.asynccontextmanager
async def running_service(data, nats_url, *, caching=True, tftp_path="cluster1",
                          owners_running=("callmanager", "capf", "ctl-provider"), separate=False):
    """`separate`: each owner and tftp-signer keep a database file of their own, as the local
    runner lays them out (ccmsec/cluster/databases.py); otherwise all share DATA/ccmsec.db."""
    if separate:
        from ccmsec.cluster.databases import database_url

        db_url = lambda role: database_url(data, role)  # noqa: E731
        own_url = database_url(data, "tftp-signer")
    else:
        db_url = own_url = f"sqlite+aiosqlite:///{data / 'ccmsec.db'}"
    # The owners it asks (issue 9 §5): their real servicers on mutual TLS (tests/tftpowners.py).
    async with tftp_owners(data, db_url, running=owners_running) as owners:
        async with _running_service(data, nats_url, owners, caching=caching, tftp_path=tftp_path,
                                    database_url=own_url) as running:
            yield running


@contextlib.asynccontextmanager
async def _running_service(data, nats_url, owners, *, caching, tftp_path, database_url=""):
    settings = load_settings(
        ServiceSettings, service="tftp-signer", data_dir=data, host=HOST, grpc_port=free_port(),
        metrics_port=0, nats_url=nats_url, tftp_port=free_udp_port(), tftp_caching=caching,
        tftp_path=tftp_path, peers={**owners.peers, "srst": "127.0.0.8"},
        shutdown_grace=1.0, bus_connect_timeout=10, database_url=database_url,
    )
    service_identity(data, "tftp-signer", "tftp-signer", HOST)  # issued before start, as the runner does
    svc = TftpSignerService(settings)
    task = asyncio.create_task(svc.run())
    deadline = time.monotonic() + 20
    while not (svc.server is not None and svc.grpc is not None and svc.grpc.address and svc.bus._subs):
        if task.done():
            task.result()
            raise RuntimeError("service stopped during start")
        if time.monotonic() > deadline:
            raise RuntimeError("service did not start")
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # gRPC server start and the built-in subscriptions come last
    running = Running(svc, task, data)
    running.owners = owners
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture
async def tftp(tmp_path, nats_server):
    async with running_service(tmp_path, nats_server) as r:
        yield r


async def _error(coro) -> TftpError:
    with pytest.raises(TftpError) as info:
        await coro
    return info.value


async def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return False


# --- CERT-5 ----------------------------------------------------------------------------------------

async def test_cert5_signing_certificate_created_once_and_kept_across_restart(tmp_path, nats_server):
    """CERT-5: the TFTP certificate is made at first start, never re-issued, and is what gRPC hands out."""
    async with running_service(tmp_path, nats_server) as r:
        reply = await r.stub().GetSigningCertificate(common_pb2.Empty(), timeout=5)
        first = (tmp_path / "servers" / "tftp-signer" / "ccmserver.cer").read_bytes()
        assert reply.der == first and reply.role == common_pb2.ROLE_TFTP
        assert reply.ipv4 == HOST
    async with running_service(tmp_path, nats_server) as r:
        again = await r.stub().GetSigningCertificate(common_pb2.Empty(), timeout=5)
    assert again.der == first, "CERT-5: the certificate was re-issued on restart"


# --- AUTH-3 / AUTH-1 ---------------------------------------------------------------------------------

async def test_auth3_non_secure_serves_plain_files_and_no_sgn(tftp):
    """AUTH-3: in non-secure mode nothing is signed: every NAME.sgn is 'file not found'."""
    await tftp.add_device()
    config = parse_cnf_xml(await tftp.get(f"{DEVICE}.cnf.xml"))
    assert config.device_name == DEVICE and config.load_information == LOAD_7970
    assert (await tftp.get("RingList.xml")).startswith(b"<?xml")
    for name in (f"{DEVICE}.cnf.xml.sgn", "RingList.xml.sgn", "XMLDefault.cnf.xml.sgn",
                 "English_United_States/7970-dictionary.xml.sgn", "Ringer1.raw.sgn"):
        err = await _error(tftp.get(name))
        assert err.code == ERR_FILE_NOT_FOUND, name
    assert not (tftp.data / "tftp" / "cluster1" / "signed").exists()


async def test_auth1_firmware_always_signed_even_in_non_secure_mode(tftp):
    """AUTH-1: the image is served signed by the TFTP certificate in non-secure mode; an altered copy fails."""
    image = await tftp.get(firmware.image_filename(LOAD_7970), blksize=1428)
    info = firmware.verify_image(image, tftp.cert, LOAD_7970)
    assert info.models == ("7970",) and info.size == firmware.BODY_SIZE
    altered = bytearray(image)
    altered[len(image) // 2] ^= 0x01
    with pytest.raises(firmware.FirmwareError):
        firmware.verify_image(bytes(altered), tftp.cert, LOAD_7970)
    assert (await _error(tftp.get(firmware.image_filename(LOAD_7970) + ".sgn"))).code == ERR_FILE_NOT_FOUND
    alias = await tftp.get(f"{LOAD_7970}.sgn")  # the name phone-sim asks for, signed under that name
    assert parse_sgn(alias).header.file_name == f"{LOAD_7970}.sgn"
    assert firmware.verify_image(alias, tftp.cert, LOAD_7970) == info


async def test_auth3_mixed_mode_signs_configs_and_static_files_with_the_tftp_certificate(tftp):
    """AUTH-3: in mixed mode each static file and device config is also served as NAME.sgn, signed by
    the TFTP certificate (AUTH-5: a byte flip breaks it; another signer is refused)."""
    await tftp.add_device(mode="authenticated")
    await tftp.set_mode("mixed")
    for name in (f"{DEVICE}.cnf.xml", "RingList.xml", "XMLDefault.cnf.xml", "Ringer1.raw",
                 "United_States/g3-tones.xml"):
        plain = await tftp.get(name)
        signed = parse_sgn(await tftp.get(name + ".sgn", blksize=1024))
        verify_sgn(signed, tftp.cert)
        assert signed.payload == plain and signed.header.file_name == name + ".sgn"
    raw = bytearray(await tftp.get(f"{DEVICE}.cnf.xml.sgn"))
    raw[-20] ^= 0x20
    with pytest.raises(SignatureError):
        verify_sgn(parse_sgn(bytes(raw)), tftp.cert)
    other = issue_with_new_key(create_ca(dn("other CA")), dn("not-tftp"))
    with pytest.raises(SignatureError):
        verify_sgn(parse_sgn(await tftp.get("RingList.xml.sgn")), other.cert)


async def test_auth3_config_resigned_on_change_never_stale_and_event_presigns(tftp):
    """AUTH-3: after a committed change the very next download has the new content, signed; the
    config.changed event re-signs it ahead of the phone (the next request is a cache hit)."""
    await tftp.add_device(mode="authenticated")
    await tftp.set_mode("mixed")
    before = parse_sgn(await tftp.get(f"{DEVICE}.cnf.xml.sgn"))
    assert parse_cnf_xml(before.payload).hardening.web_access is True
    await tftp.update_device(web_access=False)
    after = parse_sgn(await tftp.get(f"{DEVICE}.cnf.xml.sgn"))  # no event yet: still fresh
    verify_sgn(after, tftp.cert)
    assert parse_cnf_xml(after.payload).hardening.web_access is False
    await tftp.update_device(pc_port=False)
    event = await _publish_as("callmanager", tftp, "config.changed", DEVICE,
                                   config_changed=events_pb2.ConfigChanged(devices=[DEVICE]))

    async def handled():
        return tftp.svc.last_event_id == event.id
    assert await _wait(handled)
    store = tftp.svc.content.store
    hits, signed = store.hits, store.signed
    latest = parse_sgn(await tftp.get(f"{DEVICE}.cnf.xml.sgn"))
    assert (store.hits, store.signed) == (hits + 1, signed), "the event should have signed it ahead"
    assert parse_cnf_xml(latest.payload).hardening.pc_port is False


async def test_auth3_mode_change_event_resigns_everything(tftp):
    """AUTH-3: switching to mixed (mode.changed) signs every device config and static file."""
    for i in range(5):
        await tftp.add_device(name=f"SEP00112233AB{i:02X}", mode="non-secure")
    await tftp.set_mode("mixed")
    event = await _publish_as("ctl-provider", tftp, "mode.changed", None, mode_changed=events_pb2.SecurityModeChanged(
        mode=common_pb2.CLUSTER_MIXED, previous=common_pb2.CLUSTER_NON_SECURE))

    async def handled():
        return tftp.svc.last_event_id == event.id
    assert await _wait(handled, 20)
    static = len([f for f in tftp.svc.content.list_static() if f.kind in ("static", "default-config")])
    assert tftp.svc.content.store.signed == 5 + static
    reply = await tftp.stub().Resign(tftp_signer_pb2.ResignRequest(all=True), timeout=20)
    assert reply.signed == 5 + static and reply.seconds > 0


# --- AUTH-4 ----------------------------------------------------------------------------------------

async def test_auth4_caching_on_keeps_signed_files_in_memory_only(tftp):
    """AUTH-4 (caching on): signed files are built in memory; nothing is written under signed/."""
    await tftp.add_device(mode="authenticated")
    await tftp.set_mode("mixed")
    await tftp.get(f"{DEVICE}.cnf.xml.sgn")
    await tftp.get("RingList.xml.sgn")
    assert tftp.svc.content.store.stats()["cache_entries"] == "2"
    assert not (tftp.data / "tftp" / "cluster1" / "signed").exists()


async def test_auth4_caching_off_writes_signed_files_and_replaces_them_atomically(tmp_path, nats_server):
    """AUTH-4 (caching off): signed files are written to disk; a changed stored source (the ring list
    edited by the administrator, a device change) is re-signed and the new file replaces the old."""
    async with running_service(tmp_path, nats_server, caching=False) as r:
        await r.add_device(mode="authenticated")
        await r.set_mode("mixed")
        folder = tmp_path / "tftp" / "cluster1"
        served = await r.get("RingList.xml.sgn")
        on_disk = folder / "signed" / "RingList.xml.sgn"
        assert on_disk.read_bytes() == served
        inode = on_disk.stat().st_ino
        assert await r.get("RingList.xml.sgn") == served and on_disk.stat().st_ino == inode  # reused
        (folder / "RingList.xml").write_bytes(b"<CiscoIPPhoneRingList></CiscoIPPhoneRingList>\n")
        fresh = await r.get("RingList.xml.sgn")
        assert parse_sgn(fresh).payload == b"<CiscoIPPhoneRingList></CiscoIPPhoneRingList>\n"
        verify_sgn(parse_sgn(fresh), r.cert)
        assert on_disk.read_bytes() == fresh and on_disk.stat().st_ino != inode  # renamed into place
        config_file = folder / "signed" / f"{DEVICE}.cnf.xml.sgn"
        await r.get(f"{DEVICE}.cnf.xml.sgn")
        await r.update_device(settings_access=False)
        new = await r.get(f"{DEVICE}.cnf.xml.sgn")
        assert config_file.read_bytes() == new
        assert parse_cnf_xml(parse_sgn(new).payload).hardening.settings_access is False
        assert not [p for p in (folder / "signed").iterdir() if p.name.startswith(".")], "temp files left"
        # A damaged file on disk is never served: it is re-signed and replaced.
        config_file.write_bytes(b"garbage")
        verify_sgn(parse_sgn(await r.get(f"{DEVICE}.cnf.xml.sgn")), r.cert)


async def test_resign_refuses_a_name_that_is_not_a_device_and_deletes_nothing(tmp_path, nats_server):
    """Resign names devices; the signed file's path is built from the name, so a named device
    that does not exist had `signed/<name>.cnf.xml.sgn` unlinked (caching off) — with
    `../../cluster2/SEP…` another cluster's file on this shared server (MODE-6). Now refused with
    INVALID_ARGUMENT and nothing touched; a config.changed naming such a device is ignored too."""
    async with running_service(tmp_path, nats_server, caching=False) as r:
        await r.add_device(mode="authenticated")
        await r.set_mode("mixed")
        await r.get("RingList.xml.sgn")  # signed/ exists from now on
        victim = tmp_path / "tftp" / "cluster2" / "SEP00112233AABB.cnf.xml.sgn"
        victim.parent.mkdir(parents=True)
        victim.write_bytes(b"another cluster's signed file")
        for bad in ("../../cluster2/SEP00112233AABB", "sep00112233aabb"):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await r.stub().Resign(tftp_signer_pb2.ResignRequest(devices=[DEVICE, bad]), timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a device name" in refused.value.details()
        assert await r.svc.content.resign_devices(["../../cluster2/SEP00112233AABB"]) == 0
        assert victim.read_bytes() == b"another cluster's signed file"
        reply = await r.stub().Resign(tftp_signer_pb2.ResignRequest(devices=[DEVICE]), timeout=10)
        assert reply.signed == 1


# --- DEV-4 and the config contents -------------------------------------------------------------------

async def test_dev4_hardening_and_capf_operation_reach_the_served_config(tftp):
    """DEV-4: the hardening settings of the device are in its configuration file; the pending CAPF
    operation, CallManager group and SRST reference are there too."""
    await tftp.add_device(mode="encrypted", web_access=False, pc_port=False, settings_access=False,
                          garp=False, voice_vlan_access=False)
    async with tftp.as_owner("capf") as capf_db:
        await schedule_operation(capf_db, DEVICE, "install", auth_mode="null", key_type="ec256")
    config = parse_cnf_xml(await tftp.get(f"{DEVICE}.cnf.xml"))
    h = config.hardening
    assert not (h.web_access or h.pc_port or h.settings_access or h.garp or h.voice_vlan_access)
    assert config.security_mode == "encrypted"
    peers = tftp.owners.peers
    assert [(m.host, m.ethernet_phone_port, m.secure_port) for m in config.call_managers] == [
        (peers["callmanager"], 2000, 2443)]
    assert config.capf.host == peers["capf"] and config.capf.port == 3804
    assert (config.capf.operation, config.capf.key_type, config.capf.curve) == ("install", "EC", "P-256")
    assert config.srst.addresses == ("127.0.0.8",)
    assert (await _error(tftp.get("SEP0011223344FF.cnf.xml"))).code == ERR_FILE_NOT_FOUND


# --- MODE-6 ----------------------------------------------------------------------------------------

def _ctl(tftp_cert) -> bytes:
    tokens = [issue_with_new_key(create_ca(dn(f"token{i}")), dn(f"SAST{i}")) for i in range(2)]
    records = [record_from_certificate(t.cert, Role.TOKEN) for t in tokens]
    records.append(record_from_certificate(tftp_cert, Role.TFTP, dns_name="tftp-signer"))
    # A token signs the CTL with its own certificate (CTL-1); create_ca certs are fine as tokens here.
    signer = FileSigner(tokens[0].cert, tokens[0].key)
    return build_ctl(records, signer, int(time.time()))


async def test_mode6_publish_trust_list_only_into_this_clusters_path(tftp):
    """MODE-6: the CTL client publishes CTLFile.tlv only into its own cluster's path; another
    cluster's path, an unknown path, other names, a wrong sha256 or a non-CTL are refused."""
    stub = tftp.stub()
    await stub.AddSharedCluster(tftp_signer_pb2.SharedCluster(
        name="branch", tftp_path="branch", mode=common_pb2.CLUSTER_NON_SECURE), timeout=5)
    ctl = _ctl(tftp.cert)
    digest = hashlib.sha256(ctl).hexdigest()
    cases = [
        (dict(cluster_path="branch", name="CTLFile.tlv"), grpc.StatusCode.PERMISSION_DENIED, "MODE-6"),
        (dict(cluster_path="nowhere", name="CTLFile.tlv"), grpc.StatusCode.NOT_FOUND, "not configured"),
        (dict(cluster_path="cluster1", name="RingList.xml"), grpc.StatusCode.INVALID_ARGUMENT, "trust-list"),
    ]
    for fields, code, text in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await tftp.provider_stub().PublishFile(tftp_signer_pb2.PublishFileRequest(content=ctl, sha256=digest, **fields),
                                   timeout=5)
        assert info.value.code() == code and text in info.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await tftp.provider_stub().PublishFile(tftp_signer_pb2.PublishFileRequest(name="CTLFile.tlv", content=ctl,
                                                                  sha256="00" * 32), timeout=5)
    assert info.value.code() == grpc.StatusCode.DATA_LOSS
    junk = b"not a trust list"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await tftp.provider_stub().PublishFile(tftp_signer_pb2.PublishFileRequest(
            name="CTLFile.tlv", content=junk, sha256=hashlib.sha256(junk).hexdigest()), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not (tftp.data / "tftp" / "branch" / "CTLFile.tlv").exists()
    reply = await tftp.provider_stub().PublishFile(tftp_signer_pb2.PublishFileRequest(
        cluster_path="cluster1", name="CTLFile.tlv", content=ctl, sha256=digest), timeout=5)
    assert reply.sha256 == digest
    assert await tftp.get("CTLFile.tlv") == ctl
    assert await tftp.get("cluster1/CTLFile.tlv") == ctl
    assert (await _error(tftp.get("CTLFile.tlv.sgn"))).code == ERR_FILE_NOT_FOUND


async def test_chk6_a_publish_arriving_after_its_take_back_is_refused(tftp):
    """CHK-6 / CTL-2: a cancelled CTL commit takes the unrecorded CTL back (the recorded one
    published again, naming the cancelled publish's generation). That publish, still in flight,
    used to land afterwards and put the unrecorded CTL back on the TFTP server; now the signer
    refuses it (ABORTED, saying why) and the taken-back file stays. Other generations publish."""
    stub = tftp.provider_stub()
    recorded, unrecorded = _ctl(tftp.cert), _ctl(tftp.cert)

    def request(content, **ordering):
        return tftp_signer_pb2.PublishFileRequest(name="CTLFile.tlv", content=content,
                                                  sha256=hashlib.sha256(content).hexdigest(), **ordering)

    # The take-back arrives first, naming generation 41 (the cancelled commit's publish) ...
    await stub.PublishFile(request(recorded, generation=42, takes_back=[41]), timeout=5)
    # ... then the late publish of generation 41 itself.
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await stub.PublishFile(request(unrecorded, generation=41), timeout=5)
    assert late.value.code() == grpc.StatusCode.ABORTED
    assert "generation 41 was taken back" in late.value.details()
    assert await tftp.get("CTLFile.tlv") == recorded
    await stub.PublishFile(request(unrecorded, generation=43), timeout=5)  # a later commit: published
    assert await tftp.get("CTLFile.tlv") == unrecorded


async def test_chk6_the_first_ctl_taken_back_is_withdrawn_and_its_late_publish_refused(tftp):
    """CHK-6 for the cluster's first CTL: with no CTL recorded there is nothing to publish back,
    so the take-back could not name the publish it undid — the unrecorded CTL stayed served, and
    a late PublishFile of it landed. Now a withdraw (`withdraw`, naming the generation in
    `takes_back`) removes CTLFile.tlv: TFTP serves none, ListFiles lists none, and the publish of
    that generation is refused whether it already landed or arrives afterwards. Bad case: a
    withdraw naming no generation, or carrying content, is refused and removes nothing."""
    stub = tftp.provider_stub()
    unrecorded, later = _ctl(tftp.cert), _ctl(tftp.cert)

    def request(content, **ordering):
        return tftp_signer_pb2.PublishFileRequest(name="CTLFile.tlv", content=content,
                                                  sha256=hashlib.sha256(content).hexdigest(), **ordering)

    def withdraw(**fields):
        return tftp_signer_pb2.PublishFileRequest(name="CTLFile.tlv", withdraw=True, **fields)

    # The first commit's publish landed, then its record failed: the take-back withdraws it.
    await stub.PublishFile(request(unrecorded, generation=51), timeout=5)
    assert await tftp.get("CTLFile.tlv") == unrecorded
    for bad, text in ((withdraw(generation=52), "takes_back"),
                      (withdraw(generation=52, takes_back=[51], content=later), "no content")):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.PublishFile(bad, timeout=5)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and text in refused.value.details()
    assert await tftp.get("CTLFile.tlv") == unrecorded  # nothing removed by a refused withdraw
    reply = await stub.PublishFile(withdraw(generation=52, takes_back=[51]), timeout=5)
    assert reply.sha256 == "" and reply.path.endswith("CTLFile.tlv")
    assert (await _error(tftp.get("CTLFile.tlv"))).code == ERR_FILE_NOT_FOUND
    listed = await tftp.stub().ListFiles(tftp_signer_pb2.ListFilesRequest(), timeout=5)
    assert "CTLFile.tlv" not in [f.name for f in listed.files]
    # The other order: the withdraw (naming 61) arrives first, the publish of 61 late — refused.
    await stub.PublishFile(withdraw(generation=62, takes_back=[61]), timeout=5)  # nothing there: fine
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await stub.PublishFile(request(unrecorded, generation=61), timeout=5)
    assert late.value.code() == grpc.StatusCode.ABORTED and "generation 61 was taken back" in late.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as again:  # and 51's, withdrawn above, too
        await stub.PublishFile(request(unrecorded, generation=51), timeout=5)
    assert again.value.code() == grpc.StatusCode.ABORTED
    assert (await _error(tftp.get("CTLFile.tlv"))).code == ERR_FILE_NOT_FOUND
    await stub.PublishFile(request(later, generation=63), timeout=5)  # a later commit: published
    assert await tftp.get("CTLFile.tlv") == later
    # A withdraw is ordered like any publish: the next commit's publish names a withdraw that got
    # no answer (it may still land), and that withdraw arriving afterwards is refused — it must
    # not remove the CTL the cluster recorded since.
    newest = _ctl(tftp.cert)
    await stub.PublishFile(request(newest, generation=65, takes_back=[64]), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await stub.PublishFile(withdraw(generation=64, takes_back=[63]), timeout=5)
    assert stale.value.code() == grpc.StatusCode.ABORTED and "withdraw generation 64" in stale.value.details()
    assert await tftp.get("CTLFile.tlv") == newest


async def test_chk6_every_unanswered_take_back_a_publish_names_is_refused_when_it_lands_late(tftp):
    """CHK-6 / CTL-2: two take-backs in a row got no answer (each may still land): A puts the
    recorded CTL back, B withdraws. `takes_back` named one generation, so ctl-provider named only
    the last one (B) in the next publish and A could land over the CTL committed since. Now the
    publish names both (a list, as ctl-provider keeps them: test_ctl_provider_service.py::
    test_chk6_two_unanswered_take_backs_in_a_row_are_all_named_and_survive_a_restart): each of
    them arriving late is refused (ABORTED, naming the publish that took it back) and the newest
    CTL stays served — nothing lost. Bad case: a withdraw naming only zeros, or a publish naming
    more than 256 generations, is refused and takes nothing back. A sender of the former singular
    field (one varint, tag 6) is still understood."""
    stub = tftp.provider_stub()
    recorded, unrecorded, newest = _ctl(tftp.cert), _ctl(tftp.cert), _ctl(tftp.cert)

    def request(content, **ordering):
        return tftp_signer_pb2.PublishFileRequest(name="CTLFile.tlv", content=content,
                                                  sha256=hashlib.sha256(content).hexdigest(), **ordering)

    def withdraw(**fields):
        return tftp_signer_pb2.PublishFileRequest(name="CTLFile.tlv", withdraw=True, **fields)

    await stub.PublishFile(request(recorded, generation=70), timeout=5)
    # Sent, not answered, still on their way: commit 2's publish (71) and its take-back A (72),
    # commit 3's publish (73, naming A) and its take-back B (74, a withdraw naming 73 and A).
    take_back_a = request(recorded, generation=72, takes_back=[71])
    take_back_b = withdraw(generation=74, takes_back=[73, 72])
    # Commit 4's publish names both unanswered take-backs and is answered.
    await stub.PublishFile(request(newest, generation=75, takes_back=[72, 74]), timeout=5)
    assert await tftp.get("CTLFile.tlv") == newest
    # Now they land, late: refused, nothing written or removed.
    with pytest.raises(grpc.aio.AioRpcError) as late_a:
        await stub.PublishFile(take_back_a, timeout=5)
    assert late_a.value.code() == grpc.StatusCode.ABORTED
    assert "publish generation 72 was taken back by ctl-provider (named by publish generation 75" \
        in late_a.value.details() and "not published" in late_a.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as late_b:
        await stub.PublishFile(take_back_b, timeout=5)
    assert late_b.value.code() == grpc.StatusCode.ABORTED
    assert "withdraw generation 74 was taken back by ctl-provider (named by publish generation 75" \
        in late_b.value.details() and "nothing removed" in late_b.value.details()
    for late_publish in (71, 73):  # what A and B took back stays out too (remembered first)
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await stub.PublishFile(request(unrecorded, generation=late_publish), timeout=5)
        assert late.value.code() == grpc.StatusCode.ABORTED
    assert await tftp.get("CTLFile.tlv") == newest
    listed = await tftp.stub().ListFiles(tftp_signer_pb2.ListFilesRequest(), timeout=5)
    assert "CTLFile.tlv" in [f.name for f in listed.files]

    # Bad cases: refused (INVALID_ARGUMENT) before anything is taken back.
    with pytest.raises(grpc.aio.AioRpcError) as zeros:
        await stub.PublishFile(withdraw(generation=80, takes_back=[0, 0]), timeout=5)
    assert zeros.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "takes_back" in zeros.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as too_many:
        await stub.PublishFile(request(recorded, generation=81, takes_back=list(range(100, 357))), timeout=5)
    assert too_many.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 256 generations" in too_many.value.details()
    await stub.PublishFile(request(recorded, generation=100), timeout=5)  # not taken back
    assert await tftp.get("CTLFile.tlv") == recorded

    # Wire compatibility: the former `uint64 takes_back = 6` put one varint under tag 6; the list
    # is unpacked, so that very encoding is a one-entry list — an old sender's withdraw still works.
    assert tftp_signer_pb2.PublishFileRequest(takes_back=[5]).SerializeToString() == b"\x30\x05"
    old_style = withdraw(generation=91).SerializeToString() + b"\x30\x5a"  # takes_back = 90
    publish_raw = tftp._provider_channel.unary_unary(
        "/ccmsec.v1.TftpSigner/PublishFile", request_serializer=lambda raw: raw,
        response_deserializer=tftp_signer_pb2.PublishFileReply.FromString)
    await publish_raw(old_style, timeout=5)
    assert (await _error(tftp.get("CTLFile.tlv"))).code == ERR_FILE_NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await stub.PublishFile(request(unrecorded, generation=90), timeout=5)
    assert late.value.code() == grpc.StatusCode.ABORTED and "generation 90 was taken back" in late.value.details()


async def test_chk6_a_publish_already_writing_finishes_before_its_take_back_writes(tftp, monkeypatch):
    """CHK-6: the other interleaving — the late publish passed its check and is writing (a slow
    disk) when the take-back arrives. The take-back's write waits for it, so the recorded CTL is
    what stays, not the unrecorded one written last."""
    import threading

    from ccmsec_tftp_signer import files

    recorded, unrecorded = _ctl(tftp.cert), _ctl(tftp.cert)
    real_write, writing = files.atomic_write, threading.Event()

    def slow_write(path, data, *args):
        if data == unrecorded:
            writing.set()
            time.sleep(0.5)  # the late publish is past its check, mid-write
        real_write(path, data, *args)

    monkeypatch.setattr(files, "atomic_write", slow_write)
    stub = tftp.provider_stub()

    def request(content, **ordering):
        return tftp_signer_pb2.PublishFileRequest(name="CTLFile.tlv", content=content,
                                                  sha256=hashlib.sha256(content).hexdigest(), **ordering)

    async def publish_late():
        return await stub.PublishFile(request(unrecorded, generation=7), timeout=10)

    late = asyncio.create_task(publish_late())
    assert await asyncio.to_thread(writing.wait, 5)
    await stub.PublishFile(request(recorded, generation=8, takes_back=[7]), timeout=10)
    await late
    assert await tftp.get("CTLFile.tlv") == recorded


async def test_mode6_publish_on_a_slow_disk_does_not_stall_tftp(tftp, monkeypatch):
    """MODE-6 publish (CTL commit) writes with fsync; on a slow disk that must not stop the TFTP
    transfers served by the same event loop. The phone here runs in its own thread and loop."""
    import threading

    from ccmsec_tftp_signer import files

    real_write, writing = files.atomic_write, threading.Event()

    def slow_write(path, data, *args):
        writing.set()
        time.sleep(1.5)  # a disk that takes its time to fsync
        real_write(path, data, *args)

    def phone() -> float:
        assert writing.wait(5), "publish never reached its write"
        started = time.monotonic()
        assert asyncio.run(tftp_get(HOST, tftp.port, "RingList.xml", timeout=3.0, retries=1))
        return time.monotonic() - started

    monkeypatch.setattr(files, "atomic_write", slow_write)
    ctl = _ctl(tftp.cert)
    waited = asyncio.create_task(asyncio.to_thread(phone))
    await tftp.provider_stub().PublishFile(tftp_signer_pb2.PublishFileRequest(
        name="CTLFile.tlv", content=ctl, sha256=hashlib.sha256(ctl).hexdigest()), timeout=10)
    assert await waited < 0.8
    assert await tftp.get("CTLFile.tlv") == ctl


async def test_mode6_shared_clusters_need_unique_paths_and_the_same_mode(tftp):
    """MODE-6: a cluster whose TFTP path (or alternate path) is already used, or whose security mode
    differs, cannot share the server; a valid one is served from its own folder by path prefix."""
    stub = tftp.stub()
    refused = [
        tftp_signer_pb2.SharedCluster(name="dup", tftp_path="cluster1", mode=common_pb2.CLUSTER_NON_SECURE),
        tftp_signer_pb2.SharedCluster(name="alt", tftp_path="b2", alternate_path="CLUSTER1",
                                      mode=common_pb2.CLUSTER_NON_SECURE),
        tftp_signer_pb2.SharedCluster(name="mixed", tftp_path="b3", mode=common_pb2.CLUSTER_MIXED),
    ]
    for cluster in refused:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.AddSharedCluster(cluster, timeout=5)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "MODE-6" in info.value.details()
    reply = await stub.AddSharedCluster(tftp_signer_pb2.SharedCluster(
        name="branch", tftp_path="branch", alternate_path="branch-alt", mode=common_pb2.CLUSTER_NON_SECURE),
        timeout=5)
    assert [c.tftp_path for c in reply.clusters] == ["cluster1", "branch"]
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.AddSharedCluster(tftp_signer_pb2.SharedCluster(
            name="again", tftp_path="branch-alt", mode=common_pb2.CLUSTER_NON_SECURE), timeout=5)
    (tftp.data / "tftp" / "branch").mkdir(parents=True)
    (tftp.data / "tftp" / "branch" / "CTLFile.tlv").write_bytes(b"branch trust list")
    assert await tftp.get("branch/CTLFile.tlv") == b"branch trust list"
    assert (await _error(tftp.get("CTLFile.tlv"))).code == ERR_FILE_NOT_FOUND  # ours is not published
    assert (tftp.data / "tftp-signer" / "shared-clusters.json").exists()


async def test_mode6_mode_change_that_breaks_sharing_is_reported_and_still_resigns(tftp):
    """MODE-6: when this cluster switches to mixed while a non-secure cluster shares the server, the
    mode.changed handler records the MODE-6 problem, stops serving the clashing cluster and still
    re-signs (it must not fail and be redelivered); switching back restores the shared cluster."""
    (tftp.data / "tftp" / "branch").mkdir(parents=True)
    (tftp.data / "tftp" / "branch" / "CTLFile.tlv").write_bytes(b"branch trust list")
    await tftp.stub().AddSharedCluster(tftp_signer_pb2.SharedCluster(
        name="branch", tftp_path="branch", mode=common_pb2.CLUSTER_NON_SECURE), timeout=5)
    await tftp.add_device(mode="authenticated")

    async def switch(mode: str, previous: str):
        await tftp.set_mode(mode)
        event = await _publish_as("ctl-provider", tftp, "mode.changed", None, mode_changed=events_pb2.SecurityModeChanged(
            mode=MODES[mode], previous=MODES[previous]))

        async def handled():
            return tftp.svc.last_event_id == event.id
        assert await _wait(handled, 20), "mode.changed handler failed"

    await switch("mixed", "non-secure")
    details = tftp.svc.status_details()
    assert "MODE-6" in details["mode6_problem"] and details["security_mode"] == "mixed"
    assert tftp.svc.content.store.signed >= 1  # the device config was re-signed all the same
    assert (await _error(tftp.get("branch/CTLFile.tlv"))).code == ERR_FILE_NOT_FOUND
    await switch("non-secure", "mixed")
    assert "mode6_problem" not in tftp.svc.status_details()
    assert await tftp.get("branch/CTLFile.tlv") == b"branch trust list"


async def test_mode6_concurrent_registrations_are_all_kept(tftp):
    """MODE-6 registry: shared clusters registered at the same moment are all kept (served and
    saved), none silently lost to a registration built on the same old layout."""
    stub = tftp.stub()
    await stub.ListSharedClusters(common_pb2.Empty(), timeout=5)  # channel up before the race
    names = [f"b{i}" for i in range(4)]
    await asyncio.gather(*(stub.AddSharedCluster(tftp_signer_pb2.SharedCluster(
        name=n, tftp_path=n, mode=common_pb2.CLUSTER_NON_SECURE), timeout=5) for n in names))
    listed = await stub.ListSharedClusters(common_pb2.Empty(), timeout=5)
    assert sorted(c.name for c in listed.clusters) == [*names, "local"]
    assert sorted(c.name for c in tftp.svc._load_shared()) == names


# --- hostile names ---------------------------------------------------------------------------------

async def test_traversal_and_odd_names_are_refused(tftp):
    """Bad names get TFTP error 2 (access violation) and nothing outside the cluster folder is read."""
    (tftp.data / "secret.txt").write_text("secret")
    for bad in ("../secret.txt", "/etc/passwd", "cluster1/../../secret.txt", "signed/RingList.xml.sgn",
                "a/b/c/d", "x\\..\\..\\secret.txt", "Ring List.xml", ".hidden", "C:secret"):
        err = await _error(tftp.get(bad))
        assert err.code == ERR_ACCESS_VIOLATION, bad
    os.symlink(tftp.data / "secret.txt", tftp.data / "tftp" / "cluster1" / "link.txt")
    assert (await _error(tftp.get("link.txt"))).code == ERR_FILE_NOT_FOUND
    # The listener refuses the absolute and '..' names itself; our layout refuses the other four.
    assert tftp.svc.content.refused == 4


async def test_list_files_and_status(tftp):
    await tftp.add_device()
    reply = await tftp.stub().ListFiles(tftp_signer_pb2.ListFilesRequest(include_devices=True), timeout=5)
    by_name = {f.name: f for f in reply.files}
    assert by_name[f"{DEVICE}.cnf.xml"].kind == "device-config" and not by_name[f"{DEVICE}.cnf.xml"].signed
    assert by_name[firmware.image_filename(LOAD_7970)].signed  # AUTH-1, even non-secure
    assert "RingList.xml" in by_name and "XMLDefault.cnf.xml" in by_name
    assert reply.mode == common_pb2.CLUSTER_NON_SECURE
    await tftp.get("RingList.xml")
    status = await tftp.stub().Status(common_pb2.Empty(), timeout=5)
    assert status.details["files_served"] == "1" and status.details["tftp_path"] == "cluster1"



async def test_status_reports_the_requests_refused_per_source_and_dropped_undeliverable(tftp):
    """Status (and /metrics) show the listener's refusals as they show transfers: a request over
    its address's share ("server busy: too many transfers from your address") and one from a
    source no answer can reach (0.0.0.0) are each counted in `details`, and in
    `ccmsec_tftp_requests_refused_total{reason}`."""
    from ccmsec.runtime.metrics import REGISTRY
    from ccmsec.wire import tftp as wire

    def refused(reason: str) -> float:
        return REGISTRY.get_sample_value("ccmsec_tftp_requests_refused_total", {"reason": reason}) or 0.0

    before = {r: refused(r) for r in ("per_source", "undeliverable")}
    status = await tftp.stub().Status(common_pb2.Empty(), timeout=5)
    assert status.details["requests_refused_per_source"] == "0"
    assert status.details["requests_dropped_undeliverable"] == "0"
    server = tftp.svc.server
    server.max_sessions_per_source = 1
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # asks, never acknowledges: holds the slot
    second = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        holder.bind((HOST, 0))
        second.bind((HOST, 0))
        second.settimeout(5)
        holder.sendto(wire.encode_rrq("RingList.xml"), (HOST, tftp.port))

        async def holding() -> bool:
            return server.active_sessions == 1
        assert await _wait(holding, 5)
        second.sendto(wire.encode_rrq("RingList.xml"), (HOST, tftp.port))
        reply = await asyncio.to_thread(second.recv, 2048)
        assert wire.parse_packet(reply) == wire.Error(0, "server busy: too many transfers from your address")
        server._on_request(wire.encode_rrq("RingList.xml"), ("0.0.0.0", 6969))  # as the listener got it
    finally:
        holder.close()
        second.close()
    status = await tftp.stub().Status(common_pb2.Empty(), timeout=5)
    assert status.details["requests_refused_per_source"] == "1"
    assert status.details["requests_dropped_undeliverable"] == "1"
    assert refused("per_source") - before["per_source"] == 1
    assert refused("undeliverable") - before["undeliverable"] == 1

# --- audit (issue 9 §5) ------------------------------------------------------------------------------

async def test_resign_is_audited_like_every_owners_write(tftp):
    """A forced re-sign is a write of tftp-signer's own state (its signed files): it stages one
    `owner.change` in its outbox naming the caller, which callmanager records in the audit log as it
    does CAPF's and the CTL Provider's writes. The bad case: a refused Resign records nothing."""
    import nats

    from ccmsec_callmanager.access_audit import owner_change_entry

    seen: list[events_pb2.Event] = []
    nc = await nats.connect(tftp.svc.settings.nats_url)
    try:
        async def collect(msg):
            seen.append(events_pb2.Event.FromString(msg.data))

        await nc.subscribe("ccmsec.*.owner.change", cb=collect)
        await nc.flush()
        await tftp.add_device(mode="authenticated")
        await tftp.set_mode("mixed")
        # Refused for a role outside the policy (ctl-provider may publish, not re-sign): no record.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await tftp.provider_stub().Resign(tftp_signer_pb2.ResignRequest(all=True), timeout=5)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        reply = await tftp.stub().Resign(tftp_signer_pb2.ResignRequest(devices=[DEVICE]), timeout=10)
        assert reply.signed == 1

        async def recorded():
            return any(e.owner_change.action == "tftp.resign" for e in seen)
        assert await _wait(recorded), "Resign staged no owner.change"
        audits = [e for e in seen if e.owner_change.action == "tftp.resign"]
        assert len(audits) == 1, audits  # the refused call left none
        change = audits[0].owner_change
        assert change.actor.startswith("cli/") and change.door == "grpc"
        assert change.target == "cluster1" and change.detail == f"devices {DEVICE}: 1 signed"
        # What callmanager, the audit log's only writer, makes of it.
        entry = owner_change_entry(audits[0], "tftp-signer")
        assert (entry.action, entry.target, entry.outcome) == ("tftp.resign", "cluster1", "ok")
        assert entry.actor.startswith("cli/") and "(by tftp-signer)" in entry.detail
    finally:
        await nc.close()

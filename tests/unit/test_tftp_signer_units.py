"""Pure parts of the tftp-signer: MODE-6 layout and name mapping, firmware images (AUTH-1), the
signed-file store (AUTH-3/AUTH-4) and the config builder (DEV-4)."""

from __future__ import annotations

import asyncio

import time

import pytest
from hypothesis import given, settings, strategies as st

from ccmsec import firmware
from ccmsec.formats.cnfxml import parse_cnf_xml
from ccmsec.formats.sgn import parse_sgn, verify_sgn
from ccmsec.pki.servercert import ensure_server_certificate
from ccmsec.pki.tokens import FileSigner
from ccmsec_tftp_signer.content import ClusterEndpoints, build_device_config, ring_tone, static_files
from ccmsec_tftp_signer.layout import BadName, ClusterPath, Layout, Mode6Error, validate_layout
from ccmsec_tftp_signer.signing import SignedStore, SigningPool


@pytest.fixture(scope="module")
def tftp_cert(tmp_path_factory):
    return ensure_server_certificate(tmp_path_factory.mktemp("tftp"), "tftp-signer", ip="127.0.0.1")


@pytest.fixture(scope="module")
def signer(tftp_cert):
    return FileSigner.from_issued(tftp_cert)


# --- MODE-6 -----------------------------------------------------------------------------------

def test_mode6_duplicate_and_nested_paths_and_mixed_modes_refused():
    """MODE-6: paths and alternate paths unique (case-insensitive), one security mode for all."""
    own = ClusterPath("a", "cluster1")
    bad = [
        [own, ClusterPath("b", "cluster1")],
        [own, ClusterPath("b", "CLUSTER1")],
        [own, ClusterPath("b", "b1", "cluster1")],
        [ClusterPath("a", "p", "p")],
        [own, ClusterPath("b", "b1", mode="mixed")],
        [own, ClusterPath("a", "other")],
        [ClusterPath("a", "../x")],
        [ClusterPath("a", "signed")],
    ]
    for clusters in bad:
        with pytest.raises(Mode6Error):
            validate_layout(clusters)
    validate_layout([own, ClusterPath("b", "b1", "b1-alt")])
    layout = Layout(own)
    with pytest.raises(Mode6Error, match="MODE-6"):
        layout.with_cluster(ClusterPath("b", "cluster1"))
    with pytest.raises(Mode6Error, match="same security mode"):
        Layout(own, (ClusterPath("b", "b1"),)).with_own_mode("mixed")


def test_mode6_names_map_to_cluster_folders_by_path_prefix():
    layout = Layout(ClusterPath("a", "cluster1"), (ClusterPath("b", "branch", "branch-alt"),))
    assert layout.split("CTLFile.tlv")[1:] == ("cluster1", "CTLFile.tlv")
    assert layout.split("cluster1/CTLFile.tlv")[1:] == ("cluster1", "CTLFile.tlv")
    assert layout.split("branch/CTLFile.tlv")[0].name == "b"
    assert layout.split("branch-alt/SEP001122334455.cnf.xml")[1:] == ("branch-alt", "SEP001122334455.cnf.xml")
    assert layout.split("English_United_States/7970-dictionary.xml")[1] == "cluster1"
    for bad in ("../x", "a/../b", "signed/x.sgn", "cluster1/signed/x", "a/b/c/d", "x y", "", ".x", "a//b"):
        with pytest.raises(BadName):
            layout.split(bad)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_name_split_fuzz_never_escapes(name):
    """Any name: a clean BadName or a (folder, name) without '..', absolute parts or the signed/ folder."""
    layout = Layout(ClusterPath("a", "cluster1"), (ClusterPath("b", "branch"),))
    try:
        owner, folder, rest = layout.split(name)
    except BadName:
        return
    assert folder in ("cluster1", "branch")
    parts = rest.split("/")
    assert ".." not in parts and "" not in parts and parts[0] != "signed"


# --- AUTH-1 firmware -----------------------------------------------------------------------------

def test_auth1_firmware_image_signed_and_checked(tftp_cert, signer, tmp_path):
    """AUTH-1: a signed image verifies; an altered one, a wrong signer or a wrong load is refused."""
    load = firmware.load_name("7960")
    assert load == firmware.load_name("7940")
    image = firmware.sign_image(load, signer, 1_700_000_000)
    assert image == firmware.sign_image(load, signer, 1_700_000_000)  # deterministic
    info = firmware.verify_image(image, tftp_cert.cert, load)
    assert info.models == ("7940", "7960")
    with pytest.raises(firmware.FirmwareError, match="expected"):
        firmware.verify_image(image, tftp_cert.cert, firmware.load_name("7970"))
    for i in (10, len(image) // 2, len(image) - 1):
        altered = bytearray(image)
        altered[i] ^= 0x04
        with pytest.raises(firmware.FirmwareError):
            firmware.verify_image(bytes(altered), tftp_cert.cert, load)
    other = ensure_server_certificate(tmp_path, "other")
    with pytest.raises(firmware.FirmwareError, match="signature"):
        firmware.verify_image(image, other.cert, load)
    with pytest.raises(firmware.FirmwareError):
        firmware.load_name("9999")
    assert firmware.load_for_filename(f"{load}.sbn") == load == firmware.load_for_filename(f"{load}.sgn")
    assert firmware.load_for_filename("nothing.sbn") is None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_firmware_payload_parser_fuzz(data):
    try:
        firmware.parse_image_payload(firmware.MAGIC + data)
    except firmware.FirmwareError:
        pass


# --- AUTH-3 / AUTH-4 signed-file store -----------------------------------------------------------

async def test_auth4_memory_store_never_returns_a_stale_copy_and_is_bounded(tftp_cert, signer, tmp_path):
    """AUTH-4 (caching on): in memory, reused only for identical payloads, LRU-bounded."""
    store = SignedStore(SigningPool(signer), tmp_path, caching=True, max_entries=3)
    first = await store.get("c", "A.xml", b"one")
    assert await store.get("c", "A.xml", b"one") is first and store.hits == 1
    second = await store.get("c", "A.xml", b"two")
    assert parse_sgn(second).payload == b"two"
    verify_sgn(parse_sgn(second), tftp_cert.cert)
    for i in range(5):
        await store.get("c", f"F{i}.xml", b"x")
    assert len(store._memory) == 3 and store.evictions >= 3
    assert not (tmp_path / "c").exists()


async def test_auth4_disk_store_resigns_changed_sources_and_replaces_atomically(tftp_cert, signer, tmp_path):
    """AUTH-4 (caching off): written under signed/, replaced by rename when the source changes; a
    fresh store (restart) reuses a current file and re-signs a stale or damaged one."""
    store = SignedStore(SigningPool(signer), tmp_path, caching=False)
    path = tmp_path / "c" / "signed" / "A.xml.sgn"
    one = await store.get("c", "A.xml", b"one")
    assert path.read_bytes() == one
    inode = path.stat().st_ino
    two = await store.get("c", "A.xml", b"two")
    assert path.read_bytes() == two and path.stat().st_ino != inode
    restarted = SignedStore(SigningPool(signer), tmp_path, caching=False)
    assert await restarted.get("c", "A.xml", b"two") == two and restarted.hits == 1
    path.write_bytes(b"damaged")
    repaired = await restarted.get("c", "A.xml", b"two")
    verify_sgn(parse_sgn(repaired), tftp_cert.cert)
    assert sorted(p.name for p in path.parent.iterdir()) == ["A.xml.sgn"]  # no temp files left
    assert await restarted.refresh("c", [("A.xml", b"two"), ("B.xml", b"b")]) == 1
    assert await restarted.refresh("c", [("A.xml", b"two")], force=True) == 1


async def test_auth4_disk_store_never_serves_a_copy_that_is_not_its_own_intact_signature(
        tftp_cert, signer, tmp_path):
    """AUTH-4/AUTH-5 (caching off): a file under signed/ whose payload is still current is reused
    only if this server's certificate signed it under that name and the signature verifies — a
    flipped signature byte, a copy signed by another (earlier) key or under another name was served
    as it was, and every phone refused it until the source changed. Also after it was indexed."""
    other = FileSigner.from_issued(ensure_server_certificate(tmp_path / "old", "old-tftp"))
    path = tmp_path / "c" / "signed" / "A.xml.sgn"
    good = await SignedStore(SigningPool(signer), tmp_path, caching=False).get("c", "A.xml", b"payload")
    start, _ = parse_sgn(good).signature_span
    flipped = bytearray(good)
    flipped[start + 10] ^= 0xFF
    foreign = (bytes(flipped), SigningPool(other).sign_one("A.xml", b"payload"),
               SigningPool(signer).sign_one("B.xml", b"payload"))
    for bad in foreign:
        path.write_bytes(bad)
        restarted = SignedStore(SigningPool(signer), tmp_path, caching=False)
        served = await restarted.get("c", "A.xml", b"payload")
        verify_sgn(parse_sgn(served), tftp_cert.cert)
        assert parse_sgn(served).header.file_name == "A.xml.sgn" and path.read_bytes() == served
        path.write_bytes(bad)  # replaced behind the back of a store that indexed its own copy
        again = await restarted.get("c", "A.xml", b"payload")
        verify_sgn(parse_sgn(again), tftp_cert.cert)
        assert restarted.hits == 0
    assert await restarted.get("c", "A.xml", b"payload") == again and restarted.hits == 1


async def test_bulk_refresh_uses_the_process_pool(tftp_cert, signer, tmp_path):
    pool = SigningPool(signer, workers=2, chunk=10)
    try:
        store = SignedStore(pool, tmp_path, caching=True)
        items = [(f"SEP{i:012X}.cnf.xml", f"config {i}".encode()) for i in range(45)]
        t0 = time.perf_counter()
        assert await store.refresh("c", items) == 45
        assert pool._pool is not None and time.perf_counter() - t0 < 30
        assert await store.refresh("c", items) == 0  # nothing stale
        verify_sgn(parse_sgn(await store.get("c", items[7][0], items[7][1])), tftp_cert.cert)
        # A phone asking for a file the pool is signing right now waits for it (not signed twice),
        # and a second refresh at the same moment leaves the claimed files to the first.
        changed = [(name, payload + b" v2") for name, payload in items]
        store.pool_wait = 60.0  # however loaded the machine: the phone waits for the pool here
        first = asyncio.ensure_future(store.refresh("c", changed))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(store.refresh("c", changed))
        asked = await store.get("c", changed[33][0], changed[33][1])
        assert parse_sgn(asked).payload == changed[33][1]
        assert (await first, await second) == (45, 0)
        assert store.signed == 45 * 2 and store.misses == 0
        # A file queued behind the others longer than pool_wait is signed for the waiting phone.
        store.pool_wait = 0.0
        later = [(name, payload + b" v3") for name, payload in items]
        bulk = asyncio.ensure_future(store.refresh("c", later))
        await asyncio.sleep(0)
        asked = await store.get("c", later[44][0], later[44][1])
        assert parse_sgn(asked).payload == later[44][1] and store.misses == 1
        await bulk
        verify_sgn(parse_sgn(await store.get("c", later[44][0], later[44][1])), tftp_cert.cert)
    finally:
        pool.close()


# --- DEV-4 config builder ----------------------------------------------------------------------------

ENDPOINTS = ClusterEndpoints(callmanagers=("10.0.0.5",), capf_host="10.0.0.3", srst_host="10.0.0.8")


def _device(**kw):
    base = {"name": "SEP001122334455", "model": "7970", "security_mode": "encrypted", "device_pool": None,
            "config_version": 1, "web_access": True, "pc_port": True, "settings_access": True,
            "garp": True, "voice_vlan_access": True, "span_to_pc_port": False}
    return {**base, **kw}


def test_dev4_hardening_settings_written_into_the_config():
    """DEV-4, CHK-11: each hardening flag switched off in the database is off in the phone's
    config file (span to PC port, off by default, the other way round)."""
    switchable = ("web_access", "pc_port", "settings_access", "garp", "voice_vlan_access")
    for flag in switchable:
        config = parse_cnf_xml(build_device_config(_device(**{flag: False}), None, None, ENDPOINTS).to_xml())
        assert getattr(config.hardening, flag) is False
        assert all(getattr(config.hardening, f) for f in set(switchable) - {flag})
        assert config.hardening.span_to_pc_port is False
    spanning = parse_cnf_xml(build_device_config(_device(span_to_pc_port=True), None, None,
                                                 ENDPOINTS).to_xml())
    assert spanning.hardening.span_to_pc_port is True


def test_config_uses_pool_capf_operation_and_model_load():
    op = {"operation": "upgrade", "auth_mode": "string", "key_type": "rsa1024"}
    pool = {"callmanagers": ["10.1.0.1", "10.1.0.2"], "srst": "10.1.0.9"}
    config = build_device_config(_device(model="7960", security_mode="authenticated"), op, pool, ENDPOINTS)
    assert [m.host for m in config.call_managers] == ["10.1.0.1", "10.1.0.2"]
    assert config.srst.addresses == ("10.1.0.9",) and config.srst.option == "Enable"
    assert (config.capf_auth_mode, config.capf.operation, config.capf.key_size) == ("string", "upgrade", 1024)
    assert config.capf.auth_string is None  # CAPF keeps only a hash; the user types the digits
    assert config.load_information == firmware.load_name("7960") and config.security_mode == "authenticated"


def test_listing_skips_a_file_that_vanished_or_a_dangling_link(tmp_path):
    """The static listing feeds the re-sign of every mode.changed/ctl.updated event: a file an
    administrator removed mid-walk (here a dangling link) is skipped, not an OSError that fails it."""
    from ccmsec_tftp_signer.files import TftpContent

    folder = tmp_path / "cluster1"
    folder.mkdir()
    (folder / "RingList.xml").write_bytes(b"<rings/>")
    (folder / "gone.xml").symlink_to(folder / "deleted.xml")
    content = TftpContent(tmp_path, Layout(ClusterPath("local", "cluster1")), None, None, None, None)
    assert [f.name for f in content.list_static()] == ["RingList.xml"]


def test_static_files_are_deterministic():
    files = static_files(ENDPOINTS)
    assert set(files) >= {"RingList.xml", "Ringer1.raw", "XMLDefault.cnf.xml", "United_States/g3-tones.xml"}
    assert files == static_files(ENDPOINTS)
    assert len(ring_tone(480.0)) == 8000


def test_dev4_hardening_settings_are_one_list_from_the_table_to_the_served_file():
    """Call control sends the hardening columns (DEV-4) as `DeviceHardening`; the TFTP server builds
    from that message's fields: a column added to the table but not to the message would never
    reach the phones, so the three lists must be the same."""
    from ccmsec.db.devices import HARDENING_FIELDS
    from ccmsec_proto.callmanager_pb2 import DeviceHardening
    from ccmsec_tftp_signer.content import HARDENING

    assert tuple(f.name for f in DeviceHardening.DESCRIPTOR.fields) == HARDENING_FIELDS == HARDENING

"""The phone's own decisions, without sockets: CTL-2, AUTH-5, AUTH-1, AUTH-6, CERT-1, CERT-2, DEV-3,
DEV-4, persistence of what it holds, and fuzzing of every download it accepts."""

from __future__ import annotations

import os
import stat


import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccmsec.domain import DeviceSecurityMode
from ccmsec.formats.cnfxml import CallManagerMember, CapfSettings, DeviceConfig, Hardening
from ccmsec.formats.ctl import Role, build_ctl, record_from_certificate
from ccmsec.formats.sgn import sign_file
from ccmsec.pki import ca
from ccmsec.pki.tls import SccpTransportMode
from ccmsec.pki.tokens import FileSigner, issue_mic
from ccmsec_phone_sim.boot import Network
from ccmsec_phone_sim.fleet import Fleet, FleetError
from ccmsec_phone_sim.models import ModelError, mac_of, model_info, names_with_prefix
from ccmsec_phone_sim.phone import BootFailure, Phone, State

NAME = "SEP0011223344AA"
TS = 1_700_000_000


@pytest.fixture(scope="module")
def pki():
    root = ca.create_ca(ca.name("Token CA"))
    signers = {cn: FileSigner.from_issued(ca.issue_with_new_key(root, ca.name(cn)))
               for cn in ("sast1", "sast2", "rogue", "tftp", "ccm", "capf", "other-tftp")}
    signers["mfr"] = ca.create_ca(ca.name("Manufacturer CA"), key=ca.new_key("ec256"))
    signers["capf-ca"] = ca.create_ca(ca.name("CAPF CA"), key=ca.new_key("ec256"))
    return signers


def ctl(pki, signer="sast1", tokens=("sast1", "sast2"), ts=TS, ccm=True):
    records = [record_from_certificate(pki[t].certificate, Role.TOKEN) for t in tokens]
    records.append(record_from_certificate(pki["tftp"].certificate, Role.TFTP, "tftp", "127.0.0.1"))
    records.append(record_from_certificate(pki["capf"].certificate, Role.CAPF, "capf", "127.0.0.1"))
    if ccm:
        records.append(record_from_certificate(pki["ccm"].certificate, Role.CCM, "ccm", "127.0.0.1"))
    return build_ctl(records, pki[signer], ts)


def config(name=NAME, model="7960", mode=1, **kw) -> DeviceConfig:
    """`mode`: the cnf.xml deviceSecurityMode number (1 non-secure, 2 authenticated, 3 encrypted)."""
    return DeviceConfig(device_name=name, model=model, security_mode=DeviceSecurityMode.from_xml(mode),
                        call_managers=(CallManagerMember("127.0.0.1"),), **kw)


def signed(pki, payload: bytes, file_name: str, signer="tftp") -> bytes:
    return sign_file(payload, file_name, pki[signer], TS)


def phone(pki, model="7960", mic=False, **kw) -> Phone:
    return Phone(name=NAME, model=model, mic=issue_mic(pki["mfr"], NAME, "ec256") if mic else None,
                 image_anchors=[pki["tftp"].certificate], **kw)


# --- CTL-2 ----------------------------------------------------------------------------------------

def test_ctl2_first_ctl_trusted_later_only_from_a_trusted_token(pki):
    p = phone(pki)
    assert p.accept_ctl(ctl(pki))
    first = p.trust.to_bytes()
    with pytest.raises(BootFailure) as err:
        p.accept_ctl(ctl(pki, signer="rogue", tokens=("rogue",), ts=TS + 1))
    assert err.value.code == "ctl-rejected" and "CTL-2" in err.value.reason and not err.value.fatal
    assert p.trust.to_bytes() == first  # the old CTL stays
    newer = ctl(pki, signer="sast2", ts=TS + 2)
    assert p.accept_ctl(newer) and p.trust.to_bytes() == newer


def test_ctl2_replay_of_older_ctl_refused(pki):
    p = phone(pki)
    p.accept_ctl(ctl(pki, ts=TS + 5))
    with pytest.raises(BootFailure, match="older"):
        p.accept_ctl(ctl(pki, ts=TS))


# --- AUTH-5 ---------------------------------------------------------------------------------------

def test_auth5_signed_config_verified_with_ctl_tftp_certificate(pki):
    p = phone(pki)
    p.accept_ctl(ctl(pki))
    assert p.config_file_names() == [f"{NAME}.cnf.xml.sgn", "XMLDefault.cnf.xml.sgn"]
    xml = config().to_xml()
    cfg = p.accept_config(f"{NAME}.cnf.xml.sgn", signed(pki, xml, f"{NAME}.cnf.xml.sgn"))
    assert cfg.device_name == NAME and p.config == cfg


@pytest.mark.parametrize("case", ["flipped", "wrong-signer", "other-name", "unsigned"])
def test_auth5_altered_or_foreign_config_rejected(pki, case):
    p = phone(pki)
    p.accept_ctl(ctl(pki))
    requested = f"{NAME}.cnf.xml.sgn"
    xml = config().to_xml()
    data = signed(pki, xml, requested)
    if case == "flipped":
        data = data.replace(b"<deviceSecurityMode>1", b"<deviceSecurityMode>3")
    elif case == "wrong-signer":
        data = signed(pki, xml, requested, signer="other-tftp")
    elif case == "other-name":
        data = signed(pki, xml, "SEP0011223344BB.cnf.xml.sgn")
    else:
        requested, data = f"{NAME}.cnf.xml", xml
    with pytest.raises(BootFailure) as err:
        p.accept_config(requested, data)
    assert err.value.code == "config-rejected" and err.value.fatal and "AUTH-5" in err.value.reason
    assert p.config is None


def test_config_for_another_device_rejected(pki):
    p = phone(pki)
    with pytest.raises(BootFailure, match="is for SEP0011223344BB"):
        p.accept_config(f"{NAME}.cnf.xml", config(name="SEP0011223344BB").to_xml())


# --- AUTH-1 ---------------------------------------------------------------------------------------

def test_auth1_image_verified_and_tampered_image_keeps_current(pki):
    p = phone(pki)
    p.accept_config(f"{NAME}.cnf.xml", config(load_information="LOAD-2").to_xml())
    assert p.firmware_wanted() == "LOAD-2"
    good = signed(pki, b"image bytes" * 100, "LOAD-2.sgn")
    bad = bytearray(good)
    bad[-1] ^= 1
    with pytest.raises(BootFailure) as err:
        p.accept_firmware("LOAD-2", bytes(bad))
    assert err.value.code == "firmware-rejected" and not err.value.fatal
    assert "AUTH-1" in err.value.reason and p.firmware == "factory-7960"
    with pytest.raises(BootFailure, match="rejected"):  # signed by a key the phone does not know
        p.accept_firmware("LOAD-2", signed(pki, b"image", "LOAD-2.sgn", signer="other-tftp"))
    p.accept_firmware("LOAD-2", good)
    assert p.firmware == "LOAD-2" and p.firmware_wanted() is None


def test_auth1_phone_without_any_image_anchor_refuses_the_image(pki):
    p = Phone(name=NAME, model="7912")
    p.accept_config(f"{NAME}.cnf.xml", config(model="7912", load_information="L").to_xml())
    with pytest.raises(BootFailure, match="no image-signing certificate"):
        p.accept_firmware("L", signed(pki, b"x", "L.sgn"))


# --- AUTH-6 / CERT-2 ------------------------------------------------------------------------------

def test_auth6_tls_only_with_certificate_ctl_entry_and_secure_config(pki):
    p = phone(pki, model="7970", mic=True)
    p.accept_config(f"{NAME}.cnf.xml", config(model="7970", mode=3).to_xml())
    plan = p.sccp_plan()
    assert not plan.secure and "no CTL with a CallManager entry" in plan.reason  # no CTL
    p.accept_ctl(ctl(pki, ccm=False))
    assert not p.sccp_plan().secure  # a CTL, but no CallManager entry
    q = phone(pki, model="7970", mic=True)
    q.accept_ctl(ctl(pki))
    q.config = config(model="7970", mode=1)
    assert not q.sccp_plan().secure  # non-secure configuration
    q.config = config(model="7970", mode=2)
    assert q.sccp_plan().mode is SccpTransportMode.AUTHENTICATED
    r = phone(pki)  # a 7960 without an LSC
    r.accept_ctl(ctl(pki))
    r.config = config(mode=3)
    assert "no certificate" in r.sccp_plan().reason and not r.sccp_plan().secure


def test_cert2_lsc_preferred_over_mic(pki):
    p = phone(pki, model="7970", mic=True)
    assert p.tls_identity()[0] == "MIC"
    p.lsc = ca.issue_with_new_key(pki["capf-ca"], ca.name(NAME), "ec256")
    kind, identity = p.tls_identity()
    assert kind == "LSC" and identity is p.lsc


# --- CERT-1 / DEV-4 / DEV-3 -----------------------------------------------------------------------

def test_cert1_factory_reset_clears_ctl_and_lsc_never_mic(pki):
    p = phone(pki, model="7970", mic=True)
    mic = p.mic.der
    p.accept_ctl(ctl(pki))
    p.lsc = ca.issue_with_new_key(pki["capf-ca"], ca.name(NAME), "ec256")
    p.factory_reset()
    assert not p.trust.has_ctl and p.lsc is None and p.mic.der == mic and p.state is State.OFF


def test_cert1_capf_result_never_touches_the_mic(pki):
    p = phone(pki, model="7970", mic=True)
    p.accept_ctl(ctl(pki))
    p.config = config(model="7970", capf=CapfSettings("127.0.0.1", operation="delete"))
    creds = p.capf_credentials()
    creds.mic_cert = creds.mic_key = None  # whatever CAPF did to the credentials object…
    p.take_capf_result(creds)
    assert p.mic is not None  # …the phone keeps its MIC


def test_dev3_models_and_capf(pki):
    assert model_info("CP-7970G").has_mic and model_info("7960").supports_lsc
    assert not model_info("7912").supports_lsc and not model_info("7905").secure_capable
    with pytest.raises(ValueError, match="has no MIC"):
        Phone(name=NAME, model="7960", mic=issue_mic(pki["mfr"], NAME, "ec256"))
    p = phone(pki, model="7912")
    p.config = config(model="7912", capf=CapfSettings("127.0.0.1", operation="install"))
    with pytest.raises(BootFailure, match="DEV-3") as err:
        p.check_capf_possible()
    assert err.value.code == "capf-refused"
    with pytest.raises(ModelError):
        model_info("8841")


def test_dev4_hardening_settings_in_force(pki):
    p = phone(pki)
    p.accept_config(f"{NAME}.cnf.xml", config(hardening=Hardening(web_access=False, garp=False)).to_xml())
    assert not p.web_server_enabled
    assert p.settings_in_force() == {"webAccess": "off", "pcPort": "on", "settingsAccess": "on",
                                     "garp": "off", "voiceVlanAccess": "on", "spanToPCPort": "off"}


def test_chk11_settings_menu_opens_only_on_a_running_phone_with_settings_access(pki):
    """CHK-11 / DEV-4: the Settings menu is refused while settingsAccess is off (and on a phone
    that is off); PC port, voice VLAN and span are described as the configuration says."""
    from ccmsec_phone_sim.phone import SettingsLocked, State

    p = phone(pki)
    with pytest.raises(SettingsLocked, match="boot it first"):
        p.settings_menu()
    p.accept_config(f"{NAME}.cnf.xml", config(hardening=Hardening(settings_access=False)).to_xml())
    p.enter(State.REGISTERED)
    with pytest.raises(SettingsLocked, match="Settings menu is locked"):
        p.settings_menu()
    p.accept_config(f"{NAME}.cnf.xml", config(hardening=Hardening(span_to_pc_port=True)).to_xml())
    menu = dict(p.settings_menu())
    assert menu["Device name"] == NAME and menu["CTL"] == "none"
    assert menu["PC port"] == ("enabled: the PC may reach the voice VLAN, and the phone's traffic "
                               "is mirrored to it")
    p.accept_config(f"{NAME}.cnf.xml", config(hardening=Hardening(pc_port=False, span_to_pc_port=True)).to_xml())
    assert dict(p.settings_menu())["PC port"].startswith("disabled")
    assert p.settings_in_force()["spanToPCPort"] == "off"  # no PC port, nothing to mirror to


# --- persistence and names ------------------------------------------------------------------------

def test_phone_round_trips_with_keys_ctl_and_config(pki):
    p = phone(pki, model="7970", mic=True, auth_string="123456")
    p.accept_ctl(ctl(pki))
    p.lsc = ca.issue_with_new_key(pki["capf-ca"], ca.name(NAME), "ec256")
    p.accept_config(f"{NAME}.cnf.xml.sgn", signed(pki, config(model="7970").to_xml(), f"{NAME}.cnf.xml.sgn"))
    p.enter(State.REGISTERED)
    q = Phone.from_dict(p.to_dict())
    assert q.mic.der == p.mic.der and q.lsc.der == p.lsc.der and q.trust.to_bytes() == p.trust.to_bytes()
    assert q.config == p.config and q.auth_string == "123456" and q.files == p.files
    assert q.state is State.OFF and q.saved_state is State.REGISTERED


def test_names_and_macs():
    assert names_with_prefix("SEP0011", 2, {"SEP001100000001"}) == ["SEP001100000002", "SEP001100000003"]
    assert mac_of("SEP0011223344AA") == "00:11:22:33:44:AA"
    with pytest.raises(ModelError):
        names_with_prefix("SEPXYZ", 1, set())


async def test_fleet_persists_and_refuses_bad_requests(pki, tmp_path):
    fleet = Fleet(tmp_path, Network("127.0.0.1", 9), manufacturer_ca=lambda: pki["mfr"], mic_key_kind="ec256")
    phones = await fleet.add(2, "7970", "SEP0A")
    assert all(p.mic is not None for p in phones)
    with pytest.raises(FleetError, match="count"):
        await fleet.add(0, "7960")
    with pytest.raises(FleetError, match="unknown phone model"):
        await fleet.add(1, "9999")
    with pytest.raises(FleetError, match="4 to 10 digits"):
        fleet.set_auth_string(phones[0].name, "12")
    with pytest.raises(FleetError, match="unknown phone"):
        fleet.select(["SEP0000000000FF"])
    fleet.set_auth_string(phones[0].name, "9876")
    await fleet.close()
    # Private keys and auth strings: an owner-only file in an owner-only folder.
    assert stat.S_IMODE(os.stat(tmp_path / "phones.json").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path).st_mode) == 0o700
    again = Fleet(tmp_path, Network("127.0.0.1", 9))
    restored = again.load()
    assert [p.name for p in restored] == [p.name for p in phones]
    assert restored[0].mic.der == phones[0].mic.der and restored[0].auth_string == "9876"
    await again.close()



async def test_fleet_saver_survives_phones_added_while_it_writes(pki, tmp_path):
    """The background save runs in a worker thread; a phone manufactured meanwhile (the fleet's
    dict grows on the event loop) must neither break that save nor stop later ones."""
    import asyncio
    import json
    import threading

    fleet = Fleet(tmp_path, Network("127.0.0.1", 9), save_interval=0.01)
    (first,) = await fleet.add(1, "7960", "SEP0B")
    in_save, release = threading.Event(), threading.Event()
    original = first.to_dict

    def slow_to_dict():  # hold the worker thread in the middle of the fleet
        in_save.set()
        release.wait(5)
        return original()

    first.to_dict = slow_to_dict
    fleet.start()
    assert await asyncio.to_thread(in_save.wait, 5)
    added = await fleet.add(3, "7960", "SEP0C")  # the loop changes the fleet during the save
    release.set()
    names = {first.name, *(p.name for p in added)}
    for _ in range(200):
        await asyncio.sleep(0.02)
        if fleet.path.exists() and {p["name"] for p in json.loads(fleet.path.read_text())["phones"]} == names:
            break
    assert not fleet._saver.done(), fleet._saver.exception()
    assert {p["name"] for p in json.loads(fleet.path.read_text())["phones"]} == names
    await fleet.close()


async def test_fleet_close_waits_for_a_background_save_in_progress(tmp_path):
    """Closing while the saver's write runs in its worker thread: cancelling the saver does not
    stop the thread, so its older snapshot (taken before a phone was added) was written after
    close's final save — the store lost that phone. Close now waits for the write, then saves."""
    import asyncio
    import json
    import threading

    fleet = Fleet(tmp_path, Network("127.0.0.1", 9), save_interval=0.01)
    (first,) = await fleet.add(1, "7960", "SEP0D")
    in_save, release, written = threading.Event(), threading.Event(), threading.Event()
    original_to_dict, original_save = first.to_dict, fleet.save

    def held_to_dict():  # the background save holds here; close's own save goes through
        if threading.current_thread() is not threading.main_thread():
            in_save.set()
            release.wait(5)
        return original_to_dict()

    def save(runners=None):
        original_save(runners)
        if threading.current_thread() is not threading.main_thread():
            written.set()

    first.to_dict, fleet.save = held_to_dict, save
    fleet.start()
    assert await asyncio.to_thread(in_save.wait, 5)
    (added,) = await fleet.add(1, "7960", "SEP0E")   # not in the snapshot being written
    closing = asyncio.create_task(fleet.close())
    await asyncio.sleep(0.2)
    assert not closing.done()  # close waits for the write in progress
    release.set()
    await asyncio.wait_for(closing, 5)
    assert written.is_set()    # the background write ended before close returned…
    assert {p["name"] for p in json.loads(fleet.path.read_text())["phones"]} == {first.name, added.name}
    assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]  # nothing left
    assert not list(tmp_path.glob(".phones.json.*"))  # no temporary file left behind


async def test_rst9_node_endpoints_from_endpoints_or_name_and_bad_names_reach_nobody():
    from ccmsec_phone_sim.nodes import NOWHERE, node_endpoints, normalise_ip

    endpoints = {"services": {"callmanager-sub1": {"host": "127.0.1.12", "sccp_port": 12000},
                              "callmanager": {"host": "0.0.0.0"}}}
    cluster = (2000, 2443)
    sub1 = await node_endpoints("callmanager-sub1", endpoints=endpoints, peers={}, sccp_ports=cluster)
    assert (sub1.addresses, sub1.ports) == ({"127.0.1.12"}, {12000})     # its own ports, not the cluster's
    assert sub1.reached_by("127.0.1.12", 12000) and not sub1.reached_by("127.0.1.12", 2000)
    # bound to every address: found by its peer host (or its name) instead; no port listed: the cluster's
    pub = await node_endpoints("callmanager", endpoints=endpoints, peers={"callmanager": "127.0.1.2"},
                               sccp_ports=cluster)
    assert (pub.addresses, pub.ports) == ({"127.0.1.2"}, {2000, 2443})
    assert pub.reached_by("::ffff:127.0.1.2", 2443) and not pub.reached_by("", 2000)
    # no endpoints file: the name resolved, at the cluster's SCCP ports
    local = await node_endpoints("callmanager", endpoints=None, peers={"callmanager": "localhost"},
                                 sccp_ports=cluster)
    assert "127.0.0.1" in local.addresses and local.ports == {2000, 2443}
    # an endpoints file that does not list the server: no node of this cluster
    assert await node_endpoints("localhost", endpoints=endpoints, peers={}, sccp_ports=cluster) == NOWHERE
    for bad in ("", "a b", "x" * 300, "-x", "host;rm"):
        assert await node_endpoints(bad, endpoints=endpoints, peers={}, sccp_ports=cluster) == NOWHERE
    assert normalise_ip("::ffff:127.0.0.1") == "127.0.0.1" and normalise_ip("callmanager") is None


async def test_rst9_a_reset_of_one_node_spares_another_node_on_the_same_address(tmp_path):
    """RST-9: two nodes on 127.0.0.1 at different SCCP ports, a third on 127.0.0.2. Matching the
    address alone, a reset of `callmanager` (or of `localhost`, which resolves to 127.0.0.1) reset
    the phones of both nodes on 127.0.0.1; now address and port must both be the node's."""
    import asyncio
    import json
    import time

    from ccmsec.cluster.state import endpoints_path
    from ccmsec_phone_sim.main import PhoneSimService, PhoneSimSettings
    from ccmsec_proto import events_pb2

    path = endpoints_path(tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"services": {
        "callmanager": {"host": "127.0.0.1", "sccp_port": 2000, "sccp_tls_port": 2443},
        "callmanager-sub1": {"host": "127.0.0.1", "sccp_port": 12000, "sccp_tls_port": 12443},
        "callmanager-sub2": {"host": "127.0.0.2", "sccp_port": 2000, "sccp_tls_port": 2443}}}))
    svc = PhoneSimService(PhoneSimSettings(service="phone-sim", data_dir=tmp_path))
    svc.fleet = Fleet(tmp_path / "phone-sim", Network("127.0.0.1", 9, tftp_timeout=5, tftp_retries=1))
    phones = await svc.fleet.add(3, "7960", "SEP0A1A")
    where = dict(zip([p.name for p in phones], [("127.0.0.1", 2443), ("127.0.0.1", 12000), ("127.0.0.2", 2000)]))
    for p in phones:
        p.state, (p.registered_address, p.registered_port) = State.REGISTERED, where[p.name]
    booted: list[list[str]] = []

    async def boot(runners, requested_at=None):
        booted.append(sorted(r.phone.name for r in runners))
        return len(booted[-1])

    svc.fleet.boot = boot

    async def reset(server: str) -> list[str]:
        await svc.on_device_reset(events_pb2.Event(id=server, occurred_unix_ms=int(time.time() * 1000),
                                                   device_reset=events_pb2.DeviceReset(server=server)))
        await asyncio.wait(svc._tasks, timeout=5)
        return booted.pop()

    assert await reset("callmanager") == [phones[0].name]
    assert await reset("callmanager-sub1") == [phones[1].name]
    assert await reset("callmanager-sub2") == [phones[2].name]
    assert await reset("localhost") == []          # no node of this cluster (endpoints file)
    path.unlink()                                  # compose: no file; the name at the cluster's ports
    svc.settings = PhoneSimSettings(service="phone-sim", data_dir=tmp_path, peers={"callmanager": "localhost"})
    assert await reset("callmanager") == [phones[0].name]   # its peer host, localhost
    await svc.fleet.close()


async def test_fleet_concurrent_adds_get_distinct_names(pki, tmp_path):
    """Two AddPhones at once with the same prefix: the names were chosen before the MICs were
    made off-loop, so both requests chose the same names and the second replaced the first's
    phones (4 phones answered, 2 kept). Manufacture is now one request at a time."""
    import asyncio

    fleet = Fleet(tmp_path, Network("127.0.0.1", 9), manufacturer_ca=lambda: pki["mfr"], mic_key_kind="ec256")
    first, second = await asyncio.gather(fleet.add(2, "7970", "SEP0F"), fleet.add(2, "7970", "SEP0F"))
    names = [p.name for p in first + second]
    assert len(set(names)) == 4 and set(fleet.runners) == set(names)
    assert all(fleet.runners[p.name].phone is p for p in first + second)
    await fleet.close()


async def test_two_boot_requests_at_once_leave_one_boot_task(tmp_path):
    """An event and a gRPC reset at the same moment: each request stopped the phone and started a
    boot task, so two boot loops ran for one phone (the first no longer owned, never stopped).
    Now the second request sees the boot the first started and does nothing."""
    import asyncio

    from ccmsec_phone_sim.boot import PhoneRunner
    from ccmsec_phone_sim.phone import Phone

    runner = PhoneRunner(Phone(name="SEP00AA00BB00DD", model="7960"),
                         Network("127.0.0.1", 9, tftp_timeout=5, tftp_retries=1))
    assert await runner.request_boot()
    await asyncio.sleep(0.05)                   # the first boot is running (waiting for TFTP)
    started = await asyncio.gather(runner.request_boot(), runner.request_boot())
    assert sorted(started) == [False, True]
    mine = [t for t in asyncio.all_tasks() if t.get_name() == "phone SEP00AA00BB00DD" and not t.done()]
    assert mine == [runner._task]
    await runner.stop(power_off=True)
    await asyncio.sleep(0)
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "phone SEP00AA00BB00DD" and not t.done()]


async def test_a_reset_request_cancelled_while_stopping_the_phone_leaves_its_task_owned(tmp_path):
    """A gRPC reset whose caller gives up (its deadline) is cancelled while request_boot stops the
    phone's task: that task had been cancelled once and was no longer the runner's. On 3.11 a
    task can swallow a cancel (asyncio.wait_for, see ccmsec.aio.tasks) and run on — then nothing
    (stop, power-off, close) ever ended it. It now stays the phone's task until it has ended."""
    import asyncio

    from ccmsec_phone_sim.boot import PhoneRunner
    from ccmsec_phone_sim.phone import Phone

    runner = PhoneRunner(Phone(name="SEP00AA00BB00DE", model="7960"), Network("127.0.0.1", 9))

    async def boot_that_swallows_one_cancel():  # as a phone task inside 3.11's wait_for
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass
        await asyncio.sleep(3600)

    phone_task = runner._task = asyncio.create_task(boot_that_swallows_one_cancel())
    await asyncio.sleep(0)
    request = asyncio.create_task(runner.request_boot())
    await asyncio.sleep(0.1)                   # request_boot is stopping the phone's task
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert not phone_task.done() and runner._task is phone_task
    await asyncio.wait_for(runner.close(), 5)  # ends it for sure
    assert phone_task.done() and runner._task is None


async def test_a_boot_requested_while_the_fleet_closes_leaves_no_phone_running(tmp_path):
    """Shutdown closes the fleet before the service's other tasks (the restore boot, a reset event
    being handled) are cancelled: a boot they requested while close stopped the phones started a
    new task after close had passed that phone — running, unowned, after the shutdown."""
    import asyncio

    fleet = Fleet(tmp_path, Network("127.0.0.1", 9, tftp_timeout=5, tftp_retries=1))
    await fleet.add(3, "7960", "SEP0A0A")
    runners = list(fleet.runners.values())
    await fleet.boot(runners)
    await asyncio.sleep(0.05)                   # every phone is booting (waiting for TFTP)
    closing = asyncio.create_task(fleet.close())
    booting = asyncio.create_task(fleet.boot(runners))   # e.g. a device.reset {all} handled now
    await asyncio.wait_for(asyncio.gather(closing, booting), 10)
    assert booting.result() == 0
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("phone SEP0A0A") and not t.done()]


def test_the_boot_back_off_stays_finite_however_long_the_phone_retries():
    """Retrying for ever (a TFTP server away for a day at 60 s a try): from attempt 1026 on the
    back-off's 2 ** n was too large for a float, and the OverflowError ended the phone's task."""
    from ccmsec_phone_sim.boot import PhoneRunner
    from ccmsec_phone_sim.phone import Phone

    runner = PhoneRunner(Phone(name="SEP00AA00BB00FF", model="7960"), Network("127.0.0.1", 9))
    for retries in (1, 2, 1025, 1026, 10**6):
        assert 0 < runner.retry_delay(retries) <= runner.net.boot_retry_max


# --- fuzzing: any bytes give a clean refusal ------------------------------------------------------

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2048), which=st.sampled_from(["ctl", "config", "sconfig", "image"]))
def test_fuzz_downloads_give_boot_failure_or_result(pki, data, which):
    p = phone(pki)
    if which == "sconfig":
        p.accept_ctl(ctl(pki))
    try:
        if which == "ctl":
            p.accept_ctl(data)
        elif which == "config":
            p.accept_config(f"{NAME}.cnf.xml", data)
        elif which == "sconfig":
            p.accept_config(f"{NAME}.cnf.xml.sgn", data)
        else:
            p.config = config(load_information="L")
            p.accept_firmware("L", data)
    except BootFailure as exc:
        assert exc.reason


def test_server_overrides_are_checked_kept_across_restarts_and_cleared():
    """Issue 14: a phone can be pointed at any TFTP, CAPF and call-control address; a bad one
    changes nothing."""
    from ccmsec_phone_sim.phone import Phone

    p = Phone(name="SEP00AA00BB00CC", model="7960")
    p.set_servers(tftp="10.1.2.3", capf="capf.example.net:3805", call_control=["10.1.2.4", "[::1]:2001"])
    assert (p.tftp_server, p.capf_server, p.call_control) == ("10.1.2.3:69", "capf.example.net:3805",
                                                              ("10.1.2.4", "[::1]:2001"))
    assert p.tftp_address(("127.0.0.1", 10069)) == ("10.1.2.3", 69)
    assert p.capf_address() == ("capf.example.net", 3805)
    assert p.call_control_addresses(secure=True) == [("10.1.2.4", 2443), ("::1", 2001)]
    assert p.call_control_addresses(secure=False) == [("10.1.2.4", 2000), ("::1", 2001)]
    for bad in (dict(capf="two words"), dict(tftp="10.0.0.1:0"), dict(call_control=["a", "b", "c", "d"]),
                dict(capf="10.0.0.1", tftp="x" * 300)):
        with pytest.raises(ValueError):
            p.set_servers(**bad)
        assert p.capf_server == "capf.example.net:3805"  # nothing changed
    again = Phone.from_dict(p.to_dict())
    assert (again.tftp_server, again.capf_server, again.call_control) == (p.tftp_server, p.capf_server,
                                                                          p.call_control)
    again.set_servers(clear=True)
    assert again.tftp_address(("127.0.0.1", 10069)) == ("127.0.0.1", 10069) and not again.call_control


@pytest.mark.parametrize("content", ['{"version": 1, "phones": [', "[]", '{"phones": 7}'])
async def test_an_unreadable_phone_store_stops_the_service_and_is_left_as_it_is(tmp_path, content):
    """A phone store that cannot be read stops phone-sim with one line — and is not replaced: the
    fleet was kept before its store was read, so the shutdown that followed saved it, an empty
    fleet written over the store (every phone's MIC and LSC keys gone). Valid JSON of the wrong
    shape was an AttributeError (a traceback) on top."""
    from ccmsec.runtime.service import StartError
    from ccmsec_phone_sim.main import PhoneSimService, PhoneSimSettings

    store = tmp_path / "phone-sim" / "phones.json"
    store.parent.mkdir()
    store.write_text(content)
    svc = PhoneSimService(PhoneSimSettings(service="phone-sim", data_dir=tmp_path,
                                           peers={"tftp-signer": "127.0.0.1"}))
    with pytest.raises(StartError, match="unreadable phone store"):
        await svc.setup()
    await svc.teardown()  # what Service.run's shutdown does next
    assert store.read_text() == content


@pytest.mark.parametrize("bad", [{"mic": {"cert": 5, "key": 6}, "model": "7970"}, {"image_anchors": [5]},
                                 {"lsc": {"cert": ["x"], "key": None}}])
async def test_a_phone_entry_of_the_wrong_shape_is_skipped_and_the_rest_of_the_fleet_kept(tmp_path, bad):
    """A number where the store holds a PEM was an AttributeError out of Fleet.load: phone-sim did
    not start, with a traceback. The entry is skipped (logged) like any other bad one."""
    import json

    from ccmsec_phone_sim.phone import Phone

    good = Phone(name="SEP00AA00BB0001", model="7960").to_dict()
    (tmp_path / "phones.json").write_text(json.dumps(
        {"version": 1, "phones": [good, {**good, "name": "SEP00AA00BB0002", **bad}]}))
    assert [p.name for p in Fleet(tmp_path, Network("127.0.0.1", 9)).load()] == ["SEP00AA00BB0001"]


async def test_an_image_signing_certificate_that_is_no_certificate_is_a_warning_not_a_dead_task(tmp_path, caplog):
    """tftp-signer answering GetSigningCertificate with bytes that are no certificate: the
    ValueError ended phone-sim's background task with a traceback. Now one warning; phones are
    manufactured without the anchor (they verify images with their CTL)."""
    import grpc

    from ccmsec_phone_sim.main import PhoneSimService, PhoneSimSettings
    from ccmsec_proto import common_pb2, tftp_signer_pb2_grpc

    class Signer(tftp_signer_pb2_grpc.TftpSignerServicer):
        async def GetSigningCertificate(self, request, context):  # noqa: N802
            return common_pb2.Certificate(der=b"not a certificate")

    server = grpc.aio.server()
    tftp_signer_pb2_grpc.add_TftpSignerServicer_to_server(Signer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        svc = PhoneSimService(PhoneSimSettings(service="phone-sim", data_dir=tmp_path,
                                               peers={"tftp-signer": "127.0.0.1"}))
        svc.peer_channel = lambda role: channel
        await svc._fetch_image_anchor()
        assert svc._image_anchors() == []
        assert "is not a certificate" in caplog.text
    finally:
        await channel.close()
        await server.stop(None)


async def test_rst9_with_an_unreadable_endpoints_file_still_resets_by_the_node_name(tmp_path):
    """An endpoints path that cannot be read (here a folder: IsADirectoryError, which the reader
    does not absorb) made the RST-9 event handler raise; now the node is found by its name."""
    import asyncio
    import time

    from ccmsec.cluster.state import endpoints_path
    from ccmsec_phone_sim.main import PhoneSimService, PhoneSimSettings
    from ccmsec_phone_sim.phone import State
    from ccmsec_proto import events_pb2

    endpoints_path(tmp_path).mkdir(parents=True)
    svc = PhoneSimService(PhoneSimSettings(service="phone-sim", data_dir=tmp_path,
                                           peers={"callmanager": "localhost"}))
    svc.fleet = Fleet(tmp_path / "phone-sim", Network("127.0.0.1", 9, tftp_timeout=5, tftp_retries=1))
    (phone,) = await svc.fleet.add(1, "7960", "SEP0A0B")
    runner = svc.fleet.runners[phone.name]
    phone.state, phone.registered_address, phone.registered_port = State.REGISTERED, "127.0.0.1", 2000  # localhost
    await svc.on_device_reset(events_pb2.Event(id="r", occurred_unix_ms=int(time.time() * 1000),
                                               device_reset=events_pb2.DeviceReset(server="callmanager")))
    await asyncio.wait(svc._tasks, timeout=5)   # the node's phones are found aside (see below)
    assert runner._task is not None   # the phone reboots
    await svc.fleet.close()


async def test_rst9_a_node_name_that_does_not_resolve_holds_back_no_other_reset(tmp_path, monkeypatch):
    """Device-reset events are handled one after another. A node name whose resolution hangs (a DNS
    server away) held the handler for the whole timeout, so the reset of another node queued behind
    it waited; and each such event took a thread of the loop's default executor for as long as the
    lookup hung (nothing cancels getaddrinfo), until MICs, saves and other lookups waited too. Now
    the node's phones are found aside, in the resolver's own threads, one lookup per name."""
    import asyncio
    import json
    import socket
    import threading
    import time

    from ccmsec.cluster.state import endpoints_path
    from ccmsec_phone_sim import nodes
    from ccmsec_phone_sim.main import PhoneSimService, PhoneSimSettings
    from ccmsec_proto import events_pb2

    real, answer, asked = socket.getaddrinfo, threading.Event(), []

    def getaddrinfo(host, *args, **kwargs):  # the resolver: this one name never answers in time
        if host == "callmanager-sub2":
            asked.append(host)
            answer.wait(10)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    path = endpoints_path(tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"services": {"callmanager-sub1": {"host": "127.0.1.12"},
                                             "callmanager-sub2": {"host": "callmanager-sub2"}}}))
    svc = PhoneSimService(PhoneSimSettings(service="phone-sim", data_dir=tmp_path))
    svc.fleet = Fleet(tmp_path / "phone-sim", Network("127.0.0.1", 9, tftp_timeout=5, tftp_retries=1))
    (phone,) = await svc.fleet.add(1, "7960", "SEP0A0C")
    runner = svc.fleet.runners[phone.name]
    phone.state, phone.registered_address, phone.registered_port = State.REGISTERED, "127.0.1.12", 2000  # sub1

    def reset(i: int, server: str):
        return svc.on_device_reset(events_pb2.Event(id=f"r{i}", occurred_unix_ms=int(time.time() * 1000),
                                                     device_reset=events_pb2.DeviceReset(server=server)))
    try:
        started = time.monotonic()
        for i in range(8):
            await reset(i, "callmanager-sub2")   # the node whose name hangs, again and again
        await reset(8, "callmanager-sub1")
        # Held back, the reset would start only when the hung lookup gives up (10 s); the bound is
        # well below that but leaves a loaded CI machine its scheduling delays.
        while runner._task is None and time.monotonic() - started < 7:
            await asyncio.sleep(0.02)
        assert runner._task is not None and time.monotonic() - started < 7.0
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), 2) == "free"
        assert asked == ["callmanager-sub2"]   # one lookup for the name, not one thread per event
    finally:
        answer.set()
        await asyncio.wait(svc._tasks, timeout=5)
        await svc.fleet.close()
    assert not svc._tasks and nodes._lookups == {}


@pytest.mark.parametrize("endpoints", [None, b'{"services": {"tftp-signer": {"tftp_port": "x"}}}',
                                       b'{"services": ["tftp-signer"]}',
                                       b'{"services": {"tftp-signer": {"tftp_port": 70000}}}'])
def test_tftp_port_from_an_unreadable_or_foreign_endpoints_file_falls_back_to_the_setting(tmp_path, endpoints):
    """The endpoints file names tftp-signer's port; one that cannot be read (a folder) or holds no
    port stopped phone-sim's start with a traceback — now the configured port is used."""
    from ccmsec.cluster.state import endpoints_path
    from ccmsec_phone_sim.main import PhoneSimService, PhoneSimSettings

    path = endpoints_path(tmp_path)
    if endpoints is None:
        path.mkdir(parents=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(endpoints)
    svc = PhoneSimService(PhoneSimSettings(service="phone-sim", data_dir=tmp_path, tftp_port=6969,
                                           peers={"tftp-signer": "127.0.0.1"}))
    assert svc.tftp_address() == ("127.0.0.1", 6969)


def test_a_start_error_is_one_line_and_exit_code_1(tmp_path):
    """`run_service` ends a StartError with its one line (exit 1), never a traceback."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        from ccmsec.runtime.service import Service, StartError, run_service

        class Broken(Service):
            role = "phone-sim"
            async def run(self):
                raise StartError("the phone store is unreadable")

        run_service(Broken)
    """)
    env = {**os.environ, "CCMSEC_SERVICE": "phone-sim", "CCMSEC_DATA_DIR": str(tmp_path)}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 1, res.stderr
    assert "cannot start: the phone store is unreadable" in res.stderr
    assert "Traceback" not in res.stderr


async def test_shutdown_saves_the_fleet_even_when_the_save_outlasts_the_step_budget(tmp_path, monkeypatch):
    """Shutdown gives teardown `shutdown_grace` + 0.5 s (4.5 s by default). A large fleet's
    background write of phones.json still running then (here slowed past the budget) made
    Fleet.close wait for it, be cancelled there and skip the final save: the store kept the older
    snapshot, without the phones changed since. Now the final save outlives that cancel (bounded by
    CCMSEC_PHONE_STORE_SAVE_LIMIT) and the store is whole (atomic write, no temporary left)."""
    import asyncio
    import json
    import time

    from ccmsec_phone_sim import fleet as fleet_mod
    from ccmsec_phone_sim.main import PhoneSimService, PhoneSimSettings

    real, started, ended = fleet_mod.atomic_write, [], []

    def slow_write(path, data, mode=0o644):   # the first (background) write: a slow disk
        started.append(time.monotonic())
        if len(started) == 1:
            time.sleep(2.5)
        real(path, data, mode)
        ended.append(1)

    monkeypatch.setattr(fleet_mod, "atomic_write", slow_write)
    svc = PhoneSimService(PhoneSimSettings(service="phone-sim", data_dir=tmp_path, shutdown_grace=1.0))
    svc.fleet = Fleet(tmp_path / "phone-sim", Network("127.0.0.1", 9, tftp_timeout=5, tftp_retries=1),
                      save_interval=0)
    svc.fleet.start()
    (first,) = await svc.fleet.add(1, "7960", "SEP0A0D")
    while not started:                         # the background save of the first phone is writing
        await asyncio.sleep(0.01)
    (second,) = await svc.fleet.add(1, "7960", "SEP0A0E")    # changed after that snapshot
    await svc._shutdown()                      # teardown's budget: 1.5 s, the write takes 2.5 s
    # It waited for the slow write (2.5 s from its start, just before the shutdown) and the final
    # save after it, not only the budget.
    assert time.monotonic() - started[0] >= 2.5 and len(started) >= 2
    deadline = time.monotonic() + 5
    while len(ended) < len(started) and time.monotonic() < deadline:   # no thread still writing
        await asyncio.sleep(0.05)
    store = svc.fleet.path
    assert sorted(p["name"] for p in json.loads(store.read_text())["phones"]) == sorted(
        [first.name, second.name])
    assert [f.name for f in store.parent.iterdir()] == ["phones.json"]   # no partial file left


async def test_a_final_save_cut_short_by_its_limit_says_so_and_leaves_the_last_whole_store(tmp_path, monkeypatch,
                                                                                          caplog):
    """Past CCMSEC_PHONE_STORE_SAVE_LIMIT the final save is given up with an error naming the
    setting; the store is the last complete save, never a partial file."""
    import json
    import time

    from ccmsec_phone_sim import fleet as fleet_mod

    fleet = Fleet(tmp_path / "phone-sim", Network("127.0.0.1", 9, tftp_timeout=5, tftp_retries=1))
    (first,) = await fleet.add(1, "7960", "SEP0A0F")
    fleet.save()
    await fleet.add(1, "7960", "SEP0A10")
    real = fleet_mod.atomic_write

    def slow_write(path, data, mode=0o644):
        time.sleep(1.0)
        real(path, data, mode)

    monkeypatch.setattr(fleet_mod, "atomic_write", slow_write)
    await fleet.close(save_limit=0.2)
    assert "did not finish within 0.2 s (CCMSEC_PHONE_STORE_SAVE_LIMIT)" in caplog.text
    assert [p["name"] for p in json.loads(fleet.path.read_text())["phones"]] == [first.name]
    # The write in its thread ends atomically: the whole new store, nothing torn (waited for, not
    # slept a fixed 1.2 s for: on a loaded machine its fsync may take longer than the 0.4 s left).
    deadline = time.monotonic() + 15
    while len(json.loads(fleet.path.read_text())["phones"]) != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(json.loads(fleet.path.read_text())["phones"]) == 2


# A process that closes its fleet while the disk stalls in the middle of writing phones.json: the
# write is real (a temporary file in the store's folder, filled a chunk at a time, then renamed
# over the store), but after its first chunk the disk is stuck (an hour: for ever, for the test).
# (It was 64 bytes every half second: the whole ~1 kB store in ~7 s, so the process without the
# fix ended anyway within the test's wait and only a 6 s bound on a loaded machine told them apart.)
STALLED_DISK_CLOSE = """
import asyncio, os, sys, tempfile, time
from pathlib import Path
from ccmsec_phone_sim import fleet as fleet_mod
from ccmsec_phone_sim.boot import Network

folder, limit = Path(sys.argv[1]), float(sys.argv[2])

def stalling_write(path, data, mode=0o644):
    fd, tmp = tempfile.mkstemp(prefix=".phones.json.", dir=Path(path).parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data[:64]); fh.flush(); os.fsync(fh.fileno())
        time.sleep(3600)                             # the disk is stuck
        fh.write(data[64:])
    os.chmod(tmp, mode)
    os.replace(tmp, path)

async def main():
    fleet = fleet_mod.Fleet(folder, Network("127.0.0.1", 9, tftp_timeout=5, tftp_retries=1))
    await fleet.add(1, "7960", "SEP0A11")
    fleet.save()                                   # the last complete store
    await fleet.add(1, "7960", "SEP0A12")
    fleet_mod.atomic_write = stalling_write
    print("closing", time.monotonic(), flush=True)
    await fleet.close(save_limit=limit)

asyncio.run(main())
"""


def test_the_save_limit_bounds_the_process_exit_with_a_stalled_write_and_the_store_stays_whole(tmp_path):
    """CCMSEC_PHONE_STORE_SAVE_LIMIT gave up waiting for the final save, but the write went on in
    a thread of the loop's default executor, which `asyncio.run` and the interpreter join at exit:
    the process lived until the write ended (for ever on a stuck disk, as here), past the limit
    and the supervisor's kill. Now the write's thread does not hold the exit: the process ends
    after the limit, and phones.json is the last complete save. The cut write's partial temporary
    (private keys in it) was then left for ever, one more at each such exit: the next start
    removes it."""
    import json
    import subprocess
    import sys
    import time

    folder, limit = tmp_path / "phone-sim", 1.0
    proc = subprocess.Popen([sys.executable, "-c", STALLED_DISK_CLOSE, str(folder), str(limit)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("closing"), proc.stderr.read() if proc.poll() is not None else line
        closing = float(line.split()[1])
        try:   # generous for a loaded machine: the write it must not wait for takes an hour
            proc.wait(timeout=limit + 30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {time.monotonic() - closing:.1f} s after the close "
                                 f"began, past the {limit} s save limit") from None
        stderr = proc.stderr.read()
        assert proc.returncode == 0, stderr
        assert "did not finish within 1 s (CCMSEC_PHONE_STORE_SAVE_LIMIT)" in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    store = json.loads((folder / "phones.json").read_text())   # whole: the save before the close
    assert len(store["phones"]) == 1
    (leftover,) = folder.glob(".phones.json.*")     # the cut write's partial temporary
    assert leftover.stat().st_size == 64
    # The next start removes it before loading the store (nothing did: one more at each such exit).
    fleet = Fleet(folder, Network("127.0.0.1", 9, tftp_timeout=5, tftp_retries=1))
    assert [p.name for p in fleet.load()] == [store["phones"][0]["name"]]
    assert sorted(f.name for f in folder.iterdir()) == ["phones.json"]


async def test_rst9_a_reset_naming_srst_reaches_no_phone_in_fallback_and_says_why(tmp_path, caplog):
    """RST-9 resets the phones registered to a call-control node. The endpoints file also lists
    `srst` (the SRST reference, with its SCCP port), so a reset naming it reached the phones in
    SRST fallback. `srst` is no call-control node: refused with an error, no phone reset; the
    publisher's reset still reaches exactly its own phone."""
    import asyncio
    import json
    import time

    from ccmsec.cluster.state import endpoints_path
    from ccmsec_phone_sim.main import PhoneSimService, PhoneSimSettings
    from ccmsec_proto import events_pb2

    path = endpoints_path(tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"services": {
        "callmanager": {"host": "127.0.0.1", "sccp_port": 2000, "sccp_tls_port": 2443},
        "srst": {"host": "127.0.0.1", "sccp_port": 12000, "sccp_tls_port": 12443}}}))
    svc = PhoneSimService(PhoneSimSettings(service="phone-sim", data_dir=tmp_path))
    svc.fleet = Fleet(tmp_path / "phone-sim", Network("127.0.0.1", 9, tftp_timeout=5, tftp_retries=1))
    on_cm, in_fallback = await svc.fleet.add(2, "7960", "SEP0A1B")
    on_cm.state, on_cm.registered_address, on_cm.registered_port = State.REGISTERED, "127.0.0.1", 2000
    in_fallback.state, in_fallback.registered_address, in_fallback.registered_port = (
        State.REGISTERED, "127.0.0.1", 12000)
    booted: list[list[str]] = []

    async def boot(runners, requested_at=None):
        booted.append(sorted(r.phone.name for r in runners))
        return len(booted[-1])

    svc.fleet.boot = boot

    async def reset(server: str) -> list[str]:
        await svc.on_device_reset(events_pb2.Event(id=server, occurred_unix_ms=int(time.time() * 1000),
                                                   device_reset=events_pb2.DeviceReset(server=server)))
        await asyncio.wait(svc._tasks, timeout=5)
        return booted.pop()

    assert await reset("srst") == []
    assert "device reset refused: server 'srst' is no call-control node" in caplog.text
    assert await reset("callmanager") == [on_cm.name]


def test_the_start_removes_only_its_own_unfinished_writes_not_other_files_beside_the_store(tmp_path):
    """The leftover clean-up at load matched `.phones.json.*`: an editor's swap file of the store
    (`.phones.json.swp`, while the operator repairs it) or an operator's `.phones.json.bak` went
    with the cut writes. Only atomic_write's temporaries (mkstemp: 8 characters) are removed."""
    import tempfile

    from ccmsec.fsutil import atomic_write

    folder = tmp_path / "phone-sim"
    atomic_write(folder / "phones.json", b'{"phones": []}')
    fd, ours = tempfile.mkstemp(prefix=".phones.json.", dir=folder)   # as atomic_write names it
    os.close(fd)
    others = [".phones.json.swp", ".phones.json.bak", ".phones.json.orig-2026", ".phones.json.lock"]
    for name in others:
        (folder / name).write_bytes(b"not ours")
    fleet = Fleet(folder, Network("127.0.0.1", 9, tftp_timeout=5, tftp_retries=1))
    assert fleet.load() == []
    assert sorted(f.name for f in folder.iterdir()) == sorted(["phones.json", *others])

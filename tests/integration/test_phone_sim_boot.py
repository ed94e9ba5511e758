"""Simulated phones booting the whole secure way against real in-process servers on loopback:
TftpServer (files signed with ccmsec.formats.sgn, a CTL from two software tokens), CapfServer
(SqlCapfStore on a temporary SQLite database) and SccpServer on plain TCP and on TLS."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from ccmsec.domain import CapfAuthMode, DeviceSecurityMode
from ccmsec.aio.capf import CapfServer, capf_server_ssl_context
from ccmsec.aio.sccp import SccpServer
from ccmsec.aio.tftp import TftpServer
from ccmsec.db.base import Base
from ccmsec.db.capf import SqlCapfStore, schedule_operation
from ccmsec.formats.cnfxml import CallManagerMember, CapfSettings, DeviceConfig, Hardening
from ccmsec.formats.ctl import Role, build_ctl, record_from_certificate
from ccmsec.formats.sgn import sign_file
from ccmsec.pki import ca, tls
from ccmsec.pki.lsc import LscIssuer, ensure_capf_ca
from ccmsec.pki.tokens import FileSigner, issue_mic
from ccmsec.wire import sccp as s
from ccmsec_phone_sim.boot import Network, PhoneRunner
from ccmsec_phone_sim.phone import Phone, State

pytestmark = pytest.mark.timeout(60)

TS = 1_700_000_000
LOAD = "SCCP70.8-4-2S"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    capf = ensure_capf_ca(d, key_kind="ec256")
    root = ca.create_ca(ca.name("Token CA"))
    mfr = ca.create_ca(ca.name("Manufacturer CA"), key=ca.new_key("ec256"))

    def signer(cn):
        return FileSigner.from_issued(ca.issue_with_new_key(root, ca.name(cn)))

    ccm_key = ca.new_key()
    return {"dir": d, "capf": capf, "mfr": mfr, "sast1": signer("sast1"), "sast2": signer("sast2"),
            "tftp": signer("tftp1"), "ccm": ca.Issued(ca.self_signed(ca.name("ccm1"), ccm_key), ccm_key)}


def make_ctl(pki, ts=TS, signer="sast1", tokens=("sast1", "sast2")):
    records = [record_from_certificate(pki[t].certificate, Role.TOKEN) for t in tokens]
    records += [record_from_certificate(pki["ccm"].cert, Role.CCM, "ccm1", "127.0.0.1"),
                record_from_certificate(pki["tftp"].certificate, Role.TFTP, "tftp1", "127.0.0.1"),
                record_from_certificate(pki["capf"].cert, Role.CAPF, "capf", "127.0.0.1")]
    return build_ctl(records, pki[signer] if isinstance(signer, str) else signer, ts)


class Lab:
    """The cluster side: files on TFTP, devices for call control, a CAPF database."""

    def __init__(self, pki):
        self.pki = pki
        self.files: dict[str, bytes] = {}
        self.modes: dict[str, str] = {}
        self.registrations: list = []

    def sign(self, name: str, payload: bytes, signer=None) -> None:
        self.files[name + ".sgn"] = sign_file(payload, name + ".sgn", signer or self.pki["tftp"], TS)

    def device(self, name, model="7960", mode=1, hardening=Hardening(), capf_op=None, load=LOAD,
               signed=True, plain=True, auth_string=None, capf_auth=2, capf_port=None,
               cm_host="127.0.0.1", sccp=None):
        sccp = sccp or self.sccp
        cfg = DeviceConfig(
            device_name=name, model=model, security_mode=DeviceSecurityMode.from_xml(mode),
            capf_auth_mode=CapfAuthMode.from_xml(capf_auth),
            call_managers=(CallManagerMember(cm_host, sccp.port, self.sccp_tls.port),),
            capf=CapfSettings("127.0.0.1", capf_port or self.capf.port, capf_op, auth_string, "EC", None, "P-256")
            if capf_op else None,
            load_information=load, hardening=hardening)
        xml = cfg.to_xml()
        if plain:
            self.files[cfg.filename] = xml
        if signed:
            self.sign(cfg.filename, xml)
        self.modes[name] = {1: "non-secure", 2: "authenticated", 3: "encrypted"}[mode]
        return cfg

    def image(self, load=LOAD, payload=b"\x7fELF firmware " * 2000):
        self.sign(load, payload)

    async def resolve(self, filename, client):
        return self.files.get(filename)

    def decide(self, request: s.RegistrationRequest):
        self.registrations.append(request)
        return s.RegistrationDecision.accept()

    def phone(self, name, model="7960", mic=False, anchors=True) -> Phone:
        micert = issue_mic(self.pki["mfr"], name, "ec256") if mic else None
        return Phone(name=name, model=model, mic=micert,
                     image_anchors=[self.pki["tftp"].certificate] if anchors else [])

    def runner(self, phone: Phone) -> PhoneRunner:
        net = Network("127.0.0.1", self.tftp.address[1], tftp_timeout=0.3, tftp_retries=2, sccp_timeout=5,
                      reregister_attempts=2, reregister_backoff=0.1)
        return PhoneRunner(phone, net)


@pytest.fixture
async def lab(pki, tmp_path):
    from ccmsec.aio.sccp import require_transport_matching_mode

    lab = Lab(pki)
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'ccmsec.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    lab.db = async_sessionmaker(engine, expire_on_commit=False)
    lab.capf = CapfServer("127.0.0.1", 0, capf_server_ssl_context(pki["dir"] / "capf.crt", pki["dir"] / "capf.key"),
                          SqlCapfStore(lab.db), LscIssuer(pki["capf"], [pki["mfr"].cert]),
                          idle_timeout=5, session_timeout=10)
    await lab.capf.start()
    decide = require_transport_matching_mode(lab.modes.get, then=lab.decide)
    lab.sccp = SccpServer(decide, port=0)
    lab.sccp_tls = SccpServer(decide, port=0, ssl_context=tls.sccp_server_context(
        pki["ccm"], [pki["capf"].cert, pki["mfr"].cert]))
    await lab.sccp.start()
    await lab.sccp_tls.start()
    lab.tftp = TftpServer("127.0.0.1", 0, lab.resolve)
    await lab.tftp.start()
    lab.runners = []
    yield lab
    for r in lab.runners:
        await r.stop(power_off=True)
    await lab.tftp.close()
    await lab.sccp.close()
    await lab.sccp_tls.close()
    await lab.capf.close()
    await engine.dispose()


async def boot(lab, phone, timeout=20.0) -> PhoneRunner:
    runner = lab.runner(phone)
    lab.runners.append(runner)
    await runner.request_boot()
    await runner.wait(timeout)
    return runner


async def until(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.02)


async def http_get(address: str) -> bytes:
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    data = await reader.read()
    writer.close()
    return data


# --- non-secure -----------------------------------------------------------------------------------

async def test_non_secure_boot_downloads_config_and_image_and_registers_on_2000(lab):
    """AUTH-1 in non-secure mode: no CTL, plain config, yet the image is signed and verified."""
    name = "SEP001122330001"
    lab.device(name, signed=False)
    lab.image()
    runner = await boot(lab, lab.phone(name))
    p = runner.phone
    assert p.state is State.REGISTERED, (p.last_failure, p.last_failure_reason)
    assert p.firmware == LOAD and not p.trust.has_ctl
    assert {f"{name}.cnf.xml", f"{LOAD}.sgn"} <= set(p.files)
    assert p.transport == "non-secure" and name in lab.sccp.registered
    assert b"Device name: " + name.encode() in await http_get(p.web_address)  # web server on


async def test_auth1_tampered_image_is_rejected_and_current_image_kept(lab):
    """AUTH-1: an altered image is refused, the phone keeps running its current image and registers."""
    name = "SEP001122330002"
    lab.device(name, signed=False)
    lab.image()
    data = bytearray(lab.files[f"{LOAD}.sgn"])
    data[-10] ^= 0xFF
    lab.files[f"{LOAD}.sgn"] = bytes(data)
    runner = await boot(lab, lab.phone(name))
    p = runner.phone
    assert p.firmware == "factory-7960"
    assert p.last_failure == "firmware-rejected" and "AUTH-1" in p.last_failure_reason
    assert "still running factory-7960" in p.last_failure_reason
    assert p.state is State.REGISTERED


async def test_dev4_web_access_off_means_connection_refused(lab):
    """DEV-4: with webAccess off in the configuration the phone's web server is really off."""
    name = "SEP001122330003"
    lab.device(name, signed=False, hardening=Hardening.all_off())
    lab.image()
    runner = await boot(lab, lab.phone(name))
    p = runner.phone
    assert p.state is State.REGISTERED and p.web_address == ""
    assert p.settings_in_force() == {"webAccess": "off", "pcPort": "off", "settingsAccess": "off",
                                     "garp": "off", "voiceVlanAccess": "off", "spanToPCPort": "off"}
    # It was on with the factory defaults: turn access on, reboot, probe, then off again, probe.
    lab.device(name, signed=False)
    await runner.request_boot()
    await until(lambda: p.state is State.REGISTERED and p.web_address)
    address = p.web_address
    assert b"200 OK" in await http_get(address)
    lab.device(name, signed=False, hardening=Hardening.all_off())
    await runner.request_boot()
    await until(lambda: p.state is State.REGISTERED and p.boots == 3)
    with pytest.raises(ConnectionRefusedError):
        await http_get(address)


# --- secure path ----------------------------------------------------------------------------------

async def test_secure_boot_ctl_signed_config_capf_install_then_tls_registration(lab):
    """CTL → signed config (AUTH-5) → CAPF install (null auth) → reset → SCCP over TLS with the LSC
    (AUTH-2, AUTH-6), and an SCCP Reset from call control re-runs the boot."""
    name = "SEP001122330004"
    lab.files["CTLFile.tlv"] = make_ctl(lab.pki)
    lab.device(name, mode=3, capf_op="install")
    lab.image()
    await schedule_operation(lab.db, name, "install", auth_mode="null", key_type="ec256")
    runner = await boot(lab, lab.phone(name), timeout=30)
    p = runner.phone
    assert p.state is State.REGISTERED, (p.last_failure, p.last_failure_reason, list(p.history))
    assert p.lsc is not None and p.lsc.cert.issuer == lab.pki["capf"].cert.subject
    assert p.boots == 2  # CAPF installed the LSC, then the phone reset itself
    assert p.transport == "encrypted" and p.certificate_in_use == "LSC"
    request = lab.registrations[-1]
    assert request.secure and request.peer_certificate == p.lsc.cert
    assert {"CTLFile.tlv", f"{name}.cnf.xml.sgn", "LSC"} <= set(p.files)
    # An SCCP Reset (0x009F) from call control: the phone boots again and comes back.
    assert await lab.sccp_tls.reset_device(name)
    await until(lambda: p.boots == 3 and p.state is State.REGISTERED)


async def test_cert2_7970_presents_lsc_over_mic(lab):
    """CERT-2: a 7970 holding both presents its LSC; with its MIC only, the MIC (AUTH-6 met)."""
    name = "SEP001122330005"
    lab.files["CTLFile.tlv"] = make_ctl(lab.pki)
    lab.device(name, model="7970", mode=2)
    lab.image()
    phone = lab.phone(name, model="7970", mic=True)
    runner = await boot(lab, phone)
    assert phone.state is State.REGISTERED and phone.certificate_in_use == "MIC"
    assert lab.registrations[-1].peer_certificate == phone.mic.cert
    assert phone.transport == "authenticated"
    # Now CAPF installs an LSC authenticated by the MIC; afterwards the LSC is presented.
    lab.device(name, model="7970", mode=2, capf_op="install", capf_auth=4)  # capfAuthMode 4: MIC
    await schedule_operation(lab.db, name, "install", auth_mode="mic", key_type="ec256")
    await runner.request_boot()
    await until(lambda: phone.lsc is not None and phone.state is State.REGISTERED, 20)
    assert phone.certificate_in_use == "LSC" and lab.registrations[-1].peer_certificate == phone.lsc.cert
    assert phone.mic is not None


async def test_auth5_tampered_signed_config_rejected_with_reason(lab):
    """AUTH-5: a phone holding a CTL rejects an altered SEP<MAC>.cnf.xml.sgn; the reason is visible."""
    name = "SEP001122330006"
    lab.files["CTLFile.tlv"] = make_ctl(lab.pki)
    lab.device(name, mode=1)
    data = bytearray(lab.files[f"{name}.cnf.xml.sgn"])
    data[data.index(b"<deviceSecurityMode>") + 20] ^= 0x01
    lab.files[f"{name}.cnf.xml.sgn"] = bytes(data)
    runner = await boot(lab, lab.phone(name))
    p = runner.phone
    assert p.state is State.FAILED and p.last_failure == "config-rejected"
    assert "AUTH-5" in p.last_failure_reason and "bad signature" in p.last_failure_reason
    assert name not in lab.sccp.registered


@pytest.mark.parametrize("signer", ["sast1", "rogue"])
async def test_auth5_config_validly_signed_by_a_certificate_other_than_the_ctl_tftp_one_is_refused(lab, signer):
    """AUTH-5, not only byte flips: a configuration whose signature is valid — made by a security
    token listed in the CTL (role token, not TFTP) or by a stranger's key carrying the TFTP
    server's subject — is refused over real TFTP, with the reason shown, and the phone never
    registers on it."""
    from ccmsec.pki.ca import create_ca, issue_with_new_key, name as xname

    name = "SEP00112233000A"
    lab.files["CTLFile.tlv"] = make_ctl(lab.pki)
    cfg = lab.device(name, mode=1)
    if signer == "rogue":
        # Same subject as the CTL's TFTP record, other key and issuer: only the key counts.
        key_signer = FileSigner.from_issued(issue_with_new_key(create_ca(xname("Rogue CA")), xname("tftp1")))
    else:
        key_signer = lab.pki[signer]
    lab.sign(cfg.filename, cfg.to_xml(), signer=key_signer)
    signed = lab.files[f"{name}.cnf.xml.sgn"]
    from ccmsec.formats.sgn import parse_sgn, verify_sgn

    verify_sgn(parse_sgn(signed), key_signer.certificate)   # the signature itself is valid
    runner = await boot(lab, lab.phone(name))
    p = runner.phone
    assert p.state is State.FAILED and p.last_failure == "config-rejected", (p.state, p.last_failure_reason)
    assert "AUTH-5" in p.last_failure_reason and f"{name}.cnf.xml.sgn" in p.last_failure_reason
    assert name not in lab.sccp.registered and name not in lab.sccp_tls.registered
    assert not any(r.device_name == name for r in lab.registrations)


async def test_auth5_config_validly_signed_for_another_file_name_is_refused(lab):
    """AUTH-5: another phone's configuration, correctly signed by the TFTP certificate but for its
    own file name, served under this phone's name, is refused (the signed name is checked); the
    same phone then boots on its own signed file."""
    name, other = "SEP00112233000B", "SEP00112233000C"
    lab.files["CTLFile.tlv"] = make_ctl(lab.pki)
    lab.device(name, mode=1)
    lab.image()
    theirs = lab.device(other, mode=1)
    ours = lab.files[f"{name}.cnf.xml.sgn"]
    lab.files[f"{name}.cnf.xml.sgn"] = lab.files[f"{theirs.filename}.sgn"]
    runner = await boot(lab, lab.phone(name))
    p = runner.phone
    assert p.state is State.FAILED and p.last_failure == "config-rejected", (p.state, p.last_failure_reason)
    assert "AUTH-5" in p.last_failure_reason and f"'{other}.cnf.xml.sgn'" in p.last_failure_reason
    assert name not in lab.sccp.registered and other not in lab.sccp.registered
    lab.files[f"{name}.cnf.xml.sgn"] = ours                  # the good case, same phone
    await runner.request_boot()
    await until(lambda: p.state is State.REGISTERED, 20)
    assert name in lab.sccp.registered


async def test_auth5_phone_with_ctl_refuses_to_fall_back_to_unsigned_config(lab):
    name = "SEP001122330007"
    lab.files["CTLFile.tlv"] = make_ctl(lab.pki)
    lab.device(name, signed=False)  # only the plain file exists
    runner = await boot(lab, lab.phone(name))
    p = runner.phone
    assert p.state is State.FAILED and p.last_failure == "config-missing"
    assert f"{name}.cnf.xml.sgn" in p.last_failure_reason


async def test_ctl2_phone_keeps_trusted_ctl_when_offered_one_from_unknown_token(lab):
    """CTL-2 over TFTP: first CTL trusted; a later one signed by a token not in it is refused,
    visibly, the old CTL is kept; one signed by a trusted token is accepted."""
    from ccmsec.pki.ca import issue_with_new_key, name as xname, create_ca

    name = "SEP001122330008"
    lab.files["CTLFile.tlv"] = make_ctl(lab.pki)
    lab.device(name)
    lab.image()
    runner = await boot(lab, lab.phone(name))
    p = runner.phone
    first = p.trust.to_bytes()
    rogue = FileSigner.from_issued(issue_with_new_key(create_ca(xname("Rogue CA")), xname("rogue")))
    lab.pki["rogue"] = rogue
    lab.files["CTLFile.tlv"] = make_ctl(lab.pki, TS + 10, signer="rogue", tokens=("rogue",))
    await runner.request_boot()
    await until(lambda: p.boots == 2 and p.state is State.REGISTERED)
    assert p.trust.to_bytes() == first
    assert p.last_failure == "ctl-rejected" and "CTL-2" in p.last_failure_reason
    newer = make_ctl(lab.pki, TS + 20, signer="sast2")
    lab.files["CTLFile.tlv"] = newer
    await runner.request_boot()
    await until(lambda: p.boots == 3 and p.state is State.REGISTERED)
    assert p.trust.to_bytes() == newer


async def test_auth6_no_tls_without_certificate_or_ctl_or_secure_config(lab):
    """AUTH-6: a 7960 configured encrypted but without an LSC uses TCP 2000 (and is refused there
    by call control); a 7970 with a MIC but a non-secure config uses 2000 too."""
    a, b = "SEP001122330009", "SEP00112233000A"
    lab.files["CTLFile.tlv"] = make_ctl(lab.pki)
    lab.device(a, mode=3)
    lab.device(b, model="7970", mode=1)
    lab.image()
    ra = await boot(lab, lab.phone(a))
    assert ra.phone.state is State.FAILED and ra.phone.last_failure == "registration-rejected"
    assert any("AUTH-6" in h and "no certificate" in h for h in ra.phone.history)
    assert not any(r.device_name == a and r.secure for r in lab.registrations)
    rb = await boot(lab, lab.phone(b, model="7970", mic=True))
    assert rb.phone.state is State.REGISTERED and rb.phone.transport == "non-secure"
    assert b in lab.sccp.registered and b not in lab.sccp_tls.registered


async def test_auth2_phone_refuses_call_control_not_in_its_ctl(lab, pki):
    """AUTH-2: a TLS server whose certificate is not the CTL's CallManager entry is refused."""
    name = "SEP00112233000B"
    key = ca.new_key()
    impostor = ca.Issued(ca.self_signed(ca.name("ccm1"), key), key)
    await lab.sccp_tls.close()
    lab.sccp_tls = SccpServer(lambda r: s.RegistrationDecision.accept(), port=0,
                              ssl_context=tls.sccp_server_context(impostor, [pki["mfr"].cert]))
    await lab.sccp_tls.start()
    lab.files["CTLFile.tlv"] = make_ctl(lab.pki)
    lab.device(name, model="7970", mode=3)
    lab.image()
    runner = await boot(lab, lab.phone(name, model="7970", mic=True))
    assert runner.phone.state is State.FAILED and runner.phone.last_failure == "registration-failed"
    assert "certificate" in runner.phone.last_failure_reason.lower()


async def test_dev3_7912_refuses_capf_and_does_not_use_tls(lab):
    """DEV-3: a 7912 (image authentication only) refuses the CAPF operation and holds no LSC."""
    name = "SEP00112233000C"
    lab.files["CTLFile.tlv"] = make_ctl(lab.pki)
    lab.device(name, model="7912", mode=1, capf_op="install")
    lab.image()
    runner = await boot(lab, lab.phone(name, model="7912"))
    p = runner.phone
    assert p.lsc is None and p.last_failure == "capf-refused" and "DEV-3" in p.last_failure_reason
    assert p.state is State.REGISTERED and p.transport == "non-secure"
    assert not lab.capf.sessions  # it never even connected


async def test_cert1_capf_delete_removes_lsc_and_mic_survives_factory_reset(lab):
    """CERT-1: CAPF delete removes only the LSC; a factory reset clears CTL and LSC, never the MIC."""
    name = "SEP00112233000D"
    lab.files["CTLFile.tlv"] = make_ctl(lab.pki)
    lab.device(name, model="7970", mode=1, capf_op="install")
    lab.image()
    await schedule_operation(lab.db, name, "install", auth_mode="null", key_type="ec256")
    phone = lab.phone(name, model="7970", mic=True)
    mic_der = phone.mic.der
    runner = await boot(lab, phone, timeout=30)
    await until(lambda: phone.lsc is not None and phone.state is State.REGISTERED, 20)
    lab.device(name, model="7970", mode=1, capf_op="delete")
    await schedule_operation(lab.db, name, "delete", auth_mode="null")
    await runner.request_boot()
    await until(lambda: phone.lsc is None and phone.state is State.REGISTERED, 20)
    assert phone.mic.der == mic_der
    await runner.stop(power_off=True)
    phone.factory_reset()
    assert not phone.trust.has_ctl and phone.lsc is None and phone.mic.der == mic_der


async def test_reset_event_and_sccp_reset_for_the_same_change_boot_once(lab):
    """A device-reset request older than the boot that call control's SCCP Reset started is a no-op."""
    name = "SEP00112233000E"
    lab.device(name, signed=False)
    lab.image()
    runner = await boot(lab, lab.phone(name))
    p = runner.phone
    requested = time.time()
    await lab.sccp.reset_device(name)
    await until(lambda: p.boots == 2 and p.state is State.REGISTERED)
    assert await runner.request_boot(requested) is False  # the event for the same change arrives late
    await asyncio.sleep(0.2)
    assert p.boots == 2
    assert await runner.request_boot() is True
    await until(lambda: p.boots == 3 and p.state is State.REGISTERED)


async def test_rst9_reset_event_reaches_the_phones_of_the_named_node_by_host_name_or_subscriber(lab, tmp_path):
    """RST-9: `device.reset {server: NODE}` names a node. Phone-sim matched the node's peer
    address as a string against the configured "host:port": a phone registered to a subscriber
    (no peer entry) or through a host name ("localhost") was never reset by the event. Now the
    node's addresses (endpoints file, else its name resolved) meet the registration's peer."""
    import json

    from ccmsec.aio.sccp import SccpServer, require_transport_matching_mode
    from ccmsec.cluster.state import endpoints_path
    from ccmsec_phone_sim.fleet import Fleet
    from ccmsec_phone_sim.main import PhoneSimService, PhoneSimSettings
    from ccmsec_proto import events_pb2

    publisher = SccpServer(require_transport_matching_mode(lab.modes.get, then=lab.decide),
                           host="127.0.0.2", port=0)
    await publisher.start()
    try:
        sub_phone, pub_phone = "SEP00112233001A", "SEP00112233001B"
        lab.device(sub_phone, signed=False, cm_host="localhost")      # callmanager-sub1, by name
        lab.device(pub_phone, signed=False, cm_host="127.0.0.2", sccp=publisher)  # the publisher
        lab.image()
        on_sub = await boot(lab, lab.phone(sub_phone))
        on_pub = await boot(lab, lab.phone(pub_phone))
        assert on_sub.phone.state is State.REGISTERED and on_pub.phone.state is State.REGISTERED
        assert on_sub.phone.registered_with.startswith("localhost:")

        endpoints = endpoints_path(tmp_path)
        endpoints.parent.mkdir(parents=True, exist_ok=True)
        endpoints.write_text(json.dumps({"services": {
            "callmanager": {"host": "127.0.0.2", "sccp_port": publisher.port, "sccp_tls_port": lab.sccp_tls.port},
            "callmanager-sub1": {"host": "127.0.0.1", "sccp_port": lab.sccp.port,
                                 "sccp_tls_port": lab.sccp_tls.port}}}))
        svc = PhoneSimService(PhoneSimSettings(service="phone-sim", data_dir=tmp_path,
                                               peers={"callmanager": "127.0.0.2"}))
        svc.fleet = Fleet(tmp_path / "phone-sim", on_sub.net)
        svc.fleet.runners = {r.phone.name: r for r in (on_sub, on_pub)}

        async def reset(server: str) -> None:
            await svc.on_device_reset(events_pb2.Event(
                id=server, kind="device.reset", occurred_unix_ms=int(time.time() * 1000),
                device_reset=events_pb2.DeviceReset(server=server, rule="RST-9")))

        await reset("callmanager-sub1")
        await until(lambda: on_sub.phone.boots == 2 and on_sub.phone.state is State.REGISTERED)
        await reset("callmanager")
        await until(lambda: on_pub.phone.boots == 2 and on_pub.phone.state is State.REGISTERED)
        await reset("callmanager-sub9")          # no such node
        await reset("not a node; name")          # bad input from the bus: nobody, no traceback
        await asyncio.sleep(0.3)
        assert (on_sub.phone.boots, on_pub.phone.boots) == (2, 2)
    finally:
        await publisher.close()


async def test_rst9_a_reset_reaches_only_the_named_node_when_nodes_share_loopback_addresses(lab, tmp_path):
    """RST-9 precise: nodes on 127.0.0.1 (call control and a second node at another port) and on
    127.0.0.2. Matching the address alone, a reset naming `localhost` (it resolves to 127.0.0.1)
    rebooted every phone registered over 127.0.0.1, and one naming the node on 127.0.0.1 also
    rebooted the other node's phones there. Now a phone is the node's when its connection reached
    the node's address AND one of its SCCP ports, and a server the endpoints file does not list
    (`localhost`) is no node: nobody is reset."""
    import json

    from ccmsec.aio.sccp import SccpServer, require_transport_matching_mode
    from ccmsec.cluster.state import endpoints_path
    from ccmsec_phone_sim.fleet import Fleet
    from ccmsec_phone_sim.main import PhoneSimService, PhoneSimSettings
    from ccmsec_proto import events_pb2

    decide = require_transport_matching_mode(lab.modes.get, then=lab.decide)
    same_address = SccpServer(decide, host="127.0.0.1", port=0)      # another node, same address
    other_address = SccpServer(decide, host="127.0.0.2", port=0)
    await same_address.start()
    await other_address.start()
    try:
        names = {"callmanager": "SEP00112233002A", "callmanager-sub1": "SEP00112233002B",
                 "callmanager-sub2": "SEP00112233002C"}
        lab.device(names["callmanager"], signed=False, cm_host="localhost")          # lab.sccp
        lab.device(names["callmanager-sub1"], signed=False, cm_host="127.0.0.1", sccp=same_address)
        lab.device(names["callmanager-sub2"], signed=False, cm_host="127.0.0.2", sccp=other_address)
        lab.image()
        runners = {node: await boot(lab, lab.phone(name)) for node, name in names.items()}
        assert all(r.phone.state is State.REGISTERED for r in runners.values())
        assert runners["callmanager"].phone.registered_address == runners["callmanager-sub1"].phone.registered_address

        endpoints = endpoints_path(tmp_path)
        endpoints.parent.mkdir(parents=True, exist_ok=True)
        endpoints.write_text(json.dumps({"services": {
            "callmanager": {"host": "127.0.0.1", "sccp_port": lab.sccp.port, "sccp_tls_port": lab.sccp_tls.port},
            "callmanager-sub1": {"host": "127.0.0.1", "sccp_port": same_address.port, "sccp_tls_port": 1},
            "callmanager-sub2": {"host": "127.0.0.2", "sccp_port": other_address.port, "sccp_tls_port": 1}}}))
        svc = PhoneSimService(PhoneSimSettings(service="phone-sim", data_dir=tmp_path))
        svc.fleet = Fleet(tmp_path / "phone-sim", runners["callmanager"].net)
        svc.fleet.runners = {r.phone.name: r for r in runners.values()}

        def boots():
            return {node: r.phone.boots for node, r in runners.items()}

        async def reset(server: str) -> None:
            await svc.on_device_reset(events_pb2.Event(
                id=server, kind="device.reset", occurred_unix_ms=int(time.time() * 1000),
                device_reset=events_pb2.DeviceReset(server=server, rule="RST-9")))
            await asyncio.wait(svc._tasks, timeout=10)   # the node's phones are found aside

        await reset("localhost")          # not a node of this cluster
        await asyncio.sleep(0.3)
        assert boots() == {"callmanager": 1, "callmanager-sub1": 1, "callmanager-sub2": 1}
        await reset("callmanager-sub1")   # on 127.0.0.1 like callmanager, at its own port
        await until(lambda: runners["callmanager-sub1"].phone.boots == 2
                    and runners["callmanager-sub1"].phone.state is State.REGISTERED)
        await asyncio.sleep(0.3)
        assert boots() == {"callmanager": 1, "callmanager-sub1": 2, "callmanager-sub2": 1}
        await reset("callmanager")        # its phone only, though configured by the name localhost
        await until(lambda: runners["callmanager"].phone.boots == 2
                    and runners["callmanager"].phone.state is State.REGISTERED)
        await asyncio.sleep(0.3)
        assert boots() == {"callmanager": 2, "callmanager-sub1": 2, "callmanager-sub2": 1}
    finally:
        await same_address.close()
        await other_address.close()


async def test_a_reset_cancelled_while_it_closes_the_connection_leaves_no_connection_behind(lab):
    """A gRPC reset whose caller gives up (its deadline) is cancelled in request_boot; cancelled
    while the phone's failover connection was being stopped, the stop ended there: the SCCP
    connection stayed registered with call control, its keepalives running, owned by nobody (the
    runner had already let go of it), and the next boot registered a second one beside it."""
    name = "SEP00112233001D"
    lab.device(name, signed=False)
    lab.image()
    runner = await boot(lab, lab.phone(name))
    assert runner.phone.state is State.REGISTERED
    failover, conn = runner.failover, runner.failover.conn
    request = asyncio.create_task(runner.request_boot())
    while runner.failover is not None:     # until request_boot is stopping the connection
        await asyncio.sleep(0)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    await until(lambda: conn.closed, 12)   # stopped all the same (bounded)
    assert failover.conn is None
    await runner.request_boot()            # and the phone boots again on one connection
    await until(lambda: runner.phone.state is State.REGISTERED and runner.failover is not None)
    assert runner.failover.conn is not conn and not runner.failover.conn.closed


async def test_a_socket_the_os_refuses_never_leaves_a_phone_stuck_mid_boot(lab):
    """The OS refusing the web server's socket (EMFILE with thousands of phones) raised out of the
    boot: the phone's task died with a traceback and the phone stayed in downloading-config for
    ever. The web server is not needed to register (a soft failure says why); anything else
    unexpected fails the boot visibly ('internal-error'), never a dead task."""
    import errno

    name = "SEP00112233001C"
    lab.device(name, signed=False)
    lab.image()
    runner = lab.runner(lab.phone(name))
    lab.runners.append(runner)

    async def refused():
        raise OSError(errno.EMFILE, "Too many open files")

    runner.web.start = refused
    await runner.request_boot()
    await until(lambda: runner.phone.state is State.REGISTERED)
    assert runner.phone.web_address == ""
    assert any("web-server-failed" in h and "Too many open files" in h for h in runner.phone.history)

    async def broken():
        raise RuntimeError("unexpected")

    runner._register = broken
    await runner.request_boot()
    await until(lambda: runner.phone.state is State.FAILED)
    assert runner.phone.last_failure == "internal-error" and "unexpected" in runner.phone.last_failure_reason
    assert not runner.booting


async def test_tftp_unreachable_is_a_visible_failure(lab):
    name = "SEP00112233000F"
    phone = lab.phone(name)
    runner = lab.runner(phone)
    runner.net.tftp_port = 9  # discard: nothing answers
    lab.runners.append(runner)
    await runner.request_boot()
    await runner.wait(10)
    assert phone.state is State.FAILED and phone.last_failure == "tftp-unreachable"


async def test_tftp_unreachable_at_boot_is_retried_with_back_off_until_it_comes_back_LATER_7(lab):
    """Issue 12, Groups 3: a phone whose TFTP server does not answer while it boots shows the
    failure, then boots again after a growing back-off (never failed for good), and registers once
    a TFTP server answers on that address — no boot by hand."""
    import socket

    name = "SEP001122330020"
    lab.device(name, signed=False)
    lab.image()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:   # a port nothing answers on yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    runner = lab.runner(lab.phone(name))
    runner.net.tftp_port = port
    runner.net.boot_retry_base, runner.net.boot_retry_max = 0.2, 1.0
    lab.runners.append(runner)
    await runner.request_boot()
    p = runner.phone
    retries = lambda: [h for h in p.history if "tftp-unreachable: booting again in" in h]
    await until(lambda: len(retries()) >= 3, 20)
    assert p.state is not State.REGISTERED and p.last_failure == "tftp-unreachable"
    delays = [float(h.split(" in ")[1].split(" s")[0]) for h in retries()[:3]]
    assert delays[0] <= 0.2 < 0.4 <= delays[2], delays   # doubling back-off, jitter at most half
    came_back = TftpServer("127.0.0.1", port, lab.resolve)
    await came_back.start()
    try:
        await until(lambda: p.state is State.REGISTERED and p.registered_with != "", 20)
        assert p.last_failure == "" and p.boots >= 4, (p.boots, p.last_failure, list(p.history)[-6:])   # one per attempt
        assert p.firmware == LOAD and f"{name}.cnf.xml" in p.files   # the whole boot, from the TFTP now answering
    finally:
        await came_back.close()


async def test_a_registered_phone_shows_no_stale_failure_and_a_refusal_names_it_in_full(lab):
    """A failure belongs to the boot it happened in: once the phone registers on a later boot,
    `last_failure` is empty (the history keeps the refusal). The refusal names the whole device."""
    name = "SEP001122330010"
    lab.device(name, signed=False)
    lab.image()
    del lab.modes[name]  # call control does not know the device yet
    runner = await boot(lab, lab.phone(name))
    p = runner.phone
    assert p.state is State.FAILED and p.last_failure == "registration-rejected"
    assert f"refused {name}" in p.last_failure_reason
    lab.modes[name] = "non-secure"  # the administrator adds it
    await runner.request_boot()
    await until(lambda: p.boots == 2 and p.state is State.REGISTERED)
    assert p.last_failure == "" and p.last_failure_reason == ""
    assert any("registration-rejected" in line for line in p.history)


async def test_chk11_hardened_phone_refuses_each_disabled_feature_and_shows_it(lab):
    """CHK-11 / DEV-4 on the phone: with everything off the web server refuses connections, the
    Settings menu does not open, the PC port gives no link and gratuitous ARP is ignored; switching
    single features back on (settings, PC port with span, voice VLAN still off) is honoured too."""
    from ccmsec_phone_sim.phone import SettingsLocked

    name = "SEP001122330011"
    lab.device(name, model="7970", signed=False, hardening=Hardening.all_off())
    lab.image()
    runner = await boot(lab, lab.phone(name, model="7970", mic=True))
    p = runner.phone
    assert p.state is State.REGISTERED and p.web_address == ""
    with pytest.raises(SettingsLocked, match="Settings menu is locked .*DEV-4"):
        p.settings_menu()
    assert p.pc_port_status().startswith("disabled: a PC plugged into the phone gets no link")
    assert p.garp_status().startswith("ignored")
    lab.device(name, model="7970", signed=False, hardening=Hardening(
        web_access=False, pc_port=True, settings_access=True, garp=False, voice_vlan_access=False,
        span_to_pc_port=True))
    await runner.request_boot()
    await until(lambda: p.boots == 2 and p.state is State.REGISTERED)
    menu = dict(p.settings_menu())
    assert menu["Device name"] == name and menu["Web access"] == "disabled"
    assert menu["PC port"] == ("enabled: the PC is kept off the voice VLAN, and the phone's "
                               "traffic is mirrored to it")
    assert p.settings_in_force()["spanToPCPort"] == "on" and p.web_address == ""


async def test_tftp_server_error_while_booting_is_retried_not_final_LATER_7(lab):
    """LATER-7: a TFTP server that answers "internal error" for the configuration (its database
    away for a moment) is a failure of the moment: the phone shows it and boots again after a
    back-off, then registers — it does not stay failed."""
    name = "SEP00112233000D"
    lab.device(name, signed=False)
    lab.image()
    real = lab.resolve
    broken = {"left": 2}

    async def resolve(filename, client):
        if filename.startswith(name) and broken["left"] > 0:
            broken["left"] -= 1
            raise RuntimeError("database unavailable")   # the server answers TFTP error 0
        return await real(filename, client)
    lab.tftp.resolve = resolve
    runner = lab.runner(lab.phone(name, anchors=False))
    runner.net.boot_retry_base, runner.net.boot_retry_max = 0.2, 0.5
    lab.runners.append(runner)
    await runner.request_boot()
    p = runner.phone
    await until(lambda: p.state is State.REGISTERED, 20)
    assert broken["left"] == 0 and p.boots >= 2
    assert any("tftp-server-error" in h for h in p.history), p.history


async def test_capf_reason_7_is_visited_again_with_back_off_until_the_lsc_is_installed_LATER_7(lab):
    """LATER-7 (booting retries CAPF too): CAPF ends the session with reason 7 because it cannot
    reach its database. The phone registers without the LSC, as before, but visits CAPF again while
    registered, after a back-off with jitter; once CAPF's database is back it gets its LSC, resets
    by itself and registers again holding it — no boot by hand."""
    name = "SEP00112233000E"
    lab.files["CTLFile.tlv"] = make_ctl(lab.pki)
    lab.device(name, mode=1, capf_op="install")   # registers on 2000 without an LSC, as SRST would
    lab.image()
    await schedule_operation(lab.db, name, "install", auth_mode="null", key_type="ec256")
    store = lab.capf.store
    real = store.find_operation
    away = {"left": 3}

    async def find_operation(device_name):
        if away["left"] > 0:
            away["left"] -= 1
            raise OSError("connection refused: database unavailable")   # CAPF answers reason 7
        return await real(device_name)
    store.find_operation = find_operation
    runner = lab.runner(lab.phone(name))
    runner.net.boot_retry_base, runner.net.boot_retry_max = 0.2, 0.6
    lab.runners.append(runner)
    await runner.request_boot()
    p = runner.phone
    await until(lambda: p.state is State.REGISTERED and p.boots == 1, 20)
    assert p.lsc is None and p.last_failure == "capf-failed" and "reason 7" in p.last_failure_reason
    # registered_with is cleared as boot 2 starts (before its first wait) and set again only by its
    # registration: the state alone still reads REGISTERED from boot 1 for a moment.
    await until(lambda: p.boots == 2 and p.state is State.REGISTERED and p.lsc is not None
                and p.registered_with != "", 30)
    assert away["left"] == 0 and p.lsc.cert.issuer == lab.pki["capf"].cert.subject
    visits = [h for h in p.history if "visiting CAPF again" in h]
    assert len(visits) == 3, p.history            # one per reason 7 after the boot's own visit
    delays = [float(h.split(" in ")[1].split(" s")[0]) for h in visits]
    assert all(0.1 <= d <= 0.6 for d in delays) and delays[-1] > 0.2 * 0.5, delays   # back-off, jitter
    assert "CAPF changed the LSC; resetting once no call is up" in "\n".join(p.history)
    assert p.last_failure == ""   # the new boot starts clean: nothing left failed


async def test_capf_unknown_device_is_not_visited_again_LATER_7(lab):
    """The bad case: a CAPF answer that waiting will not change (reason 9: no operation known for
    this phone) is not retried — the phone registers and stays, no CAPF loop."""
    name = "SEP00112233000F"
    lab.files["CTLFile.tlv"] = make_ctl(lab.pki)
    lab.device(name, mode=1, capf_op="install")   # announced in the file, but nothing scheduled
    lab.image()
    runner = lab.runner(lab.phone(name))
    runner.net.boot_retry_base, runner.net.boot_retry_max = 0.1, 0.2
    lab.runners.append(runner)
    await runner.request_boot()
    p = runner.phone
    await until(lambda: p.state is State.REGISTERED, 20)
    sessions = len(lab.capf.sessions)
    await asyncio.sleep(1.0)   # several back-offs would have passed
    assert len(lab.capf.sessions) == sessions == 1 and p.boots == 1
    assert any("end reason 9" in h for h in p.history), p.history
    assert not any("visiting CAPF again" in h for h in p.history), p.history

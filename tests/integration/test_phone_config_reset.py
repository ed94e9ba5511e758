"""AUTH-4 from the phone's side: a changed configuration reaches a registered phone only when the
device is reset.

Real parts in process on loopback: the tftp-signer's content object (`TftpContent`: configs built
from what the owners answer — call control, CAPF and the CTL Provider's real servicers on mutual TLS,
tests/tftpowners.py —, signed copies in memory or on disk) behind a real `TftpServer`;
the callmanager `CallControl` (SCCP/TLS 2443 with its own ccmserver.cer, registration from the
database); a phone-sim `PhoneRunner` (a 7970 with a MIC, authenticated mode, CTL from two tokens).

Determinism: the administrator's change is a committed database update (what the admin API
commits before it publishes RST-2), and the reset is delivered only when the test says so — so the
window between "the file changed" and "the phone was reset" is held open and observed, instead of
racing the admin API's own reset. The phone's boot counter and the sha256 of the configuration file
it accepted tell which configuration it runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import time

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import async_sessionmaker

import ccmsec.db.capf  # noqa: F401  (tables the config builder reads)
import ccmsec.db.lines  # noqa: F401
import ccmsec.db.registry  # noqa: F401
from ccmsec.aio.tftp import TftpServer, tftp_get
from ccmsec.db.devices import SETTING_CTL_VERSION, SETTING_SECURITY_MODE, Device, set_setting
from ccmsec_callmanager.cluster_state import ClusterState, ClusterStateFollower
from ccmsec.formats.cnfxml import parse_cnf_xml
from ccmsec.formats.ctl import Role, build_ctl, record_from_certificate
from ccmsec.formats.sgn import parse_sgn, verify_sgn
from ccmsec.pki import ca
from ccmsec.pki.lsc import ensure_capf_ca
from ccmsec.pki.servercert import ensure_server_certificate
from ccmsec.pki.tokens import FileSigner, ensure_manufacturer_ca, issue_mic
from ccmsec.policy.resets import HardeningChanged, ResetDevices, required_actions
from ccmsec.wire.sccp import ResetType
from ccmsec_callmanager.callcontrol import CallControl, CallControlConfig, load_pki
from ccmsec_phone_sim.boot import Network, PhoneRunner
from ccmsec_phone_sim.phone import Phone, State
from ccmsec.runtime.database import create_engine, migrate
from ccmsec.runtime.identity import service_identity
from ccmsec_tftp_signer.content import ClusterEndpoints
from ccmsec_tftp_signer.devicefiles import ChangeDetector
from ccmsec_tftp_signer.files import TftpContent
from ccmsec_tftp_signer.layout import ClusterPath, Layout
from ccmsec_tftp_signer.signing import SignedStore, SigningPool
from tests.tftpowners import tftp_owners

pytestmark = pytest.mark.timeout(60)

NODE = "callmanager"
TFTP_PATH = "cluster1"
NAME = "SEP0000AA4A0001"
CONFIG = f"{NAME}.cnf.xml.sgn"


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    data = tmp_path_factory.mktemp("auth4-template")
    ensure_capf_ca(data / "pki", key_kind="ec256")
    ensure_manufacturer_ca(data / "pki")
    load_pki(data, NODE, "127.0.0.1")
    tftp = ensure_server_certificate(data / "servers" / "tftp-signer", "tftp-signer", ip="127.0.0.1")
    root = ca.create_ca(ca.name("Token CA"))
    tokens = [FileSigner.from_issued(ca.issue_with_new_key(root, ca.name(cn))) for cn in ("sast1", "sast2")]
    mic = issue_mic(ensure_manufacturer_ca(data / "pki"), NAME, "ec256")
    return data, tftp, tokens, mic


class Lab:
    def __init__(self, data, tftp_cert, tokens, db, caching, owners):
        self.data, self.tftp_cert, self.tokens, self.db, self.caching = data, tftp_cert, tokens, db, caching
        self.owners = owners  # what the TFTP side asks (issue 9 §5): tests/tftpowners.py

    async def start(self) -> "Lab":
        async with self.db() as session, session.begin():
            # the mode as its owner stores it (the TFTP side asks it: CtlProvider/GetSecurityMode)
            await set_setting(session, SETTING_CTL_VERSION, "1")
            await set_setting(session, SETTING_SECURITY_MODE, "mixed")
            session.add(Device(name=NAME, model="7970", security_mode="authenticated"))
        # a mixed cluster with a CTL, as its owner (the CTL Provider) would tell call control
        self.cc = CallControl(CallControlConfig(NODE, "127.0.0.1", 0, 0, self.data, keepalive_interval=5), self.db,
                              cluster_state=ClusterStateFollower.fixed(ClusterState("mixed", True, 1)))
        await self.cc.start()
        signer = FileSigner.from_issued(self.tftp_cert)
        root = self.data / "tftp"
        endpoints = ClusterEndpoints(callmanagers=("127.0.0.1",), sccp_port=self.cc.plain.port,
                                     sccp_tls_port=self.cc.tls.port, capf_host="127.0.0.1")
        self.pool = SigningPool(signer, workers=1)
        self.content = TftpContent(root, Layout(ClusterPath("local", TFTP_PATH, "", "mixed")),
                                   self.owners.reads(service_identity(self.data, "tftp-signer", "tftp-signer",
                                                                      "127.0.0.1")),
                                   endpoints, SignedStore(self.pool, root, caching=self.caching), signer,
                                   ChangeDetector(self.db.kw["bind"]))
        capf = ensure_capf_ca(self.data / "pki")
        records = [record_from_certificate(t.certificate, Role.TOKEN) for t in self.tokens]
        records += [record_from_certificate(self.cc.server_certificate, Role.CCM, NODE, "127.0.0.1"),
                    record_from_certificate(self.tftp_cert.cert, Role.TFTP, "tftp-signer", "127.0.0.1"),
                    record_from_certificate(capf.cert, Role.CAPF, "capf", "127.0.0.1")]
        (root / TFTP_PATH).mkdir(parents=True, exist_ok=True)
        (root / TFTP_PATH / "CTLFile.tlv").write_bytes(build_ctl(records, self.tokens[0], 1_700_000_000))
        self.tftp = TftpServer("127.0.0.1", 0, self.content.resolve)
        await self.tftp.start()
        return self

    async def close(self) -> None:
        await self.runner.stop(power_off=True)
        await self.tftp.close()
        await self.cc.close()
        self.pool.close()

    def phone_runner(self, mic) -> PhoneRunner:
        net = Network("127.0.0.1", self.tftp.address[1], tftp_timeout=0.3, tftp_retries=2, sccp_timeout=5,
                      reregister_attempts=1, reregister_backoff=0.1)
        self.runner = PhoneRunner(Phone(name=NAME, model="7970", mic=mic, image_anchors=[self.tftp_cert.cert]), net)
        return self.runner

    async def download_config(self) -> bytes:
        return await tftp_get("127.0.0.1", self.tftp.address[1], CONFIG, timeout=0.5, retries=2)


@pytest.fixture(params=[True, False], ids=["caching-on", "caching-off"])
async def lab(request, template, tmp_path):
    data_src, tftp_cert, tokens, mic = template
    data = tmp_path / "data"
    shutil.copytree(data_src, data)
    url = f"sqlite+aiosqlite:///{tmp_path / 'ccmsec.db'}"
    engine = create_engine(url)
    await migrate(engine)  # the whole schema, as the owners' migrations make it
    async with tftp_owners(data, url) as owners:
        lab = await Lab(data, tftp_cert, tokens, async_sessionmaker(engine, expire_on_commit=False),
                        request.param, owners).start()
        lab.mic = mic
        yield lab
        await lab.close()
        await owners.close_reads()
    await engine.dispose()


async def until(predicate, timeout=15.0, what="condition"):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"{what} not met in time"
        await asyncio.sleep(0.02)


async def http_status(address: str) -> bytes:
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    data = await reader.read()
    writer.close()
    return data.split(b"\r\n", 1)[0]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_auth4_dev4_rst2_phone_keeps_old_config_until_reset_then_runs_the_new_one(lab):
    """AUTH-4: after a hardening change (DEV-4) the TFTP server serves the re-signed file at once,
    yet the registered phone keeps running the configuration it booted with; the reset the change
    requires (RST-2, delivered as SCCP Reset by call control) makes it boot once and run the new one."""
    runner = lab.phone_runner(lab.mic)
    p = runner.phone
    await runner.request_boot()
    await until(lambda: p.state is State.REGISTERED, what="first registration")
    assert p.transport == "authenticated" and p.certificate_in_use == "MIC"  # AUTH-5 path: CTL + .sgn
    boots, held = p.boots, p.files[CONFIG]
    old_file = await lab.download_config()
    assert sha256(old_file) == held
    assert p.settings_in_force()["webAccess"] == "on" and p.settings_in_force()["pcPort"] == "on"
    web = p.web_address
    assert await http_status(web) == b"HTTP/1.0 200 OK"
    connection = lab.cc.registry.entries[NAME].connection

    # The administrator hardens the phone: the change is committed.
    async with lab.db() as session, session.begin():
        await session.execute(update(Device).where(Device.name == NAME).values(web_access=False, pc_port=False))

    # AUTH-4, server side: the very next download is the new file, signed and verifiable.
    new_file = await lab.download_config()
    assert new_file != old_file
    signed = parse_sgn(new_file)
    verify_sgn(signed, lab.tftp_cert.cert)
    hardening = parse_cnf_xml(signed.payload).hardening
    assert (hardening.web_access, hardening.pc_port) == (False, False)

    # AUTH-4, phone side: no reset yet, so the phone runs what it booted with — same boot, same
    # file, web server still answering, same registration.
    await asyncio.sleep(0.3)
    assert (p.boots, p.files[CONFIG], p.state) == (boots, held, State.REGISTERED)
    assert p.settings_in_force()["webAccess"] == "on" and p.hardening.web_access
    assert await http_status(web) == b"HTTP/1.0 200 OK"
    assert lab.cc.registry.entries[NAME].connection is connection

    # RST-2: the change requires a reset of exactly this device; call control delivers it.
    (action,) = required_actions(HardeningChanged(NAME))
    assert isinstance(action, ResetDevices) and action.rule_id == "RST-2" and tuple(action.devices) == (NAME,)
    lab.cc.registry.track_reset(set(action.devices), "r-auth4")
    assert await lab.cc.reset(list(action.devices), ResetType.RESET, "r-auth4") == 1
    await until(lambda: p.boots == boots + 1 and p.state is State.REGISTERED, what="re-registration after reset")

    # After the reset: exactly one boot, the new file held, the hardened settings in force.
    assert p.files[CONFIG] == sha256(new_file)
    assert p.settings_in_force()["webAccess"] == "off" and p.settings_in_force()["pcPort"] == "off"
    assert p.web_address == ""
    with pytest.raises(ConnectionRefusedError):
        await http_status(web)
    assert NAME in lab.cc.registry.entries and lab.cc.registry.entries[NAME].connection is not connection
    assert lab.cc.registry.resets["r-auth4"].not_back == []

    # phone-sim's own device.reset handling (ResetPhones / the RST-2 event) for the same change
    # does not boot the phone a second time: that boot already happened after the event time.
    assert not await runner.request_boot(requested_at=runner.boot_started_wall - 0.01)
    assert p.boots == boots + 1


async def test_chk9_security_set_on_the_device_is_what_the_phone_and_call_control_then_use(lab):
    """CHK-9 as behaviour: the administrator sets an authenticated device encrypted, then back (the
    committed change the API makes); the re-signed configuration carries the mode, the reset the
    change requires (RST-1) boots the phone once, and the phone then registers in that mode — TLS
    with AES, then with a NULL cipher — presenting its certificate. Call control holds the device to
    the mode set: a connection in the previous mode is refused (ENC-1 / DEV-1)."""
    from ccmsec.aio.sccp import SccpRegistrationRejected, connect_phone
    from ccmsec.pki.tls import sccp_phone_context
    from ccmsec.policy.resets import DeviceSecurityModeChanged
    from ccmsec.wire import sccp as s

    runner = lab.phone_runner(lab.mic)
    p = runner.phone
    await runner.request_boot()
    await until(lambda: p.state is State.REGISTERED, what="first registration")
    assert p.transport == "authenticated" and lab.cc.registry.entries[NAME].cipher.startswith("NULL")

    async def refused_as(mode: str) -> str:
        ctx = sccp_phone_context(mode, [lab.cc.server_certificate], mic=lab.mic)
        phone = await connect_phone("127.0.0.1", lab.cc.tls.port, s.Register(NAME, "127.0.0.1"), ssl_context=ctx,
                                    pinned_ccm_certificates=[lab.cc.server_certificate])
        try:
            with pytest.raises(SccpRegistrationRejected) as err:
                await phone.wait_registered(5)
            return err.value.text
        finally:
            await phone.close()

    for mode, cipher, old, rule in (("encrypted", "AES", "authenticated", "ENC-1"),
                                    ("authenticated", "NULL", "encrypted", "DEV-1")):
        boots = p.boots
        async with lab.db() as session, session.begin():
            await session.execute(update(Device).where(Device.name == NAME).values(security_mode=mode))
        lab.cc.forget_devices()
        signed = parse_sgn(await lab.download_config())
        verify_sgn(signed, lab.tftp_cert.cert)
        assert parse_cnf_xml(signed.payload).security_mode.value == mode
        (action,) = required_actions(DeviceSecurityModeChanged(NAME))
        assert isinstance(action, ResetDevices) and action.rule_id == "RST-1"
        lab.cc.registry.track_reset(set(action.devices), f"r-chk9-{mode}")
        assert await lab.cc.reset(list(action.devices), ResetType.RESET, f"r-chk9-{mode}") == 1
        await until(lambda: p.boots == boots + 1 and p.state is State.REGISTERED, what=f"registration {mode}")
        assert p.transport == mode and p.certificate_in_use == "MIC"
        entry = lab.cc.registry.entries[NAME]
        assert cipher in entry.cipher and entry.security_mode == mode
        assert (await refused_as(old)).startswith(rule)   # the previous mode is no longer accepted

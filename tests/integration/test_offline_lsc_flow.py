"""Offline-CA mode from the phone's side, with real parts in process on loopback:

* call control: the callmanager `CallControl` object (SCCP 2000 and mutual-TLS 2443, its own
  `ccmserver.cer`, registration decisions from a migrated SQLite database);
* CAPF: `CapfServer` over TLS with `SqlCapfStore` on the same database, issuer `offline`;
* TFTP: `TftpServer` serving a CTL signed by a token and the phone's signed configuration;
* the third-party CA: files operated only through the `openssl` binary;
* the phone: a phone-sim `PhoneRunner`.

Flow: boot → CSR sent, told to retry (state capf, "waiting for the CA to sign the CSR") → the
administrator sets the CA, exports the CSR, openssl signs, the import is checked and recorded →
the phone boots again → stores the third-party LSC → registers over TLS with it. And call control
refuses a third-party LSC until CAPF answers that CA (after `set-ca`), then accepts it — same
process, same listener, no restart. Call control asks CAPF (`ThirdPartyCaFollower`); here the
question is answered from CAPF's own folder as the capf service's `GetThirdPartyCa` does (the RPC
itself, its policy and the event are proved on the running cluster: tests/e2e/test_internal_plane.py).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

import ccmsec.db.capf  # noqa: F401  (tables on Base)
import ccmsec.db.registry  # noqa: F401
from ccmsec.aio.capf import CapfServer, capf_server_ssl_context
from ccmsec.aio.sccp import SccpConnectError, SccpRegistrationRejected, connect_phone
from ccmsec.aio.tftp import TftpServer
from ccmsec.db.base import Base
from ccmsec.db.capf import SqlCapfStore, schedule_operation
from ccmsec.db.devices import SETTING_CTL_VERSION, SETTING_SECURITY_MODE, Device, set_setting
from ccmsec_callmanager.cluster_state import ClusterState, ClusterStateFollower
from ccmsec.domain import DeviceSecurityMode
from ccmsec.formats.cnfxml import CallManagerMember, CapfSettings, DeviceConfig
from ccmsec.formats.ctl import Role, build_ctl, record_from_certificate
from ccmsec.formats.sgn import sign_file
from ccmsec.pki import ca, tls
from ccmsec.pki.lsc import (
    LscIssuer, build_lsc_csr, capf_state_dir, ensure_capf_ca, load_third_party_ca, save_third_party_ca,
    third_party_ca_path,
)
from ccmsec.pki.tokens import FileSigner, ensure_manufacturer_ca
from ccmsec.wire import sccp as s
from ccmsec_callmanager.callcontrol import CallControl, CallControlConfig, load_pki
from ccmsec_callmanager.phone_trust import ThirdPartyCaFollower
from ccmsec_capf.offline import csr_pem, import_certificate
from ccmsec_phone_sim.boot import Network, PhoneRunner
from ccmsec_phone_sim.phone import Phone, State

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl binary not installed")]

TS = 1_700_000_000
NODE = "callmanager"
# What a third-party CA puts in a phone certificate (client and server authentication).
EXT = """basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth,serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
"""


class OutsideCa:
    """A third-party CA that exists only as files, operated through the openssl binary."""

    def __init__(self, folder: Path, cn: str):
        folder.mkdir(parents=True, exist_ok=True)
        issued = ca.create_ca(ca.name(cn, org_unit="PKI", org="Example Corp"), key=ca.new_key("ec256"),
                              path_length=None)
        self.cert = issued.cert
        self.cert_path, self.key_path = folder / "ca.crt", folder / "ca.key"
        self.cert_path.write_bytes(issued.pem)
        self.key_path.write_bytes(issued.key_pem)
        (folder / "ext.cnf").write_text(EXT)
        self.folder = folder
        self.serial = 0x1000

    def sign(self, csr_pem_path: Path, out: Path) -> Path:
        self.serial += 1
        subprocess.run(["openssl", "x509", "-req", "-in", str(csr_pem_path), "-CA", str(self.cert_path),
                        "-CAkey", str(self.key_path), "-set_serial", hex(self.serial), "-days", "365",
                        "-sha256", "-extfile", str(self.folder / "ext.cnf"), "-out", str(out)],
                       check=True, capture_output=True, timeout=20)
        return out

    def verify_client(self, cert: x509.Certificate, tmp: Path) -> subprocess.CompletedProcess:
        path = tmp / "leaf.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return subprocess.run(["openssl", "verify", "-purpose", "sslclient", "-CAfile", str(self.cert_path),
                               str(path)], capture_output=True, text=True, timeout=20)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """The cluster's keys, made once: CAPF CA, manufacturer CA, callmanager's ccmserver.cer,
    two security tokens and the TFTP signer. Copied into each test's data directory."""
    data = tmp_path_factory.mktemp("offline-template")
    ensure_capf_ca(data / "pki", key_kind="ec256")
    ensure_manufacturer_ca(data / "pki")
    load_pki(data, NODE, "127.0.0.1")
    root = ca.create_ca(ca.name("Token CA"))
    signers = {cn: FileSigner.from_issued(ca.issue_with_new_key(root, ca.name(cn))) for cn in ("sast1", "sast2", "tftp1")}
    return data, signers


class Cluster:
    """Call control, CAPF and TFTP of one test, on one database and one data directory."""

    def __init__(self, data: Path, signers, db):
        self.data, self.signers, self.db = data, signers, db
        self.pki = data / "pki"
        self.capf_dir = capf_state_dir(data)  # CAPF's own folder: where set-ca stores the CA
        self.files: dict[str, bytes] = {}
        self.runners: list[PhoneRunner] = []

    async def start(self, retry_delay: int = 600) -> "Cluster":
        async with self.db() as session, session.begin():
            # the mode as the TFTP side of this lab reads it (tftp-signer still reads the table)
            await set_setting(session, SETTING_CTL_VERSION, "1")
            await set_setting(session, SETTING_SECURITY_MODE, "mixed")
        # a mixed cluster with a CTL, as its owner (the CTL Provider) would tell call control
        self.cc = CallControl(CallControlConfig(NODE, "127.0.0.1", 0, 0, self.data, keepalive_interval=5), self.db,
                              cluster_state=ClusterStateFollower.fixed(ClusterState("mixed", True, 1)),
                              third_party_ca=ThirdPartyCaFollower(self.capf_answer))
        await self.cc.start()
        await self.cc.third_party_ca.refresh()  # the start-up question (the service asks in the background)
        capf_ca = ensure_capf_ca(self.pki)
        self.store = SqlCapfStore(self.db)
        self.capf = CapfServer("127.0.0.1", 0, capf_server_ssl_context(self.pki / "capf.crt", self.pki / "capf.key"),
                               self.store, LscIssuer(capf_ca, [ensure_manufacturer_ca(self.pki).cert]),
                               issuer_mode=lambda: "offline", retry_delay=retry_delay,
                               idle_timeout=5, session_timeout=10)
        await self.capf.start()
        self.tftp = TftpServer("127.0.0.1", 0, self.resolve)
        await self.tftp.start()
        records = [record_from_certificate(self.signers[t].certificate, Role.TOKEN) for t in ("sast1", "sast2")]
        records += [record_from_certificate(self.cc.server_certificate, Role.CCM, NODE, "127.0.0.1"),
                    record_from_certificate(self.signers["tftp1"].certificate, Role.TFTP, "tftp1", "127.0.0.1"),
                    record_from_certificate(capf_ca.cert, Role.CAPF, "capf", "127.0.0.1")]
        self.files["CTLFile.tlv"] = build_ctl(records, self.signers["sast1"], TS)
        return self

    async def close(self) -> None:
        for r in self.runners:
            await r.stop(power_off=True)
        await self.tftp.close()
        await self.capf.close()
        await self.cc.close()

    async def resolve(self, filename, client):
        return self.files.get(filename)

    async def add_device(self, name: str, *, model: str = "7960", capf_op: str | None = "install") -> None:
        """A device row for call control, its signed configuration on TFTP, its CAPF operation."""
        async with self.db() as session, session.begin():
            session.add(Device(name=name, model=model, security_mode="authenticated"))
        cfg = DeviceConfig(
            device_name=name, model=model, security_mode=DeviceSecurityMode.AUTHENTICATED,
            call_managers=(CallManagerMember("127.0.0.1", self.cc.plain.port, self.cc.tls.port),),
            capf=CapfSettings("127.0.0.1", self.capf.port, capf_op, None, "EC", None, "P-256") if capf_op else None)
        self.files[cfg.filename + ".sgn"] = sign_file(cfg.to_xml(), cfg.filename + ".sgn", self.signers["tftp1"], TS)
        if capf_op:
            await schedule_operation(self.db, name, capf_op, auth_mode="null", key_type="ec256")

    def runner(self, phone: Phone, *, max_wait: float = 60.0, attempts: int = 5) -> PhoneRunner:
        net = Network("127.0.0.1", self.tftp.address[1], tftp_timeout=0.3, tftp_retries=2, sccp_timeout=5,
                      reregister_attempts=1, reregister_backoff=0.1, capf_timeout=10,
                      capf_max_wait=max_wait, capf_retry_attempts=attempts)
        # As phone-sim's service does: the third-party CA file, read at each CAPF visit.
        runner = PhoneRunner(phone, net, lsc_issuers=lambda: [c for c in [load_third_party_ca(self.capf_dir)] if c])
        self.runners.append(runner)
        return runner

    # --- what the administrator does (ccmsec capf set-ca / export-csrs / import-certs) ---------
    async def capf_answer(self) -> x509.Certificate | None:
        """What `Capf/GetThirdPartyCa` answers call control: the CA in CAPF's own folder."""
        return load_third_party_ca(self.capf_dir)

    async def set_ca(self, outside: OutsideCa) -> None:
        """`ccmsec capf set-ca`: CAPF stores it, publishes `lsc-ca.changed`, call control asks."""
        save_third_party_ca(self.capf_dir, outside.cert)
        await self.cc.third_party_ca.on_event(None)

    async def export_csrs(self, folder: Path) -> list[Path]:
        folder.mkdir(exist_ok=True)
        paths = []
        for record in await self.store.awaiting_csrs():
            path = folder / f"{record.device_name}.csr"
            path.write_bytes(csr_pem(record))
            paths.append(path)
        return paths

    async def import_cert(self, path: Path):
        return await import_certificate(self.store, load_third_party_ca(self.capf_dir), path.name, path.read_bytes())


@pytest.fixture
async def cluster(template, tmp_path):
    data_src, signers = template
    data = tmp_path / "data"
    shutil.copytree(data_src, data)
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'ccmsec.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    c = Cluster(data, signers, async_sessionmaker(engine, expire_on_commit=False))
    yield c
    await c.close()
    await engine.dispose()


async def until(predicate, timeout=15.0, what="condition"):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"{what} not met in time"
        await asyncio.sleep(0.02)


async def op_state(cluster: Cluster, name: str) -> str:
    return (await cluster.store.operations(name))[0].state


# --- the whole offline flow, from the phone's side ---------------------------------------------------

async def test_offline_ca_phone_csr_retry_then_third_party_lsc_and_tls_registration(cluster, tmp_path):
    """Offline CA end to end from the phone: CSR + retry later (the phone waits in `capf` and keeps
    its key, also across a simulator restart) → set-ca, export, openssl signs, import → the phone
    boots again, stores the third-party LSC and registers over TLS with it (CERT-2, AUTH-2)."""
    c = await cluster.start()
    name = "SEP0000CAFE0001"
    await c.add_device(name)
    runner = c.runner(Phone(name=name, model="7960"))
    await runner.request_boot()
    await until(lambda: runner.waiting_for_ca, what="phone waiting for the CA")
    p = runner.phone
    assert p.state is State.CAPF and not runner.booting
    assert p.last_failure == "capf-pending" and "waiting for the CA to sign the CSR" in p.last_failure_reason
    assert p.pending_capf_key is not None and p.lsc is None
    assert name not in c.cc.registry.entries  # it does not register half-enrolled
    assert await op_state(c, name) == "awaiting_ca"
    first_csr = (await c.store.awaiting_csrs())[0].csr_der

    # The simulator restarts: the phone comes back from its stored state with the same pending
    # key, visits CAPF again and is told to wait again — no new CSR, nothing issued.
    await runner.stop(power_off=True)
    restored = Phone.from_dict(p.to_dict())
    assert restored.pending_capf_key.public_key().public_numbers() == p.pending_capf_key.public_key().public_numbers()
    runner = c.runner(restored)
    await runner.request_boot()
    await until(lambda: runner.waiting_for_ca, what="restored phone waiting")
    p = runner.phone
    assert [r.csr_der for r in await c.store.awaiting_csrs()] == [first_csr]
    assert c.capf.sessions[-1].retry_after == 600 and p.boots == 2

    # The administrator: the CA certificate, the CSR out, openssl signs it, the answer in.
    outside = OutsideCa(tmp_path / "outside", "Example Phone CA")
    await c.set_ca(outside)
    (csr_path,) = await c.export_csrs(tmp_path / "csrs")
    csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    assert csr.public_key().public_numbers() == p.pending_capf_key.public_key().public_numbers()
    outcome = await c.import_cert(outside.sign(csr_path, tmp_path / f"{name}.crt"))
    assert outcome.accepted, outcome.reason
    assert await op_state(c, name) == "issued"

    # The phone boots again: it stores the LSC, resets, and registers over TLS presenting it.
    await runner.request_boot()
    await until(lambda: p.state is State.REGISTERED, what="registered with the third-party LSC")
    assert p.lsc is not None and p.pending_capf_key is None
    assert p.lsc.cert.issuer == outside.cert.subject
    assert p.lsc.cert.public_key().public_numbers() == csr.public_key().public_numbers()
    assert p.last_failure == ""  # no longer waiting
    assert p.transport == "authenticated" and p.certificate_in_use == "LSC"
    entry = c.cc.registry.entries[name]
    assert entry.certificate_kind == "LSC" and entry.certificate_fingerprint == ca.fingerprint_sha256(p.lsc.cert)
    assert entry.cipher.startswith("NULL")  # authenticated: integrity only (AUTH-7)
    assert await op_state(c, name) == "done"
    assert outside.verify_client(p.lsc.cert, tmp_path).returncode == 0


async def test_offline_ca_phone_comes_back_after_the_server_delay_and_gives_up_bounded(cluster, tmp_path):
    """Retry later is not a failure: the phone comes back on its own after CAPF's delay (capped)
    and gets the certificate once imported; a phone whose CSR is never signed stops after its
    bounded number of visits, still in `capf`, pending key kept, and tries again when booted."""
    c = await cluster.start(retry_delay=1)
    signed, unsigned = "SEP0000CAFE0002", "SEP0000CAFE0003"
    await c.add_device(signed)
    await c.add_device(unsigned)
    outside = OutsideCa(tmp_path / "outside", "Example Phone CA")
    await c.set_ca(outside)
    patient = c.runner(Phone(name=signed, model="7960"), max_wait=0.3, attempts=50)
    stubborn = c.runner(Phone(name=unsigned, model="7960"), max_wait=0.05, attempts=2)
    await patient.request_boot()
    await stubborn.request_boot()
    await until(lambda: len({r.device_name for r in c.capf.sessions if r.retry_after}) == 2, what="both CSRs")

    csrs = {p.stem: p for p in await c.export_csrs(tmp_path / "csrs")}
    assert set(csrs) == {signed, unsigned}
    outcome = await c.import_cert(outside.sign(csrs[signed], tmp_path / "signed.crt"))
    assert outcome.accepted, outcome.reason
    # No boot requested: the phone returns after the delay by itself.
    await until(lambda: patient.phone.state is State.REGISTERED, what="patient phone registered")
    assert patient.phone.certificate_in_use == "LSC" and patient.phone.boots >= 2

    await until(lambda: stubborn._task.done(), what="stubborn phone stops visiting")
    s = stubborn.phone
    visits = [r for r in c.capf.sessions if r.device_name == unsigned]
    assert len(visits) == 3 and all(r.retry_after == 1 for r in visits)  # first visit + 2 retries
    assert s.state is State.CAPF and s.last_failure == "capf-pending" and s.pending_capf_key is not None
    assert "trying again on the next boot" in s.history[-1]
    assert unsigned not in c.cc.registry.entries
    await stubborn.request_boot()  # the next boot visits again, same key
    await until(lambda: len([r for r in c.capf.sessions if r.device_name == unsigned]) == 4, what="revisit")


# --- call control follows CAPF's third-party CA -----------------------------------------------------

def _third_party_lsc(outside: OutsideCa, name: str, folder: Path) -> ca.Issued:
    folder.mkdir(parents=True, exist_ok=True)
    key = ca.new_key("ec256")
    csr_path = folder / f"{name}.csr"
    csr_path.write_bytes(build_lsc_csr(name, key).public_bytes(serialization.Encoding.PEM))
    cert = x509.load_pem_x509_certificate(outside.sign(csr_path, folder / f"{name}.crt").read_bytes())
    return ca.Issued(cert, key)


async def _register(c: Cluster, name: str, lsc: ca.Issued):
    ctx = tls.sccp_phone_context("authenticated", [c.cc.server_certificate], lsc=lsc)
    phone = await connect_phone("127.0.0.1", c.cc.tls.port, s.Register(name, "127.0.0.1", device_type=7),
                                ssl_context=ctx, pinned_ccm_certificates=[c.cc.server_certificate])
    await phone.wait_registered(5)
    return phone


async def _refused(c: Cluster, name: str, lsc: ca.Issued) -> str:
    """The TLS handshake or the Register is refused; nothing is registered."""
    try:
        phone = await _register(c, name, lsc)
    except (SccpConnectError, SccpRegistrationRejected, ConnectionError, TimeoutError) as exc:
        assert name not in c.cc.registry.entries
        return str(exc) or type(exc).__name__
    await phone.close()
    raise AssertionError(f"{name} registered with an LSC call control must not trust")


async def test_cert2_third_party_lsc_refused_before_set_ca_accepted_after_without_restart(cluster, tmp_path):
    """CERT-2 / AUTH-2 on 2443: an LSC from the third-party CA is refused while call control does
    not trust that CA; after `set-ca` CAPF answers it and the next connection to the SAME listener
    (no restart) is accepted. A CA replaced by another is no longer trusted; a rogue CA never is."""
    c = await cluster.start()
    name = "SEP0000CAFE0004"
    await c.add_device(name, capf_op=None)
    outside = OutsideCa(tmp_path / "outside", "Example Phone CA")
    lsc = _third_party_lsc(outside, name, tmp_path)
    port, context, reloads = c.cc.tls.port, c.cc.trust_watcher.listening_context, c.cc.trust_watcher.reloads

    assert not third_party_ca_path(c.capf_dir).exists()
    await _refused(c, name, lsc)
    assert c.cc.trust.third_party is None

    await c.set_ca(outside)  # `ccmsec capf set-ca`: stored by CAPF, its event, call control asks
    phone = await _register(c, name, lsc)
    await until(lambda: name in c.cc.registry.entries, what="registration")
    entry = c.cc.registry.entries[name]
    assert entry.certificate_kind == "LSC" and entry.certificate_fingerprint == ca.fingerprint_sha256(lsc.cert)
    assert (c.cc.tls.port, c.cc.trust_watcher.listening_context) == (port, context)  # same listener
    assert c.cc.trust_watcher.reloads == reloads + 1 and c.cc.trust.third_party == outside.cert
    await phone.close()
    await until(lambda: name not in c.cc.registry.entries, what="unregistered")

    # A rogue CA with the same name signs an LSC for the same device: refused.
    rogue = OutsideCa(tmp_path / "rogue", "Example Phone CA")
    await _refused(c, name, _third_party_lsc(rogue, name, tmp_path / "rogue"))
    # An LSC of the trusted CA for another device: refused by the Register decision (AUTH-2).
    other = _third_party_lsc(outside, "SEP0000CAFE0999", tmp_path)
    assert "AUTH-2" in await _refused(c, name, other)

    # The administrator replaces the CA: the old CA's LSCs no longer get in (trust is rebuilt,
    # not accumulated), the new CA's do.
    replacement = OutsideCa(tmp_path / "replacement", "Example Phone CA 2")
    await c.set_ca(replacement)
    await _refused(c, name, lsc)
    phone = await _register(c, name, _third_party_lsc(replacement, name, tmp_path / "replacement"))
    await phone.close()


async def test_cert2_unusable_ca_is_not_trusted_and_status_says_why(cluster, tmp_path):
    """A third-party CA CAPF answers that is not a CA (or not a certificate) is not trusted: its
    LSCs stay refused, and the reason is kept for the service status."""
    c = await cluster.start()
    name = "SEP0000CAFE0005"
    await c.add_device(name, capf_op=None)
    outside = OutsideCa(tmp_path / "outside", "Example Phone CA")
    lsc = _third_party_lsc(outside, name, tmp_path)
    # In CAPF's folder behind set-ca's back: a leaf certificate, then garbage.
    c.capf_dir.mkdir(exist_ok=True)
    third_party_ca_path(c.capf_dir).write_bytes(lsc.cert.public_bytes(serialization.Encoding.PEM))
    await c.cc.third_party_ca.refresh()
    await _refused(c, name, lsc)
    assert c.cc.trust.third_party is None and "not a CA" in c.cc.trust_watcher.problem
    third_party_ca_path(c.capf_dir).write_bytes(b"garbage, longer than before")
    assert not await c.cc.third_party_ca.refresh()
    assert c.cc.trust.third_party is None and "not an X.509" in c.cc.third_party_ca.last_error
    await c.set_ca(outside)
    phone = await _register(c, name, lsc)
    assert c.cc.trust_watcher.problem == ""
    await phone.close()


async def test_issue9_attack_replay_planted_third_party_ca_is_refused_on_2443(cluster, tmp_path, caplog):
    """Issue 9's first attack, its last step: a CA planted where call control used to read the
    third-party CA (DATA/pki/lsc-third-party-ca.crt, a folder every container could write) makes
    nobody trust it. Call control trusts only what CAPF answers; an LSC minted from the planted CA
    for the device of a registered phone is refused by the real 2443 listener (TLS: unknown CA, in
    its log), and the legitimate phone stays registered on its connection. (The other door,
    `SetThirdPartyCa` with phone-sim's identity, is refused PERMISSION_DENIED on the running
    cluster: tests/e2e/test_internal_plane.py.)"""
    caplog.set_level(logging.INFO, logger="ccmsec.aio.sccp")
    c = await cluster.start()
    name = "SEP0000CAFE0007"
    await c.add_device(name, capf_op=None)
    outside = OutsideCa(tmp_path / "outside", "Example Phone CA")
    await c.set_ca(outside)  # the administrator's CA, through CAPF
    lsc = _third_party_lsc(outside, name, tmp_path)
    good = await _register(c, name, lsc)
    await until(lambda: name in c.cc.registry.entries, what="legitimate registration")
    entry = c.cc.registry.entries[name]

    attacker = OutsideCa(tmp_path / "attacker", "Attacker CA")
    planted = c.data / "pki" / "lsc-third-party-ca.crt"
    planted.write_bytes(attacker.cert.public_bytes(serialization.Encoding.PEM))
    await c.cc.third_party_ca.on_event(None)  # even a forged "it changed" only makes it ask CAPF
    assert c.cc.trust.third_party == outside.cert

    forged = _third_party_lsc(attacker, name, tmp_path / "forged")
    failures = c.cc.tls.handshake_failures
    with pytest.raises((SccpConnectError, SccpRegistrationRejected, ConnectionError, TimeoutError)):
        intruder = await _register(c, name, forged)
        await intruder.close()
    assert c.cc.tls.handshake_failures == failures + 1  # refused in the handshake, before Register
    await until(lambda: any("unable to get local issuer certificate" in r.getMessage()
                            for r in caplog.records), what="the listener's reason in its log")
    # ... and the Register decision refuses it too (CERT-2), were TLS bypassed.
    from ccmsec_callmanager.registration import DeviceRecord, decide
    verdict = decide(s.RegistrationRequest(name, ("127.0.0.1", 5000), forged.cert, True, "NULL-SHA256",
                                           s.Register(name, "127.0.0.1", device_type=7)),
                     DeviceRecord(name, "7960", "authenticated"), "mixed", c.cc.trust)
    assert not verdict.accepted and verdict.rule == "CERT-2", verdict

    # The legitimate phone was not kicked off: the same registration, its LSC, still answered.
    assert c.cc.registry.entries.get(name) is entry
    assert entry.certificate_fingerprint == ca.fingerprint_sha256(lsc.cert)
    await good.send(s.KeepAlive())
    await asyncio.sleep(0.3)
    assert c.cc.registry.entries.get(name) is entry
    await good.close()


def test_cert2_register_decision_checks_third_party_lsc_chain_usage_and_name(tmp_path):
    """CERT-2 in the Register decision itself (not only the TLS layer): a third-party LSC counts
    only when it verifies as a client certificate of the configured CA and names the device."""
    from ccmsec_callmanager.registration import CertificateKind, DeviceRecord, PhoneTrust, decide

    outside = OutsideCa(tmp_path / "outside", "Example Phone CA")
    capf = ensure_capf_ca(tmp_path / "pki", key_kind="ec256")
    name = "SEP0000CAFE0006"
    good = _third_party_lsc(outside, name, tmp_path).cert
    rogue = _third_party_lsc(OutsideCa(tmp_path / "rogue", "Example Phone CA"), name, tmp_path / "rogue").cert
    (outside.folder / "ext.cnf").write_text(EXT.replace("clientAuth,serverAuth", "serverAuth"))
    server_only = _third_party_lsc(outside, name, tmp_path / "server-only").cert
    device = DeviceRecord(name, "7960", "authenticated")

    def verdict(cert, trust):
        request = s.RegistrationRequest(name, ("127.0.0.1", 5000), cert, True, "NULL-SHA256",
                                        s.Register(name, "127.0.0.1", device_type=7))
        return decide(request, device, "mixed", trust)

    with_ca = PhoneTrust(capf.cert, None, outside.cert)
    v = verdict(good, with_ca)
    assert v.accepted and v.certificate_kind is CertificateKind.LSC
    assert verdict(good, PhoneTrust(capf.cert, None)).rule == "CERT-2"  # CA not configured
    refused = verdict(rogue, with_ca)
    assert refused.rule == "CERT-2" and "LSC refused" in refused.reason  # same name, other key
    refused = verdict(server_only, with_ca)
    assert refused.rule == "CERT-2" and "LSC refused" in refused.reason  # no clientAuth usage

"""CAPF offline-CA mode on the capf service in process: real NATS, alembic-migrated SQLite, real TLS
on the CAPF port, gRPC/mTLS, and a third-party CA that lives outside: its certificates are signed
by `openssl x509 -req` in a subprocess.

Flow: issuer=offline → phone session: auth → key → CSR (22/23) → retry later (16) → ExportCsrs →
openssl signs → ImportCertificates (checked, recorded) → the phone comes back → store → done.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from ccmsec.aio.capf import capf_client_enroll, capf_phone_ssl_context
from ccmsec.pki.ca import create_ca, name, new_key
from ccmsec.pki.lsc import third_party_ca_path
from ccmsec.wire.capf import PhoneCredentials, Reason, build_csr
from ccmsec_proto import capf_pb2, common_pb2, ctl_provider_pb2
from tests.integration.test_capf_service import capf, schedule_msg  # noqa: F401  (fixture)

pytestmark = [pytest.mark.timeout(90),
              pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl binary not installed")]

EXT = """basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth,serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
"""


class OutsideCa:
    """A third-party CA kept in files and operated only through the openssl binary."""

    def __init__(self, folder: Path, cn: str):
        folder.mkdir(parents=True, exist_ok=True)
        ca = create_ca(name(cn, org_unit="PKI", org="Example Corp"), key=new_key("rsa2048"), path_length=None)
        self.cert = ca.cert
        self.cert_path, self.key_path = folder / "ca.crt", folder / "ca.key"
        self.cert_path.write_bytes(ca.pem)
        self.key_path.write_bytes(ca.key_pem)
        (folder / "ext.cnf").write_text(EXT)
        self.folder = folder

    def sign(self, csr_path: Path, out: Path, *extra: str) -> Path:
        subprocess.run(["openssl", "x509", "-req", "-in", str(csr_path), "-CA", str(self.cert_path),
                        "-CAkey", str(self.key_path), "-set_serial", "0x" + csr_path.stem.encode().hex()[:30],
                        "-days", "365", "-sha256", "-extfile", str(self.folder / "ext.cnf"), "-out", str(out),
                        *extra], check=True, capture_output=True, timeout=20)
        return out


def _pem_csr(entry) -> bytes:
    return x509.load_der_x509_csr(entry.csr_der).public_bytes(serialization.Encoding.PEM)


async def _go_offline(h):
    await h.stub.Activate(ctl_provider_pb2.ActivateRequest(active=True))
    reply = await h.stub.SetEnterpriseParameters(capf_pb2.CapfParametersRequest(values={"issuer": "offline"}))
    assert reply.enterprise["issuer"] == "offline" and list(reply.events) == ["device.reset RST-6"]


async def _enroll(h, phone, sessions=1):
    ctx = capf_phone_ssl_context(h.svc.capf_ca.cert)
    return await capf_client_enroll(h.svc.settings.host, h.svc.capf_port, ctx, phone, timeout=10,
                                    max_sessions=sessions, max_delay=0.05)


async def _import(h, *paths: Path):
    files = [capf_pb2.CertificateFile(name=p.name, data=p.read_bytes()) for p in paths]
    return (await h.stub.ImportCertificates(capf_pb2.CertificateImportRequest(files=files))).results


async def _log(h, device):
    return [(e.outcome, e.certificate.fingerprint_sha256)
            for e in (await h.stub.GetIssuedLog(capf_pb2.CapfStatusRequest(device=device))).entries]


async def _op(h, device):
    return (await h.stub.GetOperations(capf_pb2.CapfStatusRequest(device=device))).operations[0]


async def test_offline_ca_whole_flow_one_certificate_across_reconnects(capf, tmp_path):
    """CSR over 22/23, retry later, export, outside openssl CA, import, delivery on reconnect;
    the operation yields exactly one certificate however often the phone comes back."""
    h = capf
    dev = "SEP0000000FF001"
    await h.add_device(dev)
    await _go_offline(h)
    ca = OutsideCa(tmp_path / "outside", "Example Root CA")
    await h.stub.SetThirdPartyCa(capf_pb2.ThirdPartyCaRequest(certificate=ca.cert_path.read_bytes()))
    assert third_party_ca_path(h.data / "capf").read_bytes() == ca.cert_path.read_bytes()
    await h.stub.ScheduleOperation(schedule_msg(dev, auth=capf_pb2.CAPF_AUTH_STRING, auth_string="4711",
                                                key="rsa2048"))
    phone = PhoneCredentials(dev, auth_string="4711", auth_mode="string", capf_certificate=h.svc.capf_ca.cert,
                             lsc_issuers=[ca.cert])

    # First visit: the CSR; then two more visits before the CA answered: retry later, nothing issued.
    sessions = await _enroll(h, phone, sessions=3)
    assert [s.retry_after for s in sessions] == [600, 600, 600]  # service parameter retry_delay
    assert "csr" in sessions[0].history and all("csr" not in s.history for s in sessions[1:])
    assert phone.lsc_cert is None and phone.pending_key is not None
    op = await _op(h, dev)
    assert op.state == "awaiting_ca" and not op.issued_fingerprint
    assert await _log(h, dev) == []

    (entry,) = (await h.stub.ExportCsrs(common_pb2.Empty())).csrs
    assert entry.device == dev and entry.operation_id == op.id
    csr = x509.load_der_x509_csr(entry.csr_der)
    assert csr.public_key().public_numbers() == phone.pending_key.public_key().public_numbers()
    csr_path = tmp_path / f"{dev}.csr"
    csr_path.write_bytes(_pem_csr(entry))
    signed = ca.sign(csr_path, tmp_path / f"{dev}.crt")

    (result,) = await _import(h, signed)
    assert result.accepted, result.reason
    assert result.device == dev and result.operation_id == op.id
    op = await _op(h, dev)
    assert op.state == "issued" and op.issued_fingerprint == result.certificate.fingerprint_sha256
    assert await _log(h, dev) == [("issued", result.certificate.fingerprint_sha256)]
    assert (await h.stub.ExportCsrs(common_pb2.Empty())).csrs == []

    # The same file again, or a second signature of the same CSR: refused, nothing recorded.
    again = ca.sign(csr_path, tmp_path / f"{dev}-second.crt")
    for r in await _import(h, signed, again):
        assert not r.accepted and "at most one" in r.reason
    assert len(await _log(h, dev)) == 1

    # The phone comes back: it gets the imported certificate and the operation completes.
    (session,) = await _enroll(h, phone)
    assert session.end_reason == Reason.OK and "stored" in session.history
    assert phone.lsc_cert.fingerprint(hashes.SHA256()).hex() == result.certificate.fingerprint_sha256
    assert (await _op(h, dev)).state == "done"
    assert await _log(h, dev) == [("installed", result.certificate.fingerprint_sha256)]
    # openssl (outside) agrees the LSC is a client certificate of the third-party CA.
    lsc_path = tmp_path / "installed.pem"
    lsc_path.write_bytes(phone.lsc_cert.public_bytes(serialization.Encoding.PEM))
    verify = subprocess.run(["openssl", "verify", "-purpose", "sslclient", "-CAfile", str(ca.cert_path),
                             str(lsc_path)], capture_output=True, text=True, timeout=20)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # Nothing more to do afterwards; still one certificate.
    (session,) = await _enroll(h, phone)
    assert session.end_reason == Reason.NO_ACTION
    assert len(await _log(h, dev)) == 1

    # The third-party LSC authenticates later operations like a CAPF one (auth mode lsc).
    await h.stub.ScheduleOperation(schedule_msg(dev, op=capf_pb2.CAPF_TROUBLESHOOT, auth=capf_pb2.CAPF_AUTH_LSC))
    phone.auth_mode = "lsc-then-mic"  # its configuration now asks for the certificate
    (session,) = await _enroll(h, phone)
    assert session.end_reason == Reason.OK and "auth:LSC" in session.history


async def _audits(h) -> list[tuple[str, str]]:
    """(action, target) of the audit records (owner.change) CAPF staged in its outbox."""
    from sqlalchemy import select

    from ccmsec.db.outbox import OutboxRow
    from ccmsec_proto import events_pb2

    async with h.svc.db() as session:
        rows = (await session.scalars(select(OutboxRow).where(OutboxRow.kind == "owner.change")
                                      .order_by(OutboxRow.seq))).all()
    changes = [events_pb2.Event.FromString(r.payload).owner_change for r in rows]
    return [(c.action, c.target) for c in changes if c.action in ("capf.third_party_ca", "capf.import")]


async def test_offline_import_refusals_record_nothing(capf, tmp_path):
    """Wrong key, wrong CN, wrong CA, garbage, no CA configured: each refused with its reason;
    the operation stays awaiting_ca and the issued log stays empty."""
    h = capf
    dev = "SEP0000000FF002"
    await h.add_device(dev)
    await _go_offline(h)
    await h.stub.ScheduleOperation(schedule_msg(dev, key="ec256"))
    phone = PhoneCredentials(dev, capf_certificate=h.svc.capf_ca.cert)
    (session,) = await _enroll(h, phone)
    assert session.retry_after == 600
    (entry,) = (await h.stub.ExportCsrs(common_pb2.Empty())).csrs
    csr_path = tmp_path / f"{dev}.csr"
    csr_path.write_bytes(_pem_csr(entry))
    ca = OutsideCa(tmp_path / "outside", "Example Root CA")
    rogue = OutsideCa(tmp_path / "rogue", "Rogue CA")
    good = ca.sign(csr_path, tmp_path / "good.crt")

    # No CA configured yet.
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await _import(h, good)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "set-ca" in exc.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await h.stub.GetThirdPartyCa(common_pb2.Empty())
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    # set-ca refuses garbage and a certificate that is not a CA.
    for bad, text in ((b"not a certificate", "not an X.509"), (good.read_bytes(), "not a CA")):
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await h.stub.SetThirdPartyCa(capf_pb2.ThirdPartyCaRequest(certificate=bad))
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and text in exc.value.details()
    assert not third_party_ca_path(h.data / "capf").exists()
    await h.stub.SetThirdPartyCa(capf_pb2.ThirdPartyCaRequest(certificate=ca.cert_path.read_bytes()))
    assert (await h.stub.GetThirdPartyCa(common_pb2.Empty())).subject.endswith("CN=Example Root CA")

    other_key = new_key("ec256")
    other_key_pem = tmp_path / "other.pub"
    other_key_pem.write_bytes(other_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    stranger_csr = tmp_path / "stranger.csr"
    stranger_csr.write_bytes(x509.load_der_x509_csr(build_csr("SEP0000000FF999", other_key)).public_bytes(
        serialization.Encoding.PEM))
    garbage = tmp_path / "garbage.crt"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    cases = {
        ca.sign(csr_path, tmp_path / "wrong-key.crt", "-force_pubkey", str(other_key_pem)): "not for the key of its CSR",
        ca.sign(csr_path, tmp_path / "wrong-cn.crt", "-subj", "/CN=SEP0000000FF777"): "is not device",
        rogue.sign(csr_path, tmp_path / "wrong-ca.crt"): "not signed by the given CA",
        ca.sign(stranger_csr, tmp_path / "stranger.crt"): "matches no CSR",
        garbage: "not an X.509 certificate",
    }
    results = await _import(h, *cases)
    for path, result in zip(cases, results):
        assert result.name == path.name and not result.accepted, result
        assert cases[path] in result.reason, (path.name, result.reason)
    op = await _op(h, dev)
    assert op.state == "awaiting_ca" and not op.issued_fingerprint
    assert await _log(h, dev) == []
    # Audited by their owner with the write (issue 9 §5): the CA set once, no refused import.
    assert await _audits(h) == [("capf.third_party_ca", "capf")]

    # After all those refusals the right answer is still accepted.
    (result,) = await _import(h, good)
    assert result.accepted, result.reason
    assert await _audits(h) == [("capf.third_party_ca", "capf"), ("capf.import", dev)]


async def test_offline_phone_that_lost_its_key_gets_a_new_csr_and_the_old_answer_is_refused(capf, tmp_path):
    """A reconnect with a different key before any import replaces the CSR (nothing was issued);
    the CA's answer to the old CSR then matches no CSR."""
    h = capf
    dev = "SEP0000000FF003"
    await h.add_device(dev)
    await _go_offline(h)
    ca = OutsideCa(tmp_path / "outside", "Example Root CA")
    await h.stub.SetThirdPartyCa(capf_pb2.ThirdPartyCaRequest(certificate=ca.cert_path.read_bytes()))
    await h.stub.ScheduleOperation(schedule_msg(dev, key="ec256"))
    await _enroll(h, PhoneCredentials(dev, capf_certificate=h.svc.capf_ca.cert))
    (old,) = (await h.stub.ExportCsrs(common_pb2.Empty())).csrs
    old_path = tmp_path / "old.csr"
    old_path.write_bytes(_pem_csr(old))
    reborn = PhoneCredentials(dev, capf_certificate=h.svc.capf_ca.cert, lsc_issuers=[ca.cert])
    (session,) = await _enroll(h, reborn)
    assert "csr" in session.history and session.retry_after
    (new,) = (await h.stub.ExportCsrs(common_pb2.Empty())).csrs
    assert new.operation_id == old.operation_id and new.key_sha256 != old.key_sha256
    (refused,) = await _import(h, ca.sign(old_path, tmp_path / "old.crt"))
    assert not refused.accepted and "not for the key of its CSR" in refused.reason
    new_path = tmp_path / f"{dev}.csr"
    new_path.write_bytes(_pem_csr(new))
    (ok,) = await _import(h, ca.sign(new_path, tmp_path / "new.crt"))
    assert ok.accepted, ok.reason
    (session,) = await _enroll(h, reborn)
    assert session.end_reason == Reason.OK and reborn.lsc_cert is not None


async def test_capf_mode_unchanged_by_default_and_switching_back(capf):
    """Default issuer is capf: no CSR is asked; an operation holding a CSR stays offline even if
    the parameter is switched back, so it cannot end up with two certificates."""
    h = capf
    await h.stub.Activate(ctl_provider_pb2.ActivateRequest(active=True))
    params = await h.stub.GetParameters(common_pb2.Empty())
    assert params.enterprise["issuer"] == "capf" and params.service["retry_delay"] == "600"
    await h.add_device("SEP0000000FF004")
    await h.add_device("SEP0000000FF005")
    await h.stub.ScheduleOperation(schedule_msg("SEP0000000FF004"))
    (s,) = await _enroll(h, PhoneCredentials("SEP0000000FF004", capf_certificate=h.svc.capf_ca.cert))
    assert s.end_reason == Reason.OK and "csr" not in s.history
    await _go_offline(h)
    await h.stub.ScheduleOperation(schedule_msg("SEP0000000FF005"))
    phone = PhoneCredentials("SEP0000000FF005", capf_certificate=h.svc.capf_ca.cert)
    await _enroll(h, phone)
    await h.stub.SetEnterpriseParameters(capf_pb2.CapfParametersRequest(values={"issuer": "capf"}))
    (s,) = await _enroll(h, phone)
    assert s.retry_after == 600 and phone.lsc_cert is None
    assert await _log(h, "SEP0000000FF005") == []

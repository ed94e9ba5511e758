"""Issue 5 end to end on the running cluster: activate CAPF, schedule installs for 50 phones with
mixed auth modes, drive the phones over the real CAPF port, `openssl verify -purpose sslclient`
every LSC against the CAPF certificate, troubleshoot returns the same certificate, delete removes
it and the phone falls back to its MIC. Rules: CHK-2, CERT-1, CERT-2, CHK-7, DEV-3."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ccmsec.aio.capf import capf_client_run, capf_phone_ssl_context
from ccmsec.db.devices import Device
from ccmsec.pki.tokens import ensure_manufacturer_ca, issue_mic
from ccmsec.runtime.grpcio import secure_channel
from ccmsec.runtime.identity import client_identity
from ccmsec.wire.capf import CapfPhoneSession, KeySpec, PhoneCredentials, Reason
from ccmsec_proto import capf_pb2, capf_pb2_grpc
from tests.conftest import run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

PHONES = 50
AUTH_CYCLE = ("null", "string", "mic", "lsc-then-mic")  # mic modes go to 7970s (they have a MIC)
AUTH_ENUM = {"null": capf_pb2.CAPF_AUTH_NULL, "string": capf_pb2.CAPF_AUTH_STRING,
             "mic": capf_pb2.CAPF_AUTH_MIC, "lsc-then-mic": capf_pb2.CAPF_AUTH_LSC_THEN_MIC,
             "lsc": capf_pb2.CAPF_AUTH_LSC}
KEY_CYCLE = ("ec256", "rsa1024", "ec256", "rsa2048")


def _cli(data, *args):
    return run_cli("capf", *args, "--data", str(data), timeout=60)


async def _add_devices(data, devices: dict[str, str]) -> None:
    from tests.ownerdb import owner_db, owner_url

    async with owner_db(owner_url(data, "callmanager"), "callmanager", data_dir=data) as factory:  # the owner's file
        async with factory() as s, s.begin():
            for name, model in devices.items():
                s.add(Device(name=name, model=model))


async def _drive(host, port, capf_cert, phones: list[PhoneCredentials]) -> list[CapfPhoneSession]:
    ctx = capf_phone_ssl_context(capf_cert)
    sessions = [CapfPhoneSession(p) for p in phones]
    results = await asyncio.gather(*(capf_client_run(host, port, ctx, s, timeout=30) for s in sessions),
                                   return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    return sessions


async def _schedule_all(ident, svc, requests):
    async with secure_channel(ident, svc["host"], svc["grpc_port"], "capf") as ch:
        stub = capf_pb2_grpc.CapfStub(ch)
        return [await stub.ScheduleOperation(r, timeout=10) for r in requests]


async def _log(ident, svc, device=""):
    async with secure_channel(ident, svc["host"], svc["grpc_port"], "capf") as ch:
        return await capf_pb2_grpc.CapfStub(ch).GetIssuedLog(capf_pb2.CapfStatusRequest(device=device), timeout=10)


def test_capf_lifecycle_for_50_phones_with_mixed_auth(cluster, tmp_path):
    started = time.monotonic()
    data = cluster["data"]
    svc = cluster["endpoints"]["services"]["capf"]
    ident = client_identity(data)

    # --- CHK-2: activation through the CLI; the CAPF certificate through the CLI -------------
    res = _cli(data, "activate")
    assert res.returncode == 0, res.stderr
    assert "CAPF service activated" in res.stdout
    res = _cli(data, "cert", "--out", str(tmp_path / "capf.pem"))
    assert res.returncode == 0, res.stderr
    capf_cert = x509.load_pem_x509_certificate((tmp_path / "capf.pem").read_bytes())

    # --- devices: 50 LSC-capable phones (7970s hold MICs) plus a 7912 that cannot hold an LSC --
    names = [f"SEP00000005{i:04X}" for i in range(PHONES)]
    auth = {n: AUTH_CYCLE[i % 4] for i, n in enumerate(names)}
    models = {n: ("7970" if auth[n] in ("mic", "lsc-then-mic") else "7960") for n in names}
    asyncio.run(_add_devices(data, {**models, "SEP0000000579AA": "7912"}))

    # --- CLI schedule errors are one clear line, never a traceback ---------------------------
    bad = [
        (("schedule", "SEP0000000579AA", "--op", "install", "--auth", "null", "--key", "ec256"), "DEV-3"),
        (("schedule", "SEP00000005FFFF", "--op", "install", "--auth", "null"), "unknown device"),
        (("schedule", names[0], "--op", "install", "--auth", "string"), "--auth-string"),
        (("schedule", names[0], "--op", "install", "--auth", "null", "--by", "yesterday"), "bad --by date"),
        (("schedule", names[0], "--op", "install", "--auth", "null", "--by", "2001-01-01"), "in the past"),
    ]
    for args, text in bad:
        res = _cli(data, *args)
        assert res.returncode != 0 and text in res.stderr, (args, res.stderr)
        assert "Traceback" not in res.stderr

    # --- schedule: two through the CLI, the rest over gRPC (same RPC) ------------------------
    secret = {n: f"{1000 + i:04d}" for i, n in enumerate(names)}
    res = _cli(data, "schedule", names[1], "--op", "install", "--auth", "string", "--auth-string",
               secret[names[1]], "--key", KEY_CYCLE[1], "--by", "+2h")
    assert res.returncode == 0, res.stderr
    res = _cli(data, "schedule", names[0], "--op", "install", "--auth", "null", "--key", KEY_CYCLE[0])
    assert res.returncode == 0, res.stderr
    requests = [capf_pb2.CapfSchedule(
        device=n, operation=capf_pb2.CAPF_INSTALL, auth_mode=AUTH_ENUM[auth[n]], key_type=KEY_CYCLE[i % 4],
        auth_string=secret[n] if auth[n] == "string" else "") for i, n in enumerate(names) if i > 1]
    asyncio.run(_schedule_all(ident, svc, requests))

    # --- the phones: keys are generated on the phone; MICs come from the manufacturer CA -----
    mfr = ensure_manufacturer_ca(data / "pki")
    phones = []
    for i, n in enumerate(names):
        mic = issue_mic(mfr, n, "ec256") if models[n] == "7970" else None
        phones.append(PhoneCredentials(
            n, mic_cert=mic.cert if mic else None, mic_key=mic.key if mic else None,
            auth_string=secret[n] if auth[n] == "string" else None, auth_mode=auth[n], capf_certificate=capf_cert,
            pending_key=KeySpec.parse(KEY_CYCLE[i % 4]).generate()))
    sessions = asyncio.run(_drive(svc["host"], svc["capf_port"], capf_cert, phones))
    assert [s.end_reason for s in sessions] == [Reason.OK] * PHONES, [s.history for s in sessions]
    assert all(p.lsc_cert is not None for p in phones)
    assert [s for s in sessions if "auth:MIC" in s.history] == [s for s in sessions if auth[s.phone.device_name] in ("mic", "lsc-then-mic")]

    # --- openssl verify -purpose sslclient every LSC against the CAPF certificate -----------
    openssl = shutil.which("openssl")
    if openssl:
        files = []
        for p in phones:
            f = tmp_path / f"{p.device_name}.pem"
            f.write_bytes(p.lsc_cert.public_bytes(serialization.Encoding.PEM))
            files.append(str(f))
        out = subprocess.run([openssl, "verify", "-purpose", "sslclient", "-CAfile", str(tmp_path / "capf.pem"),
                              *files], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.count(": OK") == PHONES
        # and a certificate from elsewhere is refused by the same check
        foreign = tmp_path / "foreign.pem"
        a_mic = next(p.mic_cert for p in phones if p.mic_cert is not None)
        foreign.write_bytes(a_mic.public_bytes(serialization.Encoding.PEM))
        bad_out = subprocess.run([openssl, "verify", "-purpose", "sslclient", "-CAfile",
                                  str(tmp_path / "capf.pem"), str(foreign)], capture_output=True, text=True)
        assert bad_out.returncode != 0

    # --- troubleshoot (authenticated by the LSC, CERT-2) returns the same certificate --------
    mic_phone = next(p for p in phones if p.mic_cert is not None)   # holds both MIC and LSC
    plain_phone = phones[0]
    asyncio.run(_schedule_all(ident, svc, [
        capf_pb2.CapfSchedule(device=p.device_name, operation=capf_pb2.CAPF_TROUBLESHOOT,
                              auth_mode=capf_pb2.CAPF_AUTH_LSC) for p in (mic_phone, plain_phone)]))
    for p in (mic_phone, plain_phone):
        p.auth_mode = "lsc-then-mic"  # what their configuration now says (cnf.xml has no "LSC only")
    ts = asyncio.run(_drive(svc["host"], svc["capf_port"], capf_cert, [mic_phone, plain_phone]))
    assert [s.end_reason for s in ts] == [Reason.OK, Reason.OK]
    assert "auth:LSC" in ts[0].history and "fetched:LSC" in ts[0].history  # CERT-2: LSC before MIC
    for p in (mic_phone, plain_phone):
        entries = asyncio.run(_log(ident, svc, p.device_name)).entries
        assert [e.outcome for e in entries] == ["installed", "fetched"]
        assert entries[1].certificate.der == p.lsc_cert.public_bytes(serialization.Encoding.DER)
        assert entries[0].certificate.fingerprint_sha256 == entries[1].certificate.fingerprint_sha256

    # --- delete removes the LSC; the MIC stays and is what the phone falls back to (CERT-1) ---
    res = _cli(data, "schedule", mic_phone.device_name, "--op", "delete", "--auth", "lsc-then-mic")
    assert res.returncode == 0, res.stderr
    mic_before = mic_phone.mic_cert
    (deleted,) = asyncio.run(_drive(svc["host"], svc["capf_port"], capf_cert, [mic_phone]))
    assert deleted.end_reason == Reason.OK and "deleted" in deleted.history
    assert mic_phone.lsc_cert is None and mic_phone.mic_cert is mic_before
    res = _cli(data, "log", mic_phone.device_name)
    assert res.returncode == 0 and [line.split()[5] for line in res.stdout.splitlines()[1:]] == [
        "installed", "fetched", "deleted"], res.stdout
    # afterwards the phone authenticates with its MIC again
    asyncio.run(_schedule_all(ident, svc, [capf_pb2.CapfSchedule(
        device=mic_phone.device_name, operation=capf_pb2.CAPF_TROUBLESHOOT, auth_mode=capf_pb2.CAPF_AUTH_LSC_THEN_MIC)]))
    (fallback,) = asyncio.run(_drive(svc["host"], svc["capf_port"], capf_cert, [mic_phone]))
    assert "auth:MIC" in fallback.history and "fetched:MIC" in fallback.history

    # --- status lists every operation with its state -----------------------------------------
    res = _cli(data, "status", mic_phone.device_name)
    assert res.returncode == 0, res.stderr
    states = [line.split()[5] for line in res.stdout.splitlines()[1:]]
    assert states == ["done"] * 4, res.stdout
    res = _cli(data, "status", "SEP0000000579AA")
    assert res.returncode == 0 and len(res.stdout.splitlines()) == 1  # nothing was ever scheduled
    assert time.monotonic() - started < 60

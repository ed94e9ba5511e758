"""CAPF end to end: real TLS on 127.0.0.1, real SQLite (aiosqlite), real LSC signing."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import ssl
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from ccmsec.aio.capf import CapfServer, capf_client_run, capf_phone_ssl_context, capf_server_ssl_context
from ccmsec.db.base import Base
from ccmsec.db.capf import SqlCapfStore, schedule_operation
from ccmsec.pki.ca import create_ca, issue_with_new_key, name, new_key
from ccmsec.pki.lsc import LscIssuer, ensure_capf_ca, verify_lsc_chain
from ccmsec.wire.capf import (
    CapfPhoneSession, Command, Element, FrameReader, PhoneCredentials, Reason, encode_frame, spki_der,
)

DEVICE = "SEP001122334455"


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ensure_capf_ca(d, key_kind="ec256")
    return d


@pytest.fixture(scope="module")
def capf(pki_dir):
    return ensure_capf_ca(pki_dir)


@pytest.fixture(scope="module")
def manufacturer():
    return create_ca(name("Manufacturer CA"), key=new_key("ec256"))


@pytest.fixture
async def factory(tmp_path):
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'ccmsec.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield async_sessionmaker(engine, expire_on_commit=False)
    await engine.dispose()


@pytest.fixture
async def store(factory):
    return SqlCapfStore(factory)


@pytest.fixture
async def server(pki_dir, capf, manufacturer, store):
    ctx = capf_server_ssl_context(pki_dir / "capf.crt", pki_dir / "capf.key")
    srv = CapfServer("127.0.0.1", 0, ctx, store, LscIssuer(capf, [manufacturer.cert]),
                     idle_timeout=1.0, session_timeout=10.0)
    await srv.start()
    yield srv
    await srv.close()


def make_phone(capf, manufacturer, device=DEVICE, **kw) -> PhoneCredentials:
    mic = issue_with_new_key(manufacturer, name(f"CP-7960G-{device}"), "ec256")
    return PhoneCredentials(device, mic_cert=mic.cert, mic_key=mic.key, capf_certificate=capf.cert, **kw)


@pytest.fixture
def phone(capf, manufacturer):
    return make_phone(capf, manufacturer)


class DroppingSession(CapfPhoneSession):
    """A phone whose connection dies when a given request arrives, before it handles it."""

    def __init__(self, phone, drop_on):
        super().__init__(phone)
        self.drop_on = drop_on

    def handle_frame(self, frame):
        if self.drop_on(frame):
            raise ConnectionAbortedError(f"dropped on {frame.command.name} (test)")
        return super().handle_frame(frame)


async def enroll(server, capf, phone, *, drop_on=None) -> tuple[int | None, CapfPhoneSession]:
    session = CapfPhoneSession(phone) if drop_on is None else DroppingSession(phone, drop_on)
    reason = await capf_client_run("127.0.0.1", server.port, capf_phone_ssl_context(capf.cert), session, timeout=10)
    return reason, session


async def raw_exchange(server, capf, payload: bytes, *, close_after=False) -> list:
    """Read the auth request, send `payload` verbatim, collect what the server answers until EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=capf_phone_ssl_context(capf.cert))
    frames_in = FrameReader()
    got = []
    try:
        async with asyncio.timeout(5):
            while not got:
                got += frames_in.feed(await reader.read(4096))
            writer.write(payload.replace(b"SID!", got[0].session_id.to_bytes(4, "big")))
            await writer.drain()
            if close_after:
                writer.close()
                return got
            while chunk := await reader.read(4096):
                got += frames_in.feed(chunk)
    finally:
        writer.close()
    return got


def auth_response(device=DEVICE, password=None) -> bytes:
    els = [(Element.VERSION, b"\x03"), (Element.DEVICE_NAME, device.encode() + b"\x00")]
    if password:
        els.append((Element.PASSWORD, password.encode() + b"\x00"))
    return encode_frame(Command.AUTH_RESPONSE, 0, els)


def with_sid(frame: bytes) -> bytes:
    return frame[:2] + b"SID!" + frame[6:]


# ---- installs ---------------------------------------------------------------------------------


async def test_install_with_auth_string(server, store, factory, capf, phone):
    op = await schedule_operation(factory, DEVICE, "install", auth_mode="string", auth_string="123456",
                                  key_type="ec256")
    phone.auth_string, phone.auth_mode = "123456", "string"
    reason, session = await enroll(server, capf, phone)
    assert reason == Reason.OK and phone.lsc_cert is not None
    verify_lsc_chain(phone.lsc_cert, capf.cert, device_name=DEVICE)
    view = await store.operation(op)
    assert view.state == "done" and view.failed_attempts == 0
    (record,) = await store.certificates(DEVICE)
    assert record.outcome == "installed" and record.der == phone.lsc_cert.public_bytes(serialization.Encoding.DER)


async def test_install_with_null_auth_rsa_key(server, store, factory, capf, phone):
    await schedule_operation(factory, DEVICE, "install", auth_mode="null", key_type="rsa1024")
    reason, _ = await enroll(server, capf, phone)
    assert reason == Reason.OK and phone.lsc_cert.public_key().key_size == 1024


async def test_install_with_mic_auth(server, factory, capf, phone):
    await schedule_operation(factory, DEVICE, "install", auth_mode="mic", key_type="ec256")
    phone.auth_mode = "mic"
    reason, session = await enroll(server, capf, phone)
    assert reason == Reason.OK and "auth:MIC" in session.history


async def test_cert2_upgrade_with_lsc_auth_uses_the_lsc(server, factory, capf, phone):
    """CERT-2: a phone holding an LSC authenticates with it, not with its MIC."""
    await schedule_operation(factory, DEVICE, "install", key_type="ec256")
    await enroll(server, capf, phone)
    first_lsc = phone.lsc_cert
    await schedule_operation(factory, DEVICE, "upgrade", auth_mode="lsc", key_type="ec256")
    phone.auth_mode = "lsc-then-mic"  # cnf.xml has no "LSC only": 3 is LSC, else MIC
    reason, session = await enroll(server, capf, phone)
    assert reason == Reason.OK and "auth:LSC" in session.history and phone.lsc_cert != first_lsc


async def test_cert2_lsc_then_mic_falls_back_to_mic_only_without_lsc(server, factory, capf, phone):
    await schedule_operation(factory, DEVICE, "install", auth_mode="lsc-then-mic", key_type="ec256")
    phone.auth_mode = "lsc-then-mic"
    reason, session = await enroll(server, capf, phone)
    assert reason == Reason.OK and "auth:MIC" in session.history
    await schedule_operation(factory, DEVICE, "upgrade", auth_mode="lsc-then-mic", key_type="ec256")
    reason, session = await enroll(server, capf, phone)
    assert reason == Reason.OK and "auth:LSC" in session.history


async def test_lsc_mode_refuses_a_mic_and_records_the_attempt(server, store, factory, capf, phone):
    op = await schedule_operation(factory, DEVICE, "install", auth_mode="lsc", key_type="ec256")
    phone.auth_mode = "mic"
    reason, _ = await enroll(server, capf, phone)
    assert reason == Reason.INVALID_ELEMENT and phone.lsc_cert is None
    view = await store.operation(op)
    assert view.failed_attempts == 1 and "does not accept a MIC" in view.reason
    assert await store.certificates(DEVICE) == []


async def test_cert1_forged_mic_from_unknown_manufacturer_is_refused(server, store, factory, capf):
    evil = create_ca(name("Manufacturer CA"), key=new_key("ec256"))  # same name, different key
    forged = make_phone(capf, evil, auth_mode="mic")
    op = await schedule_operation(factory, DEVICE, "install", auth_mode="mic", key_type="ec256")
    reason, _ = await enroll(server, capf, forged)
    assert reason == Reason.INVALID_ELEMENT and forged.lsc_cert is None
    assert "MIC refused" in (await store.operation(op)).reason


async def test_mic_of_another_device_is_refused(server, store, factory, capf, manufacturer):
    other = make_phone(capf, manufacturer, device="SEP00AABBCCDDEE")
    impostor = PhoneCredentials(DEVICE, mic_cert=other.mic_cert, mic_key=other.mic_key, capf_certificate=capf.cert,
                                auth_mode="mic")
    op = await schedule_operation(factory, DEVICE, "install", auth_mode="mic", key_type="ec256")
    reason, _ = await enroll(server, capf, impostor)
    assert reason == Reason.INVALID_ELEMENT and "is not device" in (await store.operation(op)).reason


# ---- troubleshoot / delete ----------------------------------------------------------------------


async def test_troubleshoot_returns_the_same_certificate(server, store, factory, capf, phone):
    await schedule_operation(factory, DEVICE, "install", key_type="ec256")
    await enroll(server, capf, phone)
    await schedule_operation(factory, DEVICE, "troubleshoot")
    reason, session = await enroll(server, capf, phone)
    assert reason == Reason.OK and "fetched:LSC" in session.history
    fetched = [r for r in await store.certificates(DEVICE) if r.outcome == "fetched"]
    assert fetched[0].der == phone.lsc_cert.public_bytes(serialization.Encoding.DER)


async def test_chk8_cert1_delete_removes_lsc_and_phone_falls_back_to_mic(server, store, factory, capf, phone):
    """CHK-8 reports the LSC; CERT-1: delete removes only the LSC, the MIC remains in use."""
    await schedule_operation(factory, DEVICE, "install", key_type="ec256")
    await enroll(server, capf, phone)
    assert (await store.installed_lsc(DEVICE)).der == phone.lsc_cert.public_bytes(serialization.Encoding.DER)
    assert await store.devices_missing_lsc([DEVICE, "SEP0000000000AA"]) == ["SEP0000000000AA"]
    mic = phone.mic_cert
    await schedule_operation(factory, DEVICE, "delete")
    reason, session = await enroll(server, capf, phone)
    assert reason == Reason.OK and "deleted" in session.history
    assert phone.lsc_cert is None and phone.mic_cert is mic
    assert await store.installed_lsc(DEVICE) is None
    await schedule_operation(factory, DEVICE, "troubleshoot", auth_mode="lsc-then-mic")
    phone.auth_mode = "lsc-then-mic"
    reason, session = await enroll(server, capf, phone)
    assert reason == Reason.OK and "auth:MIC" in session.history and "fetched:MIC" in session.history


# ---- refusals ---------------------------------------------------------------------------------


async def test_wrong_auth_string_refused_and_attempt_recorded(server, store, factory, capf, phone):
    op = await schedule_operation(factory, DEVICE, "install", auth_mode="string", auth_string="123456",
                                  key_type="ec256")
    phone.auth_string, phone.auth_mode = "654321", "string"
    reason, _ = await enroll(server, capf, phone)
    assert reason == Reason.INVALID_ELEMENT and phone.lsc_cert is None and phone.pending_key is None
    view = await store.operation(op)
    assert view.failed_attempts == 1 and view.reason == "wrong auth string" and view.state == "pending"
    assert await store.certificates() == []


async def test_repeated_wrong_auth_strings_lock_the_operation(server, store, factory, capf, phone):
    op = await schedule_operation(factory, DEVICE, "install", auth_mode="string", auth_string="123456",
                                  key_type="ec256")
    phone.auth_string, phone.auth_mode = "000000", "string"
    for _ in range(5):
        reason, _ = await enroll(server, capf, phone)
        assert reason == Reason.INVALID_ELEMENT
    assert (await store.operation(op)).state == "locked"
    phone.auth_string = "123456"  # even the right string no longer works
    reason, _ = await enroll(server, capf, phone)
    assert reason == Reason.INVALID_ELEMENT and phone.lsc_cert is None
    assert await store.certificates() == []


async def test_unknown_device_gets_reason_9(server, capf, phone):
    reason, _ = await enroll(server, capf, phone)
    assert reason == Reason.UNKNOWN_DEVICE


async def test_unscheduled_device_gets_end_session_reason_0(server, factory, capf, phone):
    await schedule_operation(factory, DEVICE, "install", key_type="ec256")
    await enroll(server, capf, phone)
    reason, session = await enroll(server, capf, phone)
    assert reason == Reason.NO_ACTION and "keygen" not in session.history


async def test_expired_operation_is_not_carried_out(server, store, factory, capf, phone):
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    op = await schedule_operation(factory, DEVICE, "install", key_type="ec256", deadline=past)
    reason, session = await enroll(server, capf, phone)
    assert reason == Reason.NO_ACTION and phone.lsc_cert is None and "keygen" not in session.history
    assert (await store.operation(op)).state == "expired"
    assert await store.certificates() == []


@pytest.mark.parametrize("payload, message", [
    (b"\x55\x02SID!\x00\x04\x07\x00\x09\x03", "claims 9 bytes"),                 # over-long element
    (b"\x55\x02SID!\x00\x05\x07\x00\x02\x03\x03", "must be 1 byte"),                 # bad fixed size
    (b"\x66\x02SID!\x00\x00", "protocol id"),                                    # not CAPF
    (b"\x55\x02SID!\xff\xff", "exceeds"),                                        # over the frame cap
    (with_sid(encode_frame(Command.KEY_GEN_RESPONSE, 0, [(Element.PUBLIC_KEY, b"x")])), "out of order"),
])
async def test_malformed_or_out_of_order_frames_end_with_reason_7(server, store, factory, capf, payload, message):
    op = await schedule_operation(factory, DEVICE, "install", key_type="ec256")
    frames = await raw_exchange(server, capf, payload)
    assert [f.command for f in frames] == [Command.AUTH_REQUEST, Command.END_SESSION]
    assert frames[-1].u8(Element.REASON) == Reason.INVALID_ELEMENT
    await asyncio.sleep(0.05)
    assert message in server.sessions[-1].error
    assert (await store.operation(op)).state == "pending" and await store.certificates() == []


async def test_truncated_stream_leaves_nothing_half_written(server, store, factory, capf):
    op = await schedule_operation(factory, DEVICE, "install", key_type="ec256")
    await raw_exchange(server, capf, with_sid(auth_response())[:-3], close_after=True)
    for _ in range(50):
        if server.sessions:
            break
        await asyncio.sleep(0.02)
    assert "stream ended inside" in server.sessions[-1].error
    assert (await store.operation(op)).state == "pending" and await store.certificates() == []


async def test_bad_public_key_is_refused_and_nothing_issued(server, store, factory, capf):
    await schedule_operation(factory, DEVICE, "install", key_type="ec256")
    rsa_key = new_key("rsa1024")  # asked for EC P-256
    payload = with_sid(auth_response()) + with_sid(
        encode_frame(Command.KEY_GEN_RESPONSE, 0, [(Element.PUBLIC_KEY, spki_der(rsa_key.public_key()))]))
    frames = await raw_exchange(server, capf, payload)
    assert frames[-1].command is Command.END_SESSION and frames[-1].u8(Element.REASON) == Reason.INVALID_ELEMENT
    assert await store.certificates() == []


async def test_stalled_phone_is_dropped_after_idle_timeout(server, capf):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=capf_phone_ssl_context(capf.cert))
    try:
        async with asyncio.timeout(5):
            data = b""
            while chunk := await reader.read(4096):
                data += chunk
        assert data[1] == Command.AUTH_REQUEST  # then silence from us, and the server hung up
        assert server.sessions[-1].error == "phone idle too long"
    finally:
        writer.close()


async def test_cert3_phone_refuses_a_capf_server_not_in_its_ctl(server, capf, phone):
    """CERT-3: phones trust the CAPF certificate distributed with the CTL, nothing else."""
    stranger = create_ca(name("CAPF"), key=new_key("ec256"))
    session = CapfPhoneSession(phone)
    with pytest.raises(ssl.SSLCertVerificationError):
        await capf_client_run("127.0.0.1", server.port, capf_phone_ssl_context(stranger.cert), session, timeout=5)
    assert phone.lsc_cert is None


# ---- idempotency ------------------------------------------------------------------------------


async def test_reconnect_mid_session_never_issues_a_second_certificate(server, store, factory, capf, phone):
    op = await schedule_operation(factory, DEVICE, "install", key_type="ec256")
    with pytest.raises(ConnectionAbortedError):
        await enroll(server, capf, phone, drop_on=lambda f: f.command is Command.STORE_CERT_REQUEST)
    assert phone.lsc_cert is None and phone.pending_key is not None
    (issued,) = await store.certificates(DEVICE)
    assert issued.outcome == "issued"
    reason, _ = await enroll(server, capf, phone)  # same phone, same pending key
    assert reason == Reason.OK
    (record,) = await store.certificates(DEVICE)
    assert record.outcome == "installed" and record.der == issued.der
    assert phone.lsc_cert.public_bytes(serialization.Encoding.DER) == issued.der
    assert (await store.operation(op)).state == "done"


async def test_reconnect_with_a_different_key_is_refused_not_reissued(server, store, factory, capf, manufacturer):
    phone = make_phone(capf, manufacturer)
    op = await schedule_operation(factory, DEVICE, "install", key_type="ec256")
    with pytest.raises(ConnectionAbortedError):
        await enroll(server, capf, phone, drop_on=lambda f: f.command is Command.STORE_CERT_REQUEST)
    phone.pending_key = None  # the phone lost its key: a new one will be generated
    reason, _ = await enroll(server, capf, phone)
    assert reason == Reason.INVALID_ELEMENT and phone.lsc_cert is None
    assert len(await store.certificates(DEVICE)) == 1
    assert (await store.operation(op)).state == "failed"


# ---- publisher database, restarts, outside tools ------------------------------------------------


async def test_chk7_capf_state_lives_in_the_publisher_database(pki_dir, capf, manufacturer, factory, phone):
    """CHK-7: a restarted CAPF (new server, new store, same database) knows what was done."""
    await schedule_operation(factory, DEVICE, "install", key_type="ec256")
    ctx = capf_server_ssl_context(pki_dir / "capf.crt", pki_dir / "capf.key")
    async with CapfServer("127.0.0.1", 0, ctx, SqlCapfStore(factory), LscIssuer(capf)) as first:
        assert (await enroll(first, capf, phone))[0] == Reason.OK
    store = SqlCapfStore(factory)
    async with CapfServer("127.0.0.1", 0, ctx, store, LscIssuer(capf)) as second:
        assert (await enroll(second, capf, phone))[0] == Reason.NO_ACTION
    assert (await store.installed_lsc(DEVICE)).der == phone.lsc_cert.public_bytes(serialization.Encoding.DER)


async def test_concurrent_enrollments(server, store, factory, capf, manufacturer):
    phones = [make_phone(capf, manufacturer, device=f"SEP0000000000{i:02X}") for i in range(12)]
    for p in phones:
        await schedule_operation(factory, p.device_name, "install", key_type="ec256")
    results = await asyncio.gather(*(enroll(server, capf, p) for p in phones))
    assert [r for r, _ in results] == [Reason.OK] * len(phones)
    assert len({p.lsc_cert.serial_number for p in phones}) == len(phones)


@pytest.mark.interop
async def test_openssl_verify_accepts_issued_lscs_as_ssl_clients(server, factory, capf, manufacturer, tmp_path):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl binary not installed")
    (tmp_path / "capf.pem").write_bytes(capf.pem)
    for i, kind in enumerate(["ec256", "rsa2048"]):
        phone = make_phone(capf, manufacturer, device=f"SEP00000000AB{i:02X}")
        await schedule_operation(factory, phone.device_name, "install", key_type=kind)
        assert (await enroll(server, capf, phone))[0] == Reason.OK
        lsc = tmp_path / f"lsc{i}.pem"
        lsc.write_bytes(phone.lsc_cert.public_bytes(serialization.Encoding.PEM))
        ok = subprocess.run([openssl, "verify", "-purpose", "sslclient", "-CAfile", str(tmp_path / "capf.pem"),
                             str(lsc)], capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0 and ": OK" in ok.stdout, ok.stdout + ok.stderr
    # The bad case: a certificate from another CA is refused by openssl too.
    stranger = issue_with_new_key(create_ca(name("CAPF")), name(DEVICE), "ec256")
    (tmp_path / "bad.pem").write_bytes(stranger.pem)
    bad = subprocess.run([openssl, "verify", "-purpose", "sslclient", "-CAfile", str(tmp_path / "capf.pem"),
                          str(tmp_path / "bad.pem")], capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0


# ---- one source cannot starve the others (issue 14) -----------------------------------------------


async def test_one_source_holding_520_tls_connections_does_not_block_capf_for_others(
        pki_dir, capf, manufacturer, store, factory, phone):
    """520 TLS connections from one address (the issue's attack) take at most `max_per_source`
    slots, refused before any handshake; a phone from another address still enrols, and the
    flooding address is served again once its connections are gone."""
    ctx = capf_server_ssl_context(pki_dir / "capf.crt", pki_dir / "capf.key")
    async with CapfServer("127.0.0.1", 0, ctx, store, LscIssuer(capf, [manufacturer.cert]), max_connections=512,
                          max_per_source=32, idle_timeout=30, session_timeout=60) as srv:
        phone_ctx = capf_phone_ssl_context(capf.cert)

        async def hold():
            return await asyncio.open_connection("127.0.0.1", srv.port, ssl=phone_ctx, local_addr=("127.0.0.2", 0))

        flood = await asyncio.gather(*(hold() for _ in range(520)), return_exceptions=True)
        held = [c for c in flood if not isinstance(c, BaseException)]
        try:
            # A refused connection may still finish its client-side handshake before the reset
            # arrives, so count what the server holds, not what the client thinks.
            for _ in range(100):
                if srv.active_connections == 32:
                    break
                await asyncio.sleep(0.05)
            assert srv.active_connections == 32 and srv.refused_connections >= 520 - 32
            await schedule_operation(factory, DEVICE, "install", key_type="ec256")
            session = CapfPhoneSession(phone)
            reason = await capf_client_run("127.0.0.1", srv.port, phone_ctx, session, timeout=10,
                                           local_addr=("127.0.0.3", 0))
            assert reason == Reason.OK and phone.lsc_cert is not None
        finally:
            for _reader, writer in held:
                writer.close()
        for _ in range(100):
            if srv.active_connections == 0:
                break
            await asyncio.sleep(0.05)
        other = make_phone(capf, manufacturer, device="SEP00000000CC01")
        await schedule_operation(factory, other.device_name, "install", key_type="ec256")
        reason = await capf_client_run("127.0.0.1", srv.port, phone_ctx, CapfPhoneSession(other), timeout=10,
                                       local_addr=("127.0.0.2", 0))
        assert reason == Reason.OK

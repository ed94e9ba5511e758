"""The capf service's acceptor processes (issue 15): the CAPF port on every core while the service
stays the only writer of CAPF state; a dead acceptor comes back; no acceptor outlives the service.
Real processes, real TLS, the real SQL store (SQLite)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from ccmsec.aio.capf import capf_client_run, capf_phone_ssl_context
from ccmsec.db.base import Base
from ccmsec.db.capf import SqlCapfStore, schedule_operation
from ccmsec.pki.lsc import ensure_capf_ca, verify_lsc_chain
from ccmsec.wire.capf import CapfPhoneSession, KeySpec, PhoneCredentials, Reason
from ccmsec_capf.acceptors import AcceptorPool

pytestmark = pytest.mark.timeout(120)

HOST = "127.0.0.1"
LIMITS = dict(handshake_timeout=10.0, idle_timeout=10.0, session_timeout=30.0, max_connections=256,
              max_per_source=256)
CONFIG = {"refusal": None, "issuer_mode": "capf", "retry_delay": 600, "validity_days": 30}


@pytest.fixture
async def db(tmp_path):
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'ccmsec.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield async_sessionmaker(engine, expire_on_commit=False), tmp_path / "ccmsec.db"
    await engine.dispose()


@pytest.fixture
def capf(tmp_path):
    pki = tmp_path / "pki"
    return pki, ensure_capf_ca(pki, key_kind="ec256")


async def _enrol_all(port, capf_cert, devices, *, sources=8):
    ctx = capf_phone_ssl_context(capf_cert)
    keys = [KeySpec.parse("ec256").generate() for _ in devices]
    phones = [PhoneCredentials(d, capf_certificate=capf_cert, pending_key=k) for d, k in zip(devices, keys)]
    reasons = await asyncio.gather(*(
        capf_client_run(HOST, port, ctx, CapfPhoneSession(p), timeout=30, local_addr=(f"127.0.9.{i % sources + 1}", 0))
        for i, p in enumerate(phones)))
    return phones, reasons


def _open_files(pid: int) -> set[str]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            out.add(os.readlink(fd))
        except OSError:
            pass
    return out


async def test_acceptors_serve_the_port_and_only_the_service_writes(db, capf):
    """40 phones over two acceptor processes: every LSC issued, recorded once, by the service's
    store; the acceptors never open the database (single writer, CHK-7)."""
    factory, db_path = db
    pki, ca = capf
    devices = [f"SEP0000000AC{i:03X}" for i in range(40)]
    for d in devices:
        await schedule_operation(factory, d, "install", key_type="ec256")
    seen = []
    pool = AcceptorPool(2, host=HOST, port=0, pki_dir=pki, store=SqlCapfStore(factory), node="capf",
                        limits=LIMITS, config=CONFIG, on_sessions=seen.extend)
    port = await pool.start()
    try:
        assert len(pool.pids) == 2
        phones, reasons = await _enrol_all(port, ca.cert, devices)
        assert reasons == [Reason.OK] * len(devices)
        for p in phones:
            verify_lsc_chain(p.lsc_cert, ca.cert, device_name=p.device_name)
        for pid in pool.pids:
            assert not any(str(db_path) in f for f in _open_files(pid)), "an acceptor opened the database"
        records = await SqlCapfStore(factory).certificates()
        assert sorted(r.device_name for r in records) == devices and {r.outcome for r in records} == {"installed"}
        assert {r.der for r in records} == {p.lsc_cert.public_bytes(serialization.Encoding.DER) for p in phones}
        for _ in range(40):  # session records arrive in batches
            if len(seen) == len(devices):
                break
            await asyncio.sleep(0.05)
        assert sorted(r.device_name for r in seen) == devices and {r.end_reason for r in seen} == {Reason.OK}
    finally:
        await pool.close()
    assert pool.pids == []


async def test_configuration_changes_reach_every_acceptor(db, capf):
    """CHK-2 through acceptors: refused while not activated (with the reason), served once the
    service pushes the activation."""
    factory, _ = db
    pki, ca = capf
    await schedule_operation(factory, "SEP0000000AD001", "install", key_type="ec256")
    pool = AcceptorPool(2, host=HOST, port=0, pki_dir=pki, store=SqlCapfStore(factory), node="capf",
                        limits=LIMITS, config={**CONFIG, "refusal": "CAPF is not activated (test)"},
                        on_sessions=lambda r: None)
    port = await pool.start()
    try:
        ctx = capf_phone_ssl_context(ca.cert)
        for source in ("127.0.9.1", "127.0.9.2", "127.0.9.3", "127.0.9.4"):  # lands on both acceptors
            session = CapfPhoneSession(PhoneCredentials("SEP0000000AD001", capf_certificate=ca.cert))
            assert await capf_client_run(HOST, port, ctx, session, local_addr=(source, 0)) == Reason.INVALID_ELEMENT
            assert session.end_info == "CAPF is not activated (test)"
        pool.configure(refusal=None)
        await asyncio.sleep(0.2)
        session = CapfPhoneSession(PhoneCredentials("SEP0000000AD001", capf_certificate=ca.cert))
        assert await capf_client_run(HOST, port, ctx, session) == Reason.OK
    finally:
        await pool.close()


async def test_a_killed_acceptor_is_started_again_and_the_port_keeps_serving(db, capf):
    factory, _ = db
    pki, ca = capf
    devices = [f"SEP0000000AE{i:03X}" for i in range(10)]
    for d in devices:
        await schedule_operation(factory, d, "install", key_type="ec256")
    pool = AcceptorPool(2, host=HOST, port=0, pki_dir=pki, store=SqlCapfStore(factory), node="capf",
                        limits=LIMITS, config=CONFIG, on_sessions=lambda r: None)
    port = await pool.start()
    try:
        victim = pool.pids[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while len(pool.pids) < 2 or victim in pool.pids:
            assert time.monotonic() < deadline, f"acceptor not restarted: {pool.pids}"
            await asyncio.sleep(0.1)
        _, reasons = await _enrol_all(port, ca.cert, devices)
        assert reasons == [Reason.OK] * len(devices)
    finally:
        await pool.close()


def test_acceptors_die_with_the_service_even_on_sigkill(tmp_path, capf):
    """No acceptor outlives its service: kill -9 of the owner, and they are gone (parent-death
    signal and the channel's EOF)."""
    pki, _ = capf
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio, sys
        from pathlib import Path
        from ccmsec_capf.acceptors import AcceptorPool

        class Store:
            pass

        async def main():
            pool = AcceptorPool(2, host="127.0.0.1", port=0, pki_dir=Path({str(pki)!r}), store=Store(), node="capf",
                                limits={LIMITS!r}, config={CONFIG!r}, on_sessions=lambda r: None)
            await pool.start()
            print(" ".join(map(str, pool.pids)), flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
    """))
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in owner.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids):
            assert time.monotonic() < deadline, f"acceptors outlived the service: {[p for p in pids if _alive(p)]}"
            time.sleep(0.05)
    finally:
        if owner.poll() is None:
            owner.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def test_later8_legacy_tls_reaches_every_acceptor(db, tmp_path):
    """LATER-8 through acceptors: a TLS 1.0 AES128-SHA phone is refused on 3804 until the service
    pushes the cluster's legacy TLS; then every acceptor takes it, and TLS 1.2 still works."""
    import ssl
    import warnings

    factory, _ = db
    pki = tmp_path / "pki-rsa"
    ca = ensure_capf_ca(pki)  # RSA, as the service's: AES128-SHA is an RSA key-exchange suite
    pool = AcceptorPool(2, host=HOST, port=0, pki_dir=pki, store=SqlCapfStore(factory), node="capf",
                        limits=LIMITS, config=CONFIG, on_sessions=lambda r: None)
    port = await pool.start()

    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.load_verify_locations(cadata=ca.cert.public_bytes(serialization.Encoding.PEM).decode())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1
    old.set_ciphers("AES128-SHA:@SECLEVEL=0")

    async def handshake(ctx, source):
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(
                HOST, port, ssl=ctx, server_hostname=HOST, local_addr=(source, 0)), 10)
        except (ssl.SSLError, ConnectionError) as exc:
            return exc
        version = writer.get_extra_info("ssl_object").version()
        writer.close()
        return version

    sources = [f"127.0.9.{i}" for i in range(1, 9)]  # spread over both acceptors
    try:
        before = [await handshake(old, s) for s in sources]
        assert all(isinstance(r, (ssl.SSLError, ConnectionError)) for r in before), before
        pool.configure(legacy_tls=True)
        await asyncio.sleep(0.3)
        assert [await handshake(old, s) for s in sources] == ["TLSv1"] * len(sources)
        modern = capf_phone_ssl_context(ca.cert)
        assert await handshake(modern, sources[0]) in ("TLSv1.2", "TLSv1.3")
    finally:
        await pool.close()


def test_acceptor_logs_go_straight_to_the_service_json_stream(tmp_path, capf):
    """A capturing service (as deployed) gives its acceptors its JSON stream as their standard
    error: each phone's session line goes out from the acceptor itself, not through the service's
    capture pipe (whose reader thread costs the single writer's process a read, a JSON check and a
    write per line). The acceptor captures its own fd 2, so its native output is still JSON."""
    pki, ca = capf
    info = tmp_path / "owner.txt"
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio, os
        from pathlib import Path
        from ccmsec.runtime.logs import json_log_fd, setup_logging
        from ccmsec.wire.capf import OperationLookup
        from ccmsec_capf.acceptors import AcceptorPool

        class Store:
            async def find_operation(self, device_name):
                return OperationLookup("unknown")

        async def main():
            setup_logging("capf", "node9", "INFO", capture=True)
            pool = AcceptorPool(2, host="127.0.0.1", port=0, pki_dir=Path({str(pki)!r}), store=Store(), node="node9",
                                limits={LIMITS!r}, config={CONFIG!r}, on_sessions=lambda r: None)
            port = await pool.start()
            Path({str(info)!r}).write_text(" ".join(map(str, [port, json_log_fd(), *pool.pids])))
            await asyncio.sleep(60)

        asyncio.run(main())
    """))
    owner = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (info.exists() and info.read_text()):
            assert owner.poll() is None and time.monotonic() < deadline, "the owner did not start its acceptors"
            time.sleep(0.05)
        port, json_fd, *acceptors = (int(x) for x in info.read_text().split())
        stream = os.readlink(f"/proc/{owner.pid}/fd/{json_fd}")
        capture_pipe = os.readlink(f"/proc/{owner.pid}/fd/2")
        assert stream != capture_pipe
        for pid in acceptors:
            own_fd2 = os.readlink(f"/proc/{pid}/fd/2")
            assert own_fd2 not in (stream, capture_pipe), "the acceptor's native output is not captured by itself"
            assert stream in _open_files(pid), "the acceptor does not write to the service's JSON stream"

        ctx = capf_phone_ssl_context(ca.cert)
        key = KeySpec.parse("ec256").generate()
        phone = PhoneCredentials("SEP0000000ACFFF", capf_certificate=ca.cert, pending_key=key)
        reason = asyncio.run(capf_client_run(HOST, port, ctx, CapfPhoneSession(phone), timeout=30))
        assert reason == Reason.UNKNOWN_DEVICE
    finally:
        owner.kill()
        _, err = owner.communicate(timeout=10)
    records = [json.loads(line) for line in err.splitlines() if line.strip()]  # every line is JSON
    sessions = [r for r in records if "SEP0000000ACFFF" in r.get("msg", "")]
    assert sessions and sessions[0]["node"].startswith("node9/acceptor-"), records[-5:]

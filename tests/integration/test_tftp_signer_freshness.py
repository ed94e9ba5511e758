"""Device configurations are built when they change and served from memory, and nothing stale is
ever served (AUTH-3, AUTH-4, AUTH-4): the tftp-signer service in process with real NATS, the migrated
SQLite publisher database and a real UDP TFTP listener.

The cache is kept exact by change events, a poll, and a version check on every request (the
owners' commit counters, ccmsec/db/commits.py): these tests lose the event on purpose (nothing is
published) and stop the poll, so only the version check stands between a commit and a stale file.
The last test gives each owner a database file of its own, as the local runner does."""

from __future__ import annotations

import asyncio
import time

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy import event as sa_event
from sqlalchemy import update

from ccmsec.db.capf import schedule_operation
from ccmsec.db.commits import counter_path, install_commit_counter
from ccmsec.db.devices import Device
from ccmsec.db.lines import DevicePool
from ccmsec.db.ownership import install_write_guard
from ccmsec.formats.cnfxml import parse_cnf_xml
from ccmsec.formats.sgn import parse_sgn, verify_sgn
from ccmsec.wire.tftp import ERR_FILE_NOT_FOUND, TftpError
from ccmsec_tftp_signer import main as tftp_main
from tests.integration.test_tftp_signer_service import DEVICE, running_service

pytestmark = pytest.mark.timeout(90)

SGN = f"{DEVICE}.cnf.xml.sgn"


@pytest.fixture
def no_poll(monkeypatch):
    """The poll that builds ahead when an event is lost: stopped, so only the version check is left."""
    monkeypatch.setattr(tftp_main, "POLL_SECONDS", 3600.0)


class Statements:
    """Counts SQL statements the service runs (its own engine, every connection)."""

    def __init__(self, engine):
        self.count = 0
        self.engine = engine.sync_engine
        sa_event.listen(self.engine, "before_cursor_execute", self._on)

    def _on(self, *args):
        self.count += 1

    def close(self):
        sa_event.remove(self.engine, "before_cursor_execute", self._on)


def _owner_write(r, role: str, sql: str, *params) -> None:
    """A commit by another process of the owner `role` (its own engine on its database: the owner's
    write guard and commit counter) that bumps no version column and sends no event."""
    engine = sa.create_engine(f"sqlite:///{make_url(r.owners.url_of(role)).database}")
    install_write_guard(engine, role)
    counter = install_commit_counter(engine, counter_path(r.data, role))
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(sql, params)
    finally:
        engine.dispose()
        counter.close()


async def _wait(predicate, timeout=15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return False


async def _settled(store, quiet=1.0, timeout=20.0) -> int:
    """The signed count once nothing has been signed for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last, since = store.signed, time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        if store.signed != last or store._inflight or store._jobs:
            last, since = store.signed, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return last
    raise AssertionError("signing never settled")


async def test_auth4_rrq_is_a_memory_lookup_and_a_commit_is_seen_by_the_next_request(tmp_path, nats_server,
                                                                                       no_poll):
    """AUTH-4: with nothing committed, a device config request runs no SQL (one version check, a
    memory look-up); a commit by another connection with no event and no version bump is seen by
    the very next request, signed, never the old file."""
    async with running_service(tmp_path, nats_server) as r:
        await r.add_device(mode="authenticated")
        await r.set_mode("mixed")
        first = await r.get(SGN)
        devices = r.svc.content.devices
        await devices.current()  # the full re-read that commit started behind the request is done
        statements = Statements(r.svc.engine)
        try:
            checks, rereads = r.svc.detector.checks, devices.point_reads + devices.revalidations
            for _ in range(20):
                assert await r.get(SGN) == first
                assert await r.get(f"{DEVICE}.cnf.xml") == parse_sgn(first).payload
            assert statements.count == 0, "a request with nothing committed ran SQL"
            assert devices.point_reads + devices.revalidations == rereads, \
                "a request with nothing committed re-read the inputs"
            assert r.svc.detector.checks >= checks + 40  # one version check per request
            # Bad case: the row changes under us, version column untouched, no event.
            _owner_write(r, "callmanager", "UPDATE devices SET web_access = 0 WHERE name = ?", DEVICE)
            fresh = parse_sgn(await r.get(SGN))
            # The commit made that request re-read (its own device at once, the rest behind it).
            assert devices.point_reads + devices.revalidations > rereads
        finally:
            statements.close()
        verify_sgn(fresh, r.cert)
        assert parse_cnf_xml(fresh.payload).hardening.web_access is False
        assert parse_cnf_xml(parse_sgn(first).payload).hardening.web_access is True


async def test_auth4_lost_event_the_version_check_never_serves_the_stale_entry(tmp_path, nats_server, no_poll):
    """AUTH-4: the signed file is in memory; a change is committed and its event is lost (never
    published) and the poll is stopped, so the stale entry is still held: the next request still
    gets the new file (pool, CAPF operation, device mode, deletion, cluster mode alike)."""
    async with running_service(tmp_path, nats_server) as r:
        await r.add_device(mode="authenticated")
        await r.set_mode("mixed")
        old = await r.get(SGN)
        store = r.svc.content.store
        assert store._memory[("cluster1", f"{DEVICE}.cnf.xml")][1] == old  # held in memory

        async with r.as_owner("callmanager") as db, db() as s, s.begin():
            s.add(DevicePool(name="branch", cm_group="127.0.0.41,127.0.0.42", srst=""))
        async with r.as_owner("callmanager") as db, db() as s, s.begin():
            await s.execute(update(Device).where(Device.name == DEVICE).values(device_pool="branch"))
        assert store._memory[("cluster1", f"{DEVICE}.cnf.xml")][1] == old  # stale entry still held
        config = parse_cnf_xml(parse_sgn(await r.get(SGN)).payload)
        assert [m.host for m in config.call_managers] == ["127.0.0.41", "127.0.0.42"]

        _owner_write(r, "callmanager", "UPDATE device_pools SET cm_group = ? WHERE name = 'branch'", "127.0.0.43")
        config = parse_cnf_xml(parse_sgn(await r.get(SGN)).payload)
        assert [m.host for m in config.call_managers] == ["127.0.0.43"]

        async with r.as_owner("capf") as capf_db:
            await schedule_operation(capf_db, DEVICE, "install", auth_mode="null", key_type="ec256")
        config = parse_cnf_xml(parse_sgn(await r.get(SGN)).payload)
        assert config.capf.operation == "install"

        await r.update_device(security_mode="encrypted")
        assert parse_cnf_xml(parse_sgn(await r.get(SGN)).payload).security_mode == "encrypted"

        await r.set_mode("non-secure")  # AUTH-3: nothing signed from the next request on
        with pytest.raises(TftpError) as info:
            await r.get(SGN)
        assert info.value.code == ERR_FILE_NOT_FOUND
        await r.set_mode("mixed")
        assert parse_sgn(await r.get(SGN)).header.file_name == SGN

        _owner_write(r, "capf", "DELETE FROM capf_operations WHERE device_name = ?", DEVICE)
        _owner_write(r, "callmanager", "DELETE FROM devices WHERE name = ?", DEVICE)
        for name in (SGN, f"{DEVICE}.cnf.xml"):
            with pytest.raises(TftpError) as info:
                await r.get(name)
            assert info.value.code == ERR_FILE_NOT_FOUND, name


async def test_auth4_changes_are_built_and_signed_before_any_request(tmp_path, nats_server, monkeypatch):
    """Built when they change, not when requested: with the event lost, the poll's version check
    finds the commit and signs the new file before any phone asks; the request is then a cache hit."""
    monkeypatch.setattr(tftp_main, "POLL_SECONDS", 0.2)
    async with running_service(tmp_path, nats_server) as r:
        names = [f"SEP00112233C{i:03X}" for i in range(40)]
        for name in names:
            await r.add_device(name=name, mode="authenticated")
        await r.set_mode("mixed")
        store = r.svc.content.store
        assert await _wait(lambda: store.signed >= len(names)), "mode change not signed ahead"
        signed = await _settled(store)  # the static files are signed after the configs
        _owner_write(r, "callmanager", "UPDATE devices SET pc_port = 0 WHERE name = ?", names[7])
        assert await _wait(lambda: store.signed == signed + 1), "the change was not signed ahead"
        hits = store.hits
        fresh = parse_sgn(await r.get(f"{names[7]}.cnf.xml.sgn"))
        assert (store.hits, store.signed) == (hits + 1, signed + 1)
        assert parse_cnf_xml(fresh.payload).hardening.pc_port is False
        verify_sgn(fresh, r.cert)


async def test_auth4_each_owner_in_its_own_file_a_commit_is_seen_by_the_next_request(tmp_path, nats_server,
                                                                                     no_poll):
    """The local runner's layout: ctl-provider, callmanager, capf and tftp-signer each keep a
    database file of their own (ccmsec/cluster/databases.py), and tftp-signer opens none of the
    owners' — a data_version of its own file would never move. Each owner's commit (no event, no
    version bump, the poll stopped) is still seen by the very next request, through the owners'
    commit counters; nothing committed: no re-read."""
    async with running_service(tmp_path, nats_server, separate=True) as r:
        files = {role: make_url(r.owners.url_of(role)).database for role in ("ctl-provider", "callmanager", "capf")}
        assert len(set(files.values()) | {r.svc.engine.url.database}) == 4
        await r.add_device(mode="authenticated")
        await r.set_mode("mixed")
        first = await r.get(SGN)
        devices = r.svc.content.devices
        await devices.current()
        rereads = devices.point_reads + devices.revalidations
        for _ in range(10):
            assert await r.get(SGN) == first
        assert devices.point_reads + devices.revalidations == rereads

        _owner_write(r, "callmanager", "UPDATE devices SET web_access = 0 WHERE name = ?", DEVICE)
        fresh = parse_sgn(await r.get(SGN))
        verify_sgn(fresh, r.cert)
        assert parse_cnf_xml(fresh.payload).hardening.web_access is False

        async with r.as_owner("capf") as capf_db:
            await schedule_operation(capf_db, DEVICE, "install", auth_mode="null", key_type="ec256")
        assert parse_cnf_xml(parse_sgn(await r.get(SGN)).payload).capf.operation == "install"

        _owner_write(r, "ctl-provider", "UPDATE cluster_settings SET value = 'non-secure' "
                     "WHERE key = 'security_mode'")
        with pytest.raises(TftpError) as info:  # AUTH-3: non-secure, nothing signed
            await r.get(SGN)
        assert info.value.code == ERR_FILE_NOT_FOUND

        # tftp-signer's own file holds no owner's table
        with sa.create_engine(f"sqlite:///{r.svc.engine.url.database}").connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
        assert tables == {"alembic_version", "event_outbox", "handled_events"}, tables


async def test_auth4_version_check_sees_every_commit_on_postgresql():
    """The version check on PostgreSQL (the WAL position): a commit by another connection always
    changes it. (The shared test database also sees other commits, so only this direction — the
    one that keeps stale files out — is asserted.)"""
    import uuid

    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from ccmsec_tftp_signer.devicefiles import ChangeDetector
    from tests.integration.test_admin_support import POSTGRES_URL, _postgres_reachable

    reason = await _postgres_reachable()
    if reason:
        pytest.skip(reason)
    table = f"t_tftp_{uuid.uuid4().hex[:12]}"
    engine = create_async_engine(POSTGRES_URL)
    detector = ChangeDetector(engine)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f'CREATE TABLE "{table}" (v integer)'))
        for value in range(3):
            before = await detector.token()
            async with engine.begin() as conn:
                await conn.execute(text(f'INSERT INTO "{table}" VALUES ({value})'))
            assert await detector.token() != before
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP TABLE IF EXISTS "{table}"'))
        detector.close()
        await engine.dispose()

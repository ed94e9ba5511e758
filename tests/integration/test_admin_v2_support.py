"""Fixtures for the round-two administration API tests: the real app over HTTPS on 127.0.0.1,
on a database migrated by the real Alembic branches (every table: registrations, lines, pools,
CTL files, CAPF), with an in-memory event seam and a real call-control `Registry` as the reset
tracker. The migrated database is built once per session and copied per test (migrating costs
about a second)."""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
from pathlib import Path

import pytest

from ccmsec.db import registry as registry_db
from ccmsec.db.devices import Device
from ccmsec.runtime.database import open_database
from ccmsec_callmanager.admin import (
    AdminServer,
    MemoryEvents,
    create_account,
    create_admin_app,
    ensure_admin_account,
    ensure_https_certificate,
)
from ccmsec_callmanager.registry import Registry
from tests.integration.test_admin_support import READONLY_PASSWORD, Stack, server_context
from tests.ownerdb import owner_cluster_state

NODE = "cm-a"  # the call-control node serving the API in these tests


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory) -> Path:
    """A database file with every migration branch applied, made once."""
    import asyncio

    path = tmp_path_factory.mktemp("admin-v2-template") / "ccmsec.db"

    async def build():
        engine, _ = await open_database(f"sqlite:///{path}")
        await engine.dispose()

    asyncio.run(build())
    return path


@contextlib.asynccontextmanager
async def v2_stack(data_dir: Path, *, template: Path | None = None, capf_channel=None, ctl_channel=None,
                   tracker: Registry | None = None, with_readonly: bool = True,
                   call_control_nodes: frozenset[str] | None = None):
    """A running API on `data_dir` (its ccmsec.db copied from `template` first, if given);
    `call_control_nodes` as the service passes its CCMSEC_CLUSTER_CALL_CONTROL_NODES (RST-9)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if template is not None:
        shutil.copyfile(template, data_dir / "ccmsec.db")
    engine, sessionmaker = await open_database(f"sqlite:///{data_dir / 'ccmsec.db'}")
    try:
        pw_file = await ensure_admin_account(sessionmaker, data_dir)
        if with_readonly:
            await create_account(sessionmaker, "viewer", READONLY_PASSWORD, "readonly")
        certfile, keyfile = ensure_https_certificate(data_dir, "127.0.0.1")
        events = MemoryEvents()
        app = create_admin_app(sessionmaker, events=events, data_dir=data_dir,
                               capf_channel=capf_channel, ctl_channel=ctl_channel, reset_tracker=tracker,
                               call_control_nodes=call_control_nodes,
                               cluster_state=owner_cluster_state(sessionmaker))  # ctl-provider's answer
        server = AdminServer(app, "127.0.0.1", 0, certfile, keyfile)
        await server.start()
        stack = Stack(data_dir, sessionmaker, events, server, app, certfile,
                      pw_file.read_text().strip(), server_context(certfile))
        try:
            yield stack
        finally:
            for c in stack.clients:
                await c.aclose()
            await server.stop()
    finally:
        await engine.dispose()


@pytest.fixture
async def tracker() -> Registry:
    return Registry(NODE)


@pytest.fixture
async def v2(tmp_path, migrated_db, tracker):
    async with v2_stack(tmp_path / "data", template=migrated_db, tracker=tracker) as s:
        yield s


async def add_devices(stack: Stack, *specs: tuple[str, str, str]) -> None:
    """(name, model, security_mode) rows, written directly (the API's own checks are tested apart)."""
    async with stack.sessionmaker() as session, session.begin():
        for name, model, mode in specs:
            session.add(Device(name=name, model=model, security_mode=mode))


def registration_row(device: str, *, since: dt.datetime | None = None, mode: str = "non-secure") -> dict:
    return {"device": device, "model": "7960", "security_mode": mode, "address": "127.0.0.1:40000",
            "reported_address": "127.0.0.1", "nat_suspected": False,
            "transport_port": 2000 if mode == "non-secure" else 2443, "cipher": "",
            "certificate_fingerprint": "", "certificate_kind": "",
            "since": since or dt.datetime.now(dt.timezone.utc)}


async def register(stack: Stack, node: str, *devices: str, since: dt.datetime | None = None) -> None:
    """What a call-control node's registry mirror writes when phones register there."""
    async with stack.sessionmaker() as session, session.begin():
        await registry_db.apply_changes(session, node, [registration_row(d, since=since) for d in devices], [])

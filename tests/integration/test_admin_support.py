"""Shared fixtures for the administration API tests: a real database (SQLite file, or PostgreSQL
in its own schema) and the real app served over HTTPS by uvicorn on 127.0.0.1 (ephemeral port)."""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

import ccmsec.db.admin  # noqa: F401  (registers the tables)
import ccmsec.db.lines  # noqa: F401  (device_pools)
import ccmsec.db.devices  # noqa: F401
from ccmsec.db.admin import AuditEntry
from ccmsec.db.base import Base
from ccmsec.db.devices import SETTING_CTL_VERSION, SETTING_SECURITY_MODE, set_setting
from ccmsec_callmanager.admin import (
    AdminServer,
    MemoryEvents,
    create_account,
    create_admin_app,
    ensure_admin_account,
    ensure_https_certificate,
)
from tests.ownerdb import owner_cluster_state
from sqlalchemy import select

POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
MY_TABLES = ["devices", "cluster_settings", "admin_accounts", "admin_tokens", "audit_log"]
READONLY_PASSWORD = "read-only-password-123"


async def _postgres_reachable() -> str | None:
    try:
        import asyncpg

        conn = await asyncio.wait_for(
            asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test"), timeout=3)
        await conn.close()
        return None
    except Exception as exc:  # any failure means: not available here
        return f"PostgreSQL at 127.0.0.1:5432/test not reachable: {type(exc).__name__}: {exc}"


class Database:
    """A fresh database with our tables: a SQLite file, or a throw-away PostgreSQL schema."""

    def __init__(self, backend: str, tmp_path: Path):
        self.backend = backend
        self.tmp_path = tmp_path
        self.schema = f"t_admin_{uuid.uuid4().hex[:12]}"
        self.engine: AsyncEngine | None = None

    async def __aenter__(self) -> AsyncEngine:
        if self.backend == "sqlite":
            self.engine = create_async_engine(f"sqlite+aiosqlite:///{self.tmp_path / 'ccmsec.db'}")
        else:
            reason = await _postgres_reachable()
            if reason:
                pytest.skip(reason)
            admin = create_async_engine(POSTGRES_URL)
            async with admin.begin() as conn:
                await conn.execute(text(f'CREATE SCHEMA "{self.schema}"'))
            await admin.dispose()
            self.engine = create_async_engine(
                POSTGRES_URL, connect_args={"server_settings": {"search_path": self.schema}})
        # and device_pools: a device names only a pool that exists (POST/PATCH /devices check it)
        tables = [Base.metadata.tables[t] for t in (*MY_TABLES, "device_pools")]
        async with self.engine.begin() as conn:
            await conn.run_sync(lambda c: Base.metadata.create_all(c, tables=tables))
        return self.engine

    async def __aexit__(self, *exc) -> None:
        assert self.engine is not None
        await self.engine.dispose()
        if self.backend == "postgres":
            admin = create_async_engine(POSTGRES_URL)
            async with admin.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA "{self.schema}" CASCADE'))
            await admin.dispose()


@dataclass
class Stack:
    data_dir: Path
    sessionmaker: async_sessionmaker
    events: MemoryEvents
    server: AdminServer
    app: object
    certfile: Path
    admin_password: str
    ssl_context: ssl.SSLContext
    clients: list = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, auth=None, headers=None) -> httpx.AsyncClient:
        c = httpx.AsyncClient(base_url=self.url, verify=self.ssl_context, auth=auth,
                              headers=headers, timeout=10)
        self.clients.append(c)
        return c

    def admin(self) -> httpx.AsyncClient:
        return self.client(auth=("admin", self.admin_password))

    async def token_client(self, username: str, password: str) -> httpx.AsyncClient:
        r = await self.client().post("/api/v1/login",
                                     json={"username": username, "password": password})
        assert r.status_code == 200, r.text
        return self.client(headers={"Authorization": f"Bearer {r.json()['token']}"})

    async def audit_rows(self) -> list[AuditEntry]:
        async with self.sessionmaker() as session:
            return list((await session.scalars(select(AuditEntry).order_by(AuditEntry.id))).all())

    async def set_ctl_present(self) -> None:
        """What the CTL client records once it has run: a CTL version and mixed mode."""
        async with self.sessionmaker() as session, session.begin():
            await set_setting(session, SETTING_CTL_VERSION, "1")
            await set_setting(session, SETTING_SECURITY_MODE, "mixed")

    def write_endpoints(self) -> None:
        run = self.data_dir / "run"
        run.mkdir(parents=True, exist_ok=True)
        (run / "endpoints.json").write_text(json.dumps({"admin_url": self.url}))


def server_context(certfile: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certfile))
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx


async def start_stack(tmp_path: Path, backend: str = "sqlite", *, with_readonly: bool = True):
    """Async context manager yielding a running Stack."""
    import contextlib

    @contextlib.asynccontextmanager
    async def _cm():
        data_dir = tmp_path / "data"
        data_dir.mkdir(exist_ok=True)
        async with Database(backend, tmp_path) as engine:
            sessionmaker = async_sessionmaker(engine)
            pw_file = await ensure_admin_account(sessionmaker, data_dir)
            if with_readonly:
                await create_account(sessionmaker, "viewer", READONLY_PASSWORD, "readonly")
            certfile, keyfile = ensure_https_certificate(data_dir, "127.0.0.1")
            events = MemoryEvents()
            app = create_admin_app(sessionmaker, events=events, data_dir=data_dir,
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

    return _cm()


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch):
    """Real argon2id, with small costs so each test does not spend seconds hashing."""
    from argon2 import PasswordHasher

    from ccmsec_callmanager.admin import auth

    monkeypatch.setattr(auth, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    monkeypatch.setattr(auth, "_dummy_hash", None)


@pytest.fixture
async def stack(tmp_path, request):
    backend = getattr(request, "param", "sqlite")
    async with await start_stack(tmp_path, backend) as s:
        yield s


def config_changes(events: MemoryEvents) -> list[tuple[list[str], str]]:
    """(devices, what) of each config.changed body, in order."""
    return [(list(b.devices), b.what) for b in events.bodies("config.changed")]


def device_resets(events: MemoryEvents) -> list[tuple[list[str], str, str]]:
    """(devices, rule, kind) of each device.reset body; kind is "reset" or "restart"."""
    from ccmsec_proto import events_pb2

    return [(list(b.devices), b.rule, events_pb2.ResetKind.Name(b.kind).lower())
            for b in events.bodies("device.reset")]


def assert_json_error(response: httpx.Response, status: int, rule: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    # RFC 9457 problem details, naming the rule that refused (issue 16)
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert body.get("rule") == rule, body
    assert body["status"] == status and body["detail"] == body["error"] and body["title"], body
    assert body["type"] == (f"urn:ccmsec:rule:{rule}" if rule else "about:blank"), body
    return body

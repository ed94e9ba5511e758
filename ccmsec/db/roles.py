"""One PostgreSQL role per owner (issue 9 §5, enforced by the database, not only in-process).

The write guard (`ccmsec/db/ownership.py`) keeps a well-behaved service out of other owners'
tables; a compromised container runs whatever code it likes. So on PostgreSQL (compose) each
service that keeps state connects as a role of its own, `ccmsec_<role>`, whose search path is a
schema of the same name that it alone owns: its migrations create its tables there, and its own
`alembic_version`, `event_outbox` and `handled_events` — so another role cannot even see them
(no USAGE on the schema), let alone write an outbox row its relay would publish under the owner's
NATS identity. The roles own nothing else: no CREATE on `public`, no superuser, no role creation.

`DB_ROLES` are the roles that connect: the table owners (`OWN_BRANCHES`) and tftp-signer, which
owns no table but keeps its outbox and uses the database's commit position (`pg_current_wal_lsn`)
as its change token. The others (keymanager, srtp-gateway, srst, phone-sim) get no database
credential at all: their bus bookkeeping is a SQLite file in their own private folder.

`provision()` is run by the bootstrap (superuser) credential — compose's one-shot `db-init` step —
and is idempotent: roles, passwords (as SCRAM verifiers: the step never sees a role's password),
schemas and grants are set again on every start.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from ccmsec.db.ownership import OWN_BRANCHES

DB_ROLES: tuple[str, ...] = (*OWN_BRANCHES, "tftp-signer")
ROLE_PREFIX = "ccmsec_"
_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
_VERIFIER = re.compile(r"SCRAM-SHA-256\$[0-9]+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+")
SCRAM_ITERATIONS = 4096  # PostgreSQL's default (scram_iterations)


class RoleError(Exception):
    """Provisioning cannot go on: one clear line."""


def uses_database(role: str) -> bool:
    """Whether `role` gets a PostgreSQL credential (compose) rather than a private SQLite file."""
    return role in DB_ROLES


def pg_role(role: str, prefix: str = ROLE_PREFIX) -> str:
    """The PostgreSQL role (and schema) of a ccmsec role: `ccmsec_callmanager`, `ccmsec_ctl_provider`, …"""
    name = prefix + role.replace("-", "_")
    if not _NAME.fullmatch(name):
        raise RoleError(f"not a usable PostgreSQL role name: {name!r}")
    return name


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """What PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5802/7677): handing it the verifier
    sets the password without the password itself ever reaching the provisioning step."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _literal(value: str) -> str:
    """A verifier as an SQL literal: DDL takes no bind parameters, so only the verifier's own
    alphabet is accepted (no quote can get in)."""
    if not _VERIFIER.fullmatch(value):
        raise RoleError("not a SCRAM-SHA-256 verifier")
    return f"'{value}'"


def provision_statements(database: str, verifiers: dict[str, str], prefix: str = ROLE_PREFIX,
                         existing: set[str] = frozenset()) -> list[str]:
    """The statements that make (or set again) each role in `verifiers` (ccmsec role → SCRAM
    verifier), its schema and its only grants, in `database`."""
    if not _NAME.fullmatch(database):
        raise RoleError(f"not a usable database name: {database!r}")
    stmts = [
        # nobody but the owner and the roles below may connect or create anything shared
        f'REVOKE ALL ON DATABASE "{database}" FROM PUBLIC',
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
    ]
    for role, verifier in sorted(verifiers.items()):
        name = pg_role(role, prefix)
        verb = "ALTER" if name in existing else "CREATE"
        stmts += [
            f'{verb} ROLE "{name}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION '
            f"NOBYPASSRLS PASSWORD {_literal(verifier)}",
            f'ALTER ROLE "{name}" IN DATABASE "{database}" SET search_path = "{name}"',
            f'GRANT CONNECT ON DATABASE "{database}" TO "{name}"',
            f'CREATE SCHEMA IF NOT EXISTS "{name}" AUTHORIZATION "{name}"',
            f'ALTER SCHEMA "{name}" OWNER TO "{name}"',
            f'REVOKE ALL ON SCHEMA "{name}" FROM PUBLIC',
        ]
    return stmts


async def provision(admin_url: str, verifiers: dict[str, str], prefix: str = ROLE_PREFIX) -> list[str]:
    """Create or update the per-owner roles on the server `admin_url` (a superuser or a role with
    CREATEROLE that owns the database). Returns the PostgreSQL role names."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError, OperationalError

    from ccmsec.runtime.database import create_engine

    for verifier in verifiers.values():  # bad input refused before anything is touched
        _literal(verifier)
    engine = create_engine(admin_url)
    try:
        async with engine.begin() as conn:  # all or nothing
            # one provisioning at a time (two init runs at once)
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": 0x6363_6D72})
            database = await conn.scalar(text("SELECT current_database()"))
            names = [pg_role(r, prefix) for r in verifiers]
            existing = set((await conn.execute(text("SELECT rolname FROM pg_roles WHERE rolname = ANY(:n)"),
                                               {"n": names})).scalars())
            for stmt in provision_statements(database, verifiers, prefix, existing):
                await conn.exec_driver_sql(stmt)  # DDL: no bind parameters (the verifier has colons)
            return names
    except (OperationalError, DBAPIError, OSError) as exc:
        raise RoleError(f"cannot provision the database roles: {getattr(exc, 'orig', exc)}") from None
    finally:
        await engine.dispose()

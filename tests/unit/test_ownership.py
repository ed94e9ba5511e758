"""Issue 9 §5: one owner per piece of state — no service writes another owner's tables, none reads
them straight from the database (beyond the shrinking list `REMAINING_CROSS_OWNER_READS`), and each
role migrates only its own schema branches.

Proved these ways:
* every table of the publisher database has exactly one owner (`ccmsec/db/ownership.py`), so a new
  table without one fails here;
* statically: each service package (`services/<role>/`) is read (AST) for the writes it can make —
  rows it constructs, `insert`/`update`/`delete` of a mapped class, and calls of the write helpers
  of `ccmsec/db/` (whose own writes are found the same way, transitively) — and none touches a
  table another role owns;
* at run time: the write guard every service installs on its engine refuses a write to another
  owner's table before it reaches the database (nothing written), and lets the owner's through;
* reads, statically: every table a service package touches — mapped classes and helpers imported
  from `ccmsec/db/` (helpers followed transitively), and SQL text naming a table — is its own, a
  runtime table, or a declared remaining read; shared modules of `ccmsec/` touch runtime tables only;
* migrations, on a real SQLite file and on PostgreSQL: each role's migration creates exactly the
  tables it owns (plus the shared runtime branch), all roles together the whole schema, in any order.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import pkgutil
import re
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy import inspect as sa_inspect

import ccmsec.db
from ccmsec.cluster.topology import ROLES
from ccmsec.db import ownership
from ccmsec.db.base import Base
from ccmsec.runtime.database import create_engine, migrate, open_database
from tests.localpg import PG_ADMIN, needs_pg

ROOT = Path(__file__).resolve().parents[2]

for _mod in pkgutil.iter_modules(ccmsec.db.__path__):  # every table module registers its tables
    if _mod.name not in ("migrations",):
        importlib.import_module(f"ccmsec.db.{_mod.name}")

CLASS_TABLE = {m.class_.__name__: m.local_table.name for m in Base.registry.mappers}
WRITE_CALLS = {"insert", "update", "delete"}


def test_every_table_has_exactly_one_owner_and_owners_are_roles():
    tables = set(Base.metadata.tables)
    unowned = tables - set(ownership.OWNERS) - ownership.RUNTIME_TABLES
    assert not unowned, f"tables without an owner in ccmsec/db/ownership.py: {sorted(unowned)}"
    assert set(ownership.OWNERS) <= tables, set(ownership.OWNERS) - tables
    assert set(ownership.OWNERS.values()) <= set(ROLES)
    assert ownership.OWNERS["cluster_settings"] == "ctl-provider"  # the mode, ctl_version, legacy TLS
    assert {ownership.OWNERS[t] for t in ("devices", "lines", "device_pools")} == {"callmanager"}
    assert {ownership.OWNERS[t] for t in ("capf_operations", "capf_certificates", "capf_settings")} == {"capf"}


# --- static: what each service package can write --------------------------------------------------

def _name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _direct_writes(tree: ast.AST) -> dict[str, set[str]]:
    """function name -> tables it writes directly ("<module>" for module level code)."""
    out: dict[str, set[str]] = {}

    def visit(node, owner):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.setdefault(child.name, set())
                visit(child, child.name)
                continue
            if isinstance(child, ast.Call):
                fn = _name(child.func)
                if fn in CLASS_TABLE:  # a row constructed: it is made to be written
                    out.setdefault(owner, set()).add(CLASS_TABLE[fn])
                elif fn in WRITE_CALLS and child.args and _name(child.args[0]) in CLASS_TABLE:
                    out.setdefault(owner, set()).add(CLASS_TABLE[_name(child.args[0])])
            visit(child, owner)

    visit(tree, "<module>")
    return out


def _calls(tree: ast.AST) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[fn.name] = {_name(c.func) for c in ast.walk(fn) if isinstance(c, ast.Call)} - {None}
    return out


def db_helper_writes() -> dict[str, set[str]]:
    """Write helpers of ccmsec/db/*.py -> the tables each writes, helpers calling helpers included."""
    writes: dict[str, set[str]] = {}
    calls: dict[str, set[str]] = {}
    for path in sorted((ROOT / "ccmsec" / "db").glob("*.py")):
        tree = ast.parse(path.read_text())
        for fn, tables in _direct_writes(tree).items():
            writes.setdefault(fn, set()).update(tables)
        for fn, called in _calls(tree).items():
            calls.setdefault(fn, set()).update(called)
    changed = True
    while changed:
        changed = False
        for fn, called in calls.items():
            extra = set().union(*(writes.get(c, set()) for c in called)) - writes.get(fn, set())
            if extra:
                writes.setdefault(fn, set()).update(extra)
                changed = True
    writes.pop("<module>", None)
    return {fn: tables for fn, tables in writes.items() if tables and not fn.startswith("_")}


def _service_writes(package: Path, helpers: dict[str, set[str]], root: Path = ROOT) -> dict[str, set[str]]:
    """table -> where ("file:line") for every write the service package's code can make."""
    found: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text())
        imported = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                    and (n.module or "").startswith("ccmsec.db") for a in n.names}
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            fn = _name(call.func)
            tables: set[str] = set()
            if fn in CLASS_TABLE:
                tables.add(CLASS_TABLE[fn])
            elif fn in WRITE_CALLS and call.args and _name(call.args[0]) in CLASS_TABLE:
                tables.add(CLASS_TABLE[_name(call.args[0])])
            elif fn in helpers and (fn in imported or isinstance(call.func, ast.Attribute)):
                tables |= helpers[fn]
            for table in tables:
                found.setdefault(table, set()).add(f"{path.relative_to(root)}:{call.lineno}")
    return found


def test_the_static_check_sees_the_write_helpers():
    helpers = db_helper_writes()
    assert helpers["set_setting"] == {"cluster_settings"}
    assert helpers["record_ctl"] == {"ctl_files", "cluster_settings"}
    assert helpers["save_tftp_registry"] == {"tftp_clusters"}
    assert helpers["set_capf_setting"] == {"capf_settings"}


def test_no_service_writes_another_owners_tables():
    helpers = db_helper_writes()
    services = sorted(p for p in (ROOT / "services").iterdir() if (p / "pyproject.toml").exists())
    assert {p.name for p in services} == set(ROLES)
    violations = []
    written_by: dict[str, set[str]] = {}
    for service in services:
        role = service.name
        for table, where in _service_writes(service, helpers).items():
            written_by.setdefault(table, set()).add(role)
            if not ownership.may_write(role, table):
                violations.append(f"{role} writes {table} (owner {ownership.owner_of(table)}): "
                                  f"{', '.join(sorted(where))}")
    assert not violations, "\n".join(violations)
    # The check really sees writes: each owner's own ones are found.
    assert written_by["cluster_settings"] == {"ctl-provider"}
    assert written_by["lines"] == {"callmanager"} and written_by["audit_log"] == {"callmanager"}
    assert "capf" in written_by["capf_settings"]


def test_the_static_check_catches_a_cross_owner_write(tmp_path):
    """The bad case: a service module that writes cluster_settings (as CAPF did) is caught."""
    rogue = tmp_path / "ccmsec_capf"
    rogue.mkdir()
    (rogue / "settings.py").write_text(
        "from ccmsec.db.devices import set_setting, ClusterSetting\n"
        "async def store(s):\n"
        "    await set_setting(s, 'capf.activated', '1')\n"
        "    s.add(ClusterSetting(key='x', value='y'))\n")
    found = _service_writes(rogue, db_helper_writes(), root=tmp_path)
    assert set(found) == {"cluster_settings"} and len(found["cluster_settings"]) == 2
    assert not ownership.may_write("capf", "cluster_settings")


# --- run time: the write guard ---------------------------------------------------------------------

@pytest.mark.parametrize("statement,table", [
    ("INSERT INTO cluster_settings (key, value) VALUES (?, ?)", "cluster_settings"),
    ('INSERT INTO "audit_log" (actor) VALUES ($1)', "audit_log"),
    ("UPDATE devices SET security_mode=? WHERE devices.id = ?", "devices"),
    ("DELETE FROM capf_operations WHERE id = ?", "capf_operations"),
    ("INSERT OR REPLACE INTO lines VALUES (1)", "lines"),
    ("SELECT * FROM cluster_settings", None),
    ("PRAGMA journal_mode=WAL", None),
])
def test_the_guard_reads_the_written_table(statement, table):
    assert ownership.written_table(statement) == table


def test_the_guard_refuses_cross_owner_writes_and_lets_the_owner_write(tmp_path):
    async def scenario():
        url = f"sqlite+aiosqlite:///{tmp_path / 'ccmsec.db'}"
        engines = {}
        try:
            for role in ("capf", "callmanager", "ctl-provider", "tftp-signer"):
                engine, db = await open_database(url)
                ownership.install_write_guard(engine, role)
                engines[role] = (engine, db)
            insert = text("INSERT INTO cluster_settings (key, value, updated_at) "
                          "VALUES ('legacy_tls', 'on', CURRENT_TIMESTAMP)")
            for role in ("capf", "callmanager", "tftp-signer"):
                with pytest.raises(ownership.CrossOwnerWrite) as refused:
                    async with engines[role][1]() as s, s.begin():
                        await s.execute(insert)
                assert f"{role} may not write table 'cluster_settings'" in str(refused.value)
                assert "its owner is ctl-provider" in str(refused.value)
            async with engines["ctl-provider"][1]() as s:
                assert await s.scalar(select(func.count()).select_from(text("cluster_settings"))
                                      .where(text("key = 'legacy_tls'"))) == 0  # nothing written
            async with engines["ctl-provider"][1]() as s, s.begin():
                await s.execute(insert)  # the owner writes
            with pytest.raises(ownership.CrossOwnerWrite, match="ctl-provider may not write table 'devices'"):
                async with engines["ctl-provider"][1]() as s, s.begin():
                    await s.execute(text("UPDATE devices SET description = 'x'"))
            # Runtime tables: every service keeps its own rows there.
            async with engines["tftp-signer"][1]() as s, s.begin():
                await s.execute(text("INSERT INTO handled_events (consumer, event_id) VALUES ('t', 'e')"))
        finally:
            for engine, _ in engines.values():
                await engine.dispose()

    asyncio.run(scenario())


# --- one typed vocabulary (issue 9 §5) -------------------------------------------------------------

def test_security_mode_words_and_their_proto_numbers_live_in_ccmsec_domain_only():
    """The spelling "non-secure" and the proto enum members of the security and cluster modes are
    named in `ccmsec/domain.py` only (migrations, frozen in time, aside): every other module goes
    through its converters (`parse`, `.value`, `to_proto`, `from_proto`, `proto_text`)."""
    import re

    word = re.compile(r"""["']non-secure["']""")
    members = re.compile(r"_pb2\.(?:NON_SECURE|AUTHENTICATED|ENCRYPTED|CLUSTER_NON_SECURE|CLUSTER_MIXED)\b"
                         r"|DeviceSecurityMode\.Name\(|ClusterSecurityMode\.Name\(")
    found = []
    for top in ("ccmsec", "services"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "ccmsec/domain.py" or "/migrations/" in rel or rel.endswith("_pb2.py"):
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if word.search(code) or members.search(code):
                    found.append(f"{rel}:{number}: {line.strip()}")
    assert not found, "use ccmsec.domain's converters instead:\n" + "\n".join(found)


# --- static: what each service package reads ------------------------------------------------------

SQL_TABLE = re.compile(r'\b(?:FROM|JOIN|INTO|UPDATE|TABLE)\s+"?(\w+)"?', re.IGNORECASE)
KNOWN_TABLES = set(Base.metadata.tables)


def _sql_tables(node: ast.AST) -> set[str]:
    """Tables named by SQL text in string constants under `node`."""
    out: set[str] = set()
    for c in ast.walk(node):
        if isinstance(c, ast.Constant) and isinstance(c.value, str):
            out |= {t.lower() for t in SQL_TABLE.findall(c.value) if t.lower() in KNOWN_TABLES}
    return out


def db_helper_reads() -> dict[str, set[str]]:
    """Functions and (non-mapped) classes of ccmsec/db/*.py -> every table they touch, through the
    helpers they call too."""
    touches: dict[str, set[str]] = {}
    uses: dict[str, set[str]] = {}
    for path in sorted((ROOT / "ccmsec" / "db").glob("*.py")):
        if path.name == "ownership.py":
            continue  # the owner table itself names every table
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if isinstance(node, ast.ClassDef) and node.name in CLASS_TABLE:
                continue
            names = {_name(n) for n in ast.walk(node) if isinstance(n, (ast.Name, ast.Attribute))} - {None}
            touches.setdefault(node.name, set()).update(
                {CLASS_TABLE[n] for n in names if n in CLASS_TABLE} | _sql_tables(node))
            uses.setdefault(node.name, set()).update(names - {node.name})
    changed = True
    while changed:
        changed = False
        for fn, used in uses.items():
            extra = set().union(*(touches.get(u, set()) for u in used)) - touches[fn]
            if extra:
                touches[fn] |= extra
                changed = True
    return {fn: tables for fn, tables in touches.items() if tables}


def _touched(package: Path, helpers: dict[str, set[str]], root: Path = ROOT) -> dict[str, set[str]]:
    """table -> where ("file:line") for every table the package's code reads or writes: names it
    imports from ccmsec.db modules (mapped classes, helpers), `<ccmsec.db module>.<name>`, SQL text."""
    found: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text())
        imported: dict[str, str] = {}  # local name -> name in ccmsec.db.<module>
        modules: set[str] = set()      # local names of ccmsec.db modules
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("ccmsec.db"):
                for a in n.names:
                    if n.module == "ccmsec.db":
                        modules.add(a.asname or a.name)
                    else:
                        imported[a.asname or a.name] = a.name

        def tables_of(name: str) -> set[str]:
            return {CLASS_TABLE[name]} if name in CLASS_TABLE else helpers.get(name, set())

        for node in ast.walk(tree):
            tables: set[str] = set()
            if isinstance(node, ast.Name) and node.id in imported:
                tables = tables_of(imported[node.id])
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
                tables = tables_of(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                tables = _sql_tables(node)
            for table in tables:
                found.setdefault(table, set()).add(f"{path.relative_to(root)}:{node.lineno}")
    return found


def _cross_owner(role: str, tables) -> set[str]:
    return {t for t in tables if not ownership.may_write(role, t)}  # own, runtime or migration: fine


def test_the_static_check_sees_the_read_helpers():
    helpers = db_helper_reads()
    assert helpers["cluster_security_mode"] == {"cluster_settings"}
    assert helpers["ctl_exists"] == {"cluster_settings"}
    assert helpers["lines_of"] == {"lines"}
    assert {"capf_operations", "capf_certificates"} <= helpers["SqlCapfStore"]


def test_no_service_reads_another_owners_tables():
    """Every cross-owner read found is a declared remaining one, and every declared one is still
    there (an entry outlives its read only by mistake: remove it)."""
    helpers = db_helper_reads()
    services = sorted(p for p in (ROOT / "services").iterdir() if (p / "pyproject.toml").exists())
    found: dict[tuple[str, str], set[str]] = {}
    touched_by: dict[str, set[str]] = {}
    for service in services:
        role = service.name
        touched = _touched(service, helpers)
        for table in touched:
            touched_by.setdefault(table, set()).add(role)
        for table in _cross_owner(role, touched):
            found[(role, table)] = touched[table]
    declared = ownership.REMAINING_CROSS_OWNER_READS
    new = {k: v for k, v in found.items() if k not in declared}
    assert not new, "cross-owner reads (ask the owner over gRPC or follow its events):\n" + "\n".join(
        f"{role} reads {table} (owner {ownership.owner_of(table)}): {', '.join(sorted(where))}"
        for (role, table), where in sorted(new.items()))
    gone = set(declared) - set(found)
    assert not gone, f"no longer read, remove from REMAINING_CROSS_OWNER_READS: {sorted(gone)}"
    assert all(ownership.owner_of(t) not in (None, r) and why for (r, t), why in declared.items())
    # Removed reads stay removed: CAPF learns whether a CTL exists from the CTL Provider (CERT-3).
    assert ("capf", "cluster_settings") not in found
    # The administration API's cluster view asks the CTL Provider for the CTL (GetCurrentCtl).
    assert ("callmanager", "ctl_files") not in found
    # CAPF looks devices up at their owner, call control (CallManager/GetDevice, ListDevices).
    assert ("capf", "devices") not in found
    # The TFTP server asks call control (GetDeviceConfigs), CAPF (GetPendingOperations) and the CTL
    # Provider (GetSecurityMode) for what it builds files from: it reads no table of theirs.
    assert not {t for (r, t) in found if r == "tftp-signer"}
    assert not declared, "issue 9 §5: no cross-owner read is left"
    # The check really sees reads: each owner's own ones are found.
    assert {"callmanager"} <= touched_by["devices"] and "capf" not in touched_by["devices"]
    assert "ctl-provider" in touched_by["cluster_settings"] and "capf" in touched_by["capf_operations"]


def test_shared_modules_touch_runtime_tables_only():
    """Code of ccmsec/ that services import (runtime, wire, policy, CLI...) reads no owned table:
    a cross-owner read cannot hide in a shared module."""
    helpers = db_helper_reads()
    found: dict[str, set[str]] = {}
    for top in sorted(p for p in (ROOT / "ccmsec").iterdir() if p.is_dir() and p.name != "db"):
        for table, where in _touched(top, helpers).items():
            found.setdefault(table, set()).update(where)
    owned = {t: w for t, w in found.items() if t in ownership.OWNERS}
    assert not owned, owned
    assert "handled_events" in found  # the check sees the runtime's own table


def test_the_static_check_catches_a_cross_owner_read(tmp_path):
    """The bad case: tftp-signer reading CAPF's operations and ctl-provider's settings, three ways."""
    rogue = tmp_path / "ccmsec_tftp_signer"
    rogue.mkdir()
    (rogue / "content.py").write_text(
        "from sqlalchemy import select\n"
        "from ccmsec.db.capf import CapfOperation as Ops\n"
        "from ccmsec.db.devices import cluster_security_mode\n"
        "from ccmsec.db import cluster as cluster_db\n"
        "from ccmsec.domain import CapfOperation\n"   # the enum, not the table: not a read
        "async def read(s, conn):\n"
        "    await s.execute(select(Ops.id))\n"
        "    await cluster_security_mode(s)\n"
        "    await s.get(cluster_db.CtlFileRow, 1)\n"
        "    conn.execute('SELECT key FROM \"tftp_clusters\" WHERE 1')\n"
        "    return CapfOperation.INSTALL\n")
    found = _touched(rogue, db_helper_reads(), root=tmp_path)
    assert _cross_owner("tftp-signer", found) == {"capf_operations", "cluster_settings", "ctl_files",
                                                  "tftp_clusters"}
    assert found["capf_operations"] == {"ccmsec_tftp_signer/content.py:7"}  # where it is used


# --- migrations: each role its own branches -------------------------------------------------------

def _owned(role: str) -> set[str]:
    return {t for t, owner in ownership.OWNERS.items() if owner == role}


async def _tables(engine) -> set[str]:
    async with engine.connect() as conn:
        return await conn.run_sync(lambda c: set(sa_inspect(c).get_table_names()))


async def _versions(engine) -> set[str]:
    async with engine.connect() as conn:
        return set((await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars())


def _script_branches() -> set[str]:
    from alembic.script import ScriptDirectory

    from ccmsec.runtime.database import _alembic_config

    script = ScriptDirectory.from_config(_alembic_config())
    return {label for rev in script.walk_revisions() for label in (rev.branch_labels or ())}


def test_every_branch_has_one_owner():
    branches = _script_branches()
    assigned = [b for bs in ownership.OWN_BRANCHES.values() for b in bs] + [ownership.RUNTIME_BRANCH]
    assert sorted(assigned) == sorted(branches), "a schema branch without exactly one owner"
    assert set(ownership.OWN_BRANCHES) <= set(ROLES)
    for role in ROLES:
        assert ownership.migration_branches(role)[-1] == ownership.RUNTIME_BRANCH


def test_a_service_migrates_its_own_branches_at_start():
    import inspect

    from ccmsec.runtime.service import Service

    assert "open_database(s.db_url, self.role)" in inspect.getsource(Service.run)


async def _each_role_alone(url_of) -> None:
    for role in ROLES:
        engine = create_engine(await url_of(role))
        try:
            await migrate(engine, role)
            assert await _tables(engine) == _owned(role) | ownership.RUNTIME_TABLES | {"alembic_version"}, role
        finally:
            await engine.dispose()


async def _all_roles_together(url: str, order) -> None:
    engine = create_engine(url)
    try:
        for role in order:
            await migrate(engine, role)
        assert await _tables(engine) == KNOWN_TABLES | {"alembic_version"}
        versions = await _versions(engine)
        await migrate(engine)  # every branch to its head: nothing was left for it to do
        assert await _versions(engine) == versions and await _tables(engine) == KNOWN_TABLES | {"alembic_version"}
        async with engine.connect() as conn:  # MODE-1: ctl-provider's branch seeds the mode
            assert (await conn.execute(text("SELECT value FROM cluster_settings WHERE key = 'security_mode'"))
                    ).scalar() == "non-secure"
    finally:
        await engine.dispose()


def test_each_role_migrates_only_its_own_tables_sqlite(tmp_path):
    async def url_of(role):
        return f"sqlite:///{tmp_path / role / 'ccmsec.db'}"

    async def scenario():
        await _each_role_alone(url_of)
        # One file for all (the default): any start order gives the whole schema, each branch once.
        await _all_roles_together(f"sqlite:///{tmp_path / 'one.db'}", reversed(ROLES))
        await _all_roles_together(f"sqlite:///{tmp_path / 'two.db'}", ("tftp-signer", "capf", "callmanager",
                                                                         "ctl-provider"))

    asyncio.run(scenario())


def test_a_database_made_before_the_split_keeps_its_cluster_settings(tmp_path):
    """cluster_settings used to come with callmanager's core branch: on such a database
    ctl-provider's branch finds it and keeps its rows."""
    url = f"sqlite:///{tmp_path / 'ccmsec.db'}"

    async def scenario():
        engine = create_engine(url)
        try:
            await migrate(engine, "callmanager")
            async with engine.begin() as conn:  # what core_0001 made before the split
                await conn.execute(text("CREATE TABLE cluster_settings (key VARCHAR(64) NOT NULL, "
                                        "value VARCHAR(1024) NOT NULL, updated_at DATETIME NOT NULL, "
                                        "CONSTRAINT pk_cluster_settings PRIMARY KEY (key))"))
                await conn.execute(text("INSERT INTO cluster_settings VALUES ('security_mode', 'mixed', "
                                        "CURRENT_TIMESTAMP), ('ctl_version', '3', CURRENT_TIMESTAMP)"))
            await migrate(engine, "ctl-provider")
            async with engine.connect() as conn:
                rows = dict((await conn.execute(text("SELECT key, value FROM cluster_settings"))).all())
            assert rows == {"security_mode": "mixed", "ctl_version": "3"}
            assert "cluster_0004" in await _versions(engine)  # its branch at its head, past cluster_0002
        finally:
            await engine.dispose()

    asyncio.run(scenario())


@pytest.mark.postgres
@needs_pg
def test_each_role_migrates_only_its_own_tables_postgres():
    import uuid

    made: list[str] = []

    async def database() -> str:
        name = f"ccmsec_own_{uuid.uuid4().hex[:10]}"
        admin = create_engine(PG_ADMIN)
        try:
            async with admin.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            await admin.dispose()
        made.append(name)
        return f"postgresql://postgres@127.0.0.1:5432/{name}"

    async def scenario():
        try:
            await _each_role_alone(lambda role: database())
            await _all_roles_together(await database(), ("capf", "tftp-signer", "callmanager", "ctl-provider"))
        finally:
            admin = create_engine(PG_ADMIN)
            async with admin.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                for name in made:
                    await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            await admin.dispose()

    asyncio.run(scenario())

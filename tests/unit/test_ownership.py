"""Issue 9 §5: one owner per piece of state — no service writes another owner's tables.

Proved three ways:
* every table of the publisher database has exactly one owner (`ccmsec/db/ownership.py`), so a new
  table without one fails here;
* statically: each service package (`services/<role>/`) is read (AST) for the writes it can make —
  rows it constructs, `insert`/`update`/`delete` of a mapped class, and calls of the write helpers
  of `ccmsec/db/` (whose own writes are found the same way, transitively) — and none touches a
  table another role owns;
* at run time: the write guard every service installs on its engine refuses a write to another
  owner's table before it reaches the database (nothing written), and lets the owner's through.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import pkgutil
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

import ccmsec.db
from ccmsec.cluster.topology import ROLES
from ccmsec.db import ownership
from ccmsec.db.base import Base
from ccmsec.runtime.database import open_database

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

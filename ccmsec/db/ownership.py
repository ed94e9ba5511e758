"""One owner per piece of state (issue 9 §5): which service is the only writer of each table.

Every table of the publisher database has exactly one owning role here. Other services ask the
owner over gRPC or follow its events; they never write its tables. The rule is enforced three times:

* at run time, `install_write_guard(engine, role)` (called by `Service.run` on the service's
  engine) refuses, before it reaches the database, any INSERT/UPDATE/DELETE a service issues
  against a table it does not own — `CrossOwnerWrite`, naming the table, its owner and the writer;
* by the operating system or the database: in the local runner each owner has a SQLite file only
  its uid opens (ccmsec/cluster/databases.py), in compose a PostgreSQL role and schema
  (ccmsec/db/roles.py);
* statically, `tests/unit/test_ownership.py` checks every table has an owner here and that no
  service package writes (constructs rows of, inserts into, updates, deletes from, or calls a
  write helper of) a table another role owns.

`RUNTIME_TABLES` are the bus plumbing every service keeps its own rows in (keyed by the
consumer / the publishing node): each service writes only rows it is named in.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

CTL_PROVIDER, CALLMANAGER, CAPF = "ctl-provider", "callmanager", "capf"

OWNERS: dict[str, str] = {
    # cluster mode, CTL and the shared-TFTP list
    "cluster_settings": CTL_PROVIDER,
    "ctl_files": CTL_PROVIDER,
    "ctl_provider_nodes": CTL_PROVIDER,
    "tftp_clusters": CTL_PROVIDER,
    "ctl_take_backs": CTL_PROVIDER,
    # devices, lines, pools and what call control keeps about them; the administration API runs
    # inside callmanager, so its accounts and the audit log are callmanager's too
    "devices": CALLMANAGER,
    "lines": CALLMANAGER,
    "device_pools": CALLMANAGER,
    "registrations": CALLMANAGER,
    "speed_dials": CALLMANAGER,
    "line_forwards": CALLMANAGER,
    "regions": CALLMANAGER,
    "device_regions": CALLMANAGER,
    "mobility_users": CALLMANAGER,
    "mobility_logins": CALLMANAGER,
    "device_softkeys": CALLMANAGER,
    "pool_softkeys": CALLMANAGER,
    "srst_references": CALLMANAGER,
    "admin_accounts": CALLMANAGER,
    "admin_tokens": CALLMANAGER,
    "audit_log": CALLMANAGER,
    # CAPF operations, certificates and settings
    "capf_operations": CAPF,
    "capf_certificates": CAPF,
    "capf_settings": CAPF,
}

# Signed files are tftp-signer's: they live in its own folder (DATA/tftp), no table.
FILE_OWNERS: dict[str, str] = {"tftp": "tftp-signer"}

RUNTIME_TABLES = frozenset({"handled_events", "event_outbox"})
MIGRATION_TABLES = frozenset({"alembic_version"})

# The schema branches (`branch_labels` in ccmsec/db/migrations/versions) each owner migrates at
# start: only the tables it owns. `tests/unit/test_ownership.py` proves every table a branch creates
# belongs to that branch's owner.
OWN_BRANCHES: dict[str, tuple[str, ...]] = {
    CTL_PROVIDER: ("cluster",),
    CALLMANAGER: ("core", "lines", "calls", "registry", "srst"),
    CAPF: ("capf",),
}
# The bus plumbing (RUNTIME_TABLES) is one shared branch, not one per owner: every service keeps its
# own rows there (keyed by consumer / publishing node), so every role migrates it — idempotent,
# serialised by the migration lock (ccmsec/runtime/database.py).
RUNTIME_BRANCH = "runtime"


def migration_branches(role: str) -> tuple[str, ...]:
    """What `role` migrates at start: its own branches and the shared runtime branch."""
    return (*OWN_BRANCHES.get(role, ()), RUNTIME_BRANCH)


# Reads of another owner's tables that are still made straight from the database, each with the
# owner's API that is to replace it. Nothing else may read across owners: tests/unit/test_ownership.py
# finds every table each service package touches and fails on a cross-owner read not listed here —
# and on an entry whose read is gone, so this list only shrinks. Empty: every service asks the owner
# (the last ones, tftp-signer's reads of the mode, devices, pools, SRST references and pending CAPF
# operations, became CtlProvider/GetSecurityMode, CallManager/GetDeviceConfigs and
# Capf/GetPendingOperations — issue 9 §5).
REMAINING_CROSS_OWNER_READS: dict[tuple[str, str], str] = {}


class CrossOwnerWrite(PermissionError):
    """A service tried to write a table another service owns."""


def owner_of(table: str) -> str | None:
    return OWNERS.get(table)


def may_write(role: str, table: str) -> bool:
    if table in RUNTIME_TABLES or table in MIGRATION_TABLES:
        return True
    return OWNERS.get(table) == role


# The table a DML statement writes: SQLAlchemy renders `INSERT INTO t`, `UPDATE t`, `DELETE FROM t`
# (quoted when needed) on both SQLite and PostgreSQL.
_DML = re.compile(
    r'^\s*(?:WITH\b.*?\)\s*)?(?:INSERT(?:\s+OR\s+\w+)?\s+INTO|UPDATE(?:\s+OR\s+\w+)?|DELETE\s+FROM|REPLACE\s+INTO)'
    r'\s+(?:"?\w+"?\.)?"?(\w+)"?',
    re.IGNORECASE | re.DOTALL)


def written_table(statement: str) -> str | None:
    m = _DML.match(statement)
    return m.group(1).lower() if m else None


def check_write(role: str, statement: str) -> None:
    table = written_table(statement)
    if table is None or may_write(role, table):
        return
    owner = OWNERS.get(table)
    raise CrossOwnerWrite(
        f"{role} may not write table {table!r}: "
        + (f"its owner is {owner}; ask {owner} over gRPC" if owner else "the table has no owner")
        + " (issue 9 §5, ccmsec/db/ownership.py)")


def install_write_guard(engine, role: str) -> None:
    """Refuse every write of `engine` (async or sync) to a table `role` does not own."""
    # Imported here, not at the top: the `ccmsec` command imports this module (through
    # ccmsec/db/roles.py, for compose's per-owner roles) and never installs a guard, and
    # SQLAlchemy is over a third of its start-up.
    from sqlalchemy import event

    sync: Engine = getattr(engine, "sync_engine", engine)

    def before(conn, cursor, statement, parameters, context, executemany):
        check_write(role, statement)

    event.listen(sync, "before_cursor_execute", before)
    sync.ccmsec_writer = role  # engines derived from this one (sync_sqlite_engine) inherit it

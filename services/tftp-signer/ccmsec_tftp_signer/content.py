"""What the TFTP server serves, built from the publisher database and the cluster's settings.

- `SEP<MAC>.cnf.xml` per device (`device_configs`): security mode, CallManager group, SRST
  information, CAPF settings with the pending operation, hardening (DEV-4) and the firmware load.
- the static files (`write_static_files`): ring list, ring tone, locale files, XMLDefault.cnf.xml —
  written once into the cluster folder if missing; an administrator may replace them.

A device in a device pool (`device_pools`, kept by callmanager) gets the pool's CallManager group
and SRST reference; otherwise the cluster's own callmanager and srst services.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ccmsec import firmware
from ccmsec.db.base import table_exists
from ccmsec.db.capf import CapfOperation
from ccmsec.db.devices import HARDENING_FIELDS, Device, cluster_security_mode
from ccmsec.db.lines import DevicePool
from ccmsec.db.srst import SrstReference
from ccmsec.domain import CapfAuthMode, ClusterMode, DeviceSecurityMode
from ccmsec.domain import CapfOperation as Operation  # CapfOperation here is CAPF's table
from ccmsec.formats.cnfxml import (
    CallManagerMember, CapfSettings, DefaultConfig, DeviceConfig, Hardening, SrstInfo,
)
from ccmsec.fsutil import atomic_write

log = logging.getLogger("ccmsec.tftp-signer")

PENDING_CAPF_STATES = ("pending", "in_progress")
HARDENING = HARDENING_FIELDS  # DEV-4: one list of hardening settings, kept with the table


@dataclass(frozen=True)
class ClusterEndpoints:
    """Where the phones of this cluster find call control, CAPF and SRST."""

    callmanagers: tuple[str, ...]
    sccp_port: int = 2000
    sccp_tls_port: int = 2443
    capf_host: str = ""
    capf_port: int = 3804
    srst_host: str | None = None
    load_server: str | None = None

    def members(self, hosts: tuple[str, ...] | None = None) -> tuple[CallManagerMember, ...]:
        return tuple(CallManagerMember(h, self.sccp_port, self.sccp_tls_port)
                     for h in (hosts or self.callmanagers)[:3])


def _capf_settings(op: dict | None, endpoints: ClusterEndpoints) -> tuple[CapfAuthMode, CapfSettings]:
    if op is None:
        return CapfAuthMode.NULL, CapfSettings(endpoints.capf_host, endpoints.capf_port)
    key = op["key_type"]
    if key.startswith("ec"):
        curve = {"ec256": "P-256", "ec384": "P-384", "ec521": "P-521"}.get(key, "P-256")
        key_fields = {"key_type": "EC", "key_size": None, "curve": curve}
    else:
        size = int(key[3:]) if key[3:].isdigit() else 2048
        key_fields = {"key_type": "RSA", "key_size": size, "curve": None}
    # The authentication string is stored only as a hash (CAPF); the user keys it in on the phone.
    return (CapfAuthMode.parse(op["auth_mode"]),
            CapfSettings(endpoints.capf_host, endpoints.capf_port, operation=Operation.parse(op["operation"]),
                         **key_fields))


def srst_info(pool: dict | None, endpoints: ClusterEndpoints) -> SrstInfo:
    """The pool's SRST reference (`reference`: its row, CERT-6 certificate included), a bare host
    reference, or the cluster's own srst service; `Disable` when there is none."""
    reference = (pool or {}).get("reference")
    if reference is not None:
        secure = bool(reference["secure"] and reference["certificate"])
        return SrstInfo("Enable", (reference["host"],), (reference["sccp_port"],), is_secure=secure,
                        secure_ports=(reference["sccp_tls_port"],),
                        certificate=reference["certificate"] if secure else None)
    srst_host = (pool or {}).get("srst") or endpoints.srst_host
    return SrstInfo("Enable", (srst_host,), (endpoints.sccp_port,)) if srst_host else SrstInfo("Disable")


def build_device_config(device: dict, capf_op: dict | None, pool: dict | None,
                        endpoints: ClusterEndpoints) -> DeviceConfig:
    """Pure: one device row (+ its pending CAPF operation and pool) -> its DeviceConfig."""
    hosts = tuple(pool["callmanagers"]) if pool and pool.get("callmanagers") else None
    srst = srst_info(pool, endpoints)
    auth_mode, capf = _capf_settings(capf_op, endpoints)
    try:
        load = firmware.load_name(device["model"])
    except firmware.FirmwareError:
        load = None
    return DeviceConfig(
        device_name=device["name"],
        model=device["model"],
        security_mode=DeviceSecurityMode.parse(device["security_mode"]),
        call_managers=endpoints.members(hosts),
        srst=srst,
        capf_auth_mode=auth_mode,
        capf=capf,
        load_information=load,
        load_server=endpoints.load_server,
        hardening=Hardening(**{f: bool(device[f]) for f in HARDENING}),
    )


_DEVICE_COLUMNS = (Device.name, Device.model, Device.security_mode, Device.device_pool,
                   Device.config_version, *(getattr(Device, f) for f in HARDENING))
_DEVICE_NAMES = tuple(c.key for c in _DEVICE_COLUMNS)


async def _pending_capf(session: AsyncSession, names: list[str] | None) -> dict[str, dict]:
    if not await table_exists(session, "capf_operations"):
        return {}  # CAPF has not created its schema yet: nothing pending
    stmt = (select(CapfOperation.device_name, CapfOperation.operation, CapfOperation.auth_mode,
                   CapfOperation.key_type, CapfOperation.id)
            .where(CapfOperation.state.in_(PENDING_CAPF_STATES)).order_by(CapfOperation.id))
    if names is not None:
        stmt = stmt.where(CapfOperation.device_name.in_(names))
    return {row.device_name: row._asdict() for row in await session.execute(stmt)}  # latest wins


async def _pools(session: AsyncSession, names: set[str]) -> dict[str, dict]:
    """Device pools (callmanager's `device_pools`): name -> {callmanagers: [...], srst: host,
    reference: the `srst_references` row the pool names, if any}."""
    if not names or not await table_exists(session, "device_pools"):
        return {}
    rows = (await session.execute(select(DevicePool.name, DevicePool.cm_group, DevicePool.srst)
                                  .where(DevicePool.name.in_(sorted(names))))).all()
    wanted = sorted({r.srst for r in rows if r.srst})
    references = {}
    if wanted and await table_exists(session, "srst_references"):
        references = {ref.name: {"host": ref.host, "sccp_port": ref.sccp_port,
                                 "sccp_tls_port": ref.sccp_tls_port, "secure": ref.secure,
                                 "certificate": ref.certificate}
                      for ref in (await session.scalars(
                          select(SrstReference).where(SrstReference.name.in_(wanted)))).all()}
    return {r.name: {"callmanagers": [h for h in r.cm_group.split(",") if h][:3], "srst": r.srst or None,
                     "reference": references.get(r.srst)}
            for r in rows}


@dataclass(frozen=True)
class DeviceSource:
    name: str
    config_version: int
    config: DeviceConfig


@dataclass(frozen=True, eq=False)
class DeviceInputs:
    """Everything one SEP<MAC>.cnf.xml is built from (with the endpoints, fixed for the process):
    equal inputs build byte-identical files. `key` holds the raw values read; two inputs are equal
    when their keys are (compared by value, not by a version column)."""

    name: str
    device: dict
    capf: dict | None
    pool: dict | None
    key: tuple

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DeviceInputs) and self.key == other.key

    __hash__ = None  # type: ignore[assignment]


def _frozen(value):
    if isinstance(value, dict):
        return tuple((k, _frozen(v)) for k, v in value.items())
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


async def read_inputs(session: AsyncSession, names: list[str] | None = None) -> list[DeviceInputs]:
    """The inputs of `names` (all SEP devices when None), read in one session (one snapshot)."""
    if not await table_exists(session, "devices"):
        return []  # callmanager has not created its schema yet: no device
    stmt = select(*_DEVICE_COLUMNS).order_by(Device.name)
    if names is not None:
        stmt = stmt.where(Device.name.in_(names))
    devices = [row._asdict() for row in await session.execute(stmt)]
    if not devices:
        return []
    capf = await _pending_capf(session, names)
    pools = await _pools(session, {d["device_pool"] for d in devices if d["device_pool"]})
    out = []
    for d in devices:
        if not d["name"].startswith("SEP"):
            continue  # only SEP<MAC> devices fetch a SEP<MAC>.cnf.xml
        op, pool = capf.get(d["name"]), pools.get(d["device_pool"] or "")
        out.append(DeviceInputs(d["name"], d, op, pool, (tuple(d.values()), _frozen(op), _frozen(pool))))
    return out


# --- the same snapshot straight from SQLite (the version check's re-read on the default database) ---

@dataclass
class RawInputs:
    """Every input as SQLite returns it, read in one read transaction."""

    mode: str | None
    columns: tuple[str, ...]
    devices: list[tuple]
    capf: dict[str, tuple]           # device name -> (device_name, operation, auth_mode, key_type, id)
    capf_columns: tuple[str, ...]
    pools: dict[str, tuple]          # pool name -> (name, cm_group, srst)
    references: dict[str, tuple]     # srst reference name -> (name, host, ports, secure, certificate)


def _sqlite_sql(stmt) -> str:
    from sqlalchemy.dialects import sqlite

    return str(stmt.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))


_RAW_SQL: dict[str, str] = {}


def _raw_sql() -> dict[str, str]:
    if not _RAW_SQL:
        from ccmsec.db.devices import SETTING_SECURITY_MODE, ClusterSetting

        _RAW_SQL.update(
            mode=_sqlite_sql(select(ClusterSetting.value).where(ClusterSetting.key == SETTING_SECURITY_MODE)),
            devices=_sqlite_sql(select(*_DEVICE_COLUMNS).order_by(Device.name)),
            capf=_sqlite_sql(select(CapfOperation.device_name, CapfOperation.operation, CapfOperation.auth_mode,
                                    CapfOperation.key_type, CapfOperation.id)
                             .where(CapfOperation.state.in_(PENDING_CAPF_STATES)).order_by(CapfOperation.id)),
            pools=_sqlite_sql(select(DevicePool.name, DevicePool.cm_group, DevicePool.srst)),
            references=_sqlite_sql(select(SrstReference.name, SrstReference.host, SrstReference.sccp_port,
                                          SrstReference.sccp_tls_port, SrstReference.secure,
                                          SrstReference.certificate)),
        )
    return _RAW_SQL


# The table each statement reads. Each owner migrates only its own schema branch (issue 9 §5): until
# it has started once, its table is missing and reads as empty (no device, no pending operation,
# MODE-1's non-secure cluster).
_RAW_TABLES = {"mode": "cluster_settings", "devices": "devices", "capf": "capf_operations",
               "pools": "device_pools", "references": "srst_references"}
_COMPLETE: dict[int, object] = {}  # connections that saw every table (tables are never dropped)


def _absent(conn) -> set[str]:
    """The statements whose table is not there yet (a cheap check until every table was seen)."""
    if _COMPLETE.get(id(conn)) is conn:
        return set()
    present = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    absent = {key for key, table in _RAW_TABLES.items() if table not in present}
    if not absent:
        _COMPLETE[id(conn)] = conn
    return absent


class _NoRows:
    description = ()

    def fetchone(self):
        return None

    def fetchall(self):
        return []


def _run(conn, absent: set[str], key: str, statement: str, *args):
    return _NoRows() if key in absent else conn.execute(statement, *args)


def read_raw_sqlite(conn) -> RawInputs:
    """One read transaction on a sqlite3 connection (autocommit mode): every input, as tuples."""
    sql = _raw_sql()
    conn.execute("BEGIN")
    try:
        absent = _absent(conn)
        mode = _run(conn, absent, "mode", sql["mode"]).fetchone()
        cursor = _run(conn, absent, "devices", sql["devices"])
        columns = tuple(c[0] for c in cursor.description)
        devices = cursor.fetchall()
        cursor = _run(conn, absent, "capf", sql["capf"])
        capf_columns = tuple(c[0] for c in cursor.description)
        capf = {row[0]: row for row in cursor.fetchall()}  # ordered by id: the latest wins
        pools = {row[0]: row for row in _run(conn, absent, "pools", sql["pools"]).fetchall()}
        references = {row[0]: row for row in _run(conn, absent, "references", sql["references"]).fetchall()}
    finally:
        conn.execute("COMMIT")
    return RawInputs(mode[0] if mode else None, columns or _DEVICE_NAMES, devices, capf, capf_columns,
                     pools, references)


_POINT_SQL: dict[str, str] = {}


def _point_sql() -> dict[str, str]:
    """The same statements for one device (bound by name), SQLite's `?` parameters."""
    if not _POINT_SQL:
        from sqlalchemy import literal_column

        def bindparam(_name):
            return literal_column("?")  # one positional parameter; constants rendered inline

        compiled = _sqlite_sql

        _POINT_SQL.update(
            devices=compiled(select(*_DEVICE_COLUMNS).where(Device.name == bindparam("n"))),
            capf=compiled(select(CapfOperation.device_name, CapfOperation.operation, CapfOperation.auth_mode,
                                 CapfOperation.key_type, CapfOperation.id)
                          .where(CapfOperation.state.in_(PENDING_CAPF_STATES),
                                 CapfOperation.device_name == bindparam("n"))
                          .order_by(CapfOperation.id)),
            pools=compiled(select(DevicePool.name, DevicePool.cm_group, DevicePool.srst)
                           .where(DevicePool.name == bindparam("n"))),
            references=compiled(select(SrstReference.name, SrstReference.host, SrstReference.sccp_port,
                                       SrstReference.sccp_tls_port, SrstReference.secure,
                                       SrstReference.certificate).where(SrstReference.name == bindparam("n"))),
        )
    return _POINT_SQL


def read_point_sqlite(conn, name: str) -> RawInputs:
    """One device's inputs and the mode, in one read transaction (indexed look-ups)."""
    sql, point = _raw_sql(), _point_sql()
    conn.execute("BEGIN")
    try:
        absent = _absent(conn)
        mode = _run(conn, absent, "mode", sql["mode"]).fetchone()
        cursor = _run(conn, absent, "devices", point["devices"], (name,))
        columns = tuple(c[0] for c in cursor.description) or _DEVICE_NAMES
        devices = cursor.fetchall()
        cursor = _run(conn, absent, "capf", point["capf"], (name,))
        capf_columns = tuple(c[0] for c in cursor.description)
        capf = {row[0]: row for row in cursor.fetchall()}
        pools, references = {}, {}
        pool_name = devices[0][columns.index("device_pool")] if devices else None
        if pool_name:
            pools = {row[0]: row for row in _run(conn, absent, "pools", point["pools"], (pool_name,)).fetchall()}
            ref_name = pools[pool_name][2] if pool_name in pools else None
            if ref_name:
                references = {row[0]: row for row in
                              _run(conn, absent, "references", point["references"], (ref_name,)).fetchall()}
    finally:
        conn.execute("COMMIT")
    return RawInputs(mode[0] if mode else None, columns, devices, capf, capf_columns, pools, references)


def inputs_from_raw(raw: RawInputs, old: dict[str, DeviceInputs]) -> dict[str, DeviceInputs]:
    """The inputs of every SEP device; an unchanged device keeps its old DeviceInputs object."""
    pool_keys = {name: (row, raw.references.get(row[2]) if row[2] else None) for name, row in raw.pools.items()}
    out: dict[str, DeviceInputs] = {}
    pool_column = raw.columns.index("device_pool")
    for row in raw.devices:
        name = row[0]
        if not name.startswith("SEP"):
            continue
        op = raw.capf.get(name)
        pool_name = row[pool_column]
        key = (row, op, pool_keys.get(pool_name) if pool_name else None)
        before = old.get(name)
        if before is not None and before.key == key:
            out[name] = before
            continue
        pool = None
        if key[2] is not None:
            (_, cm_group, srst), ref = key[2]
            reference = None
            if ref is not None:
                reference = {"host": ref[1], "sccp_port": ref[2], "sccp_tls_port": ref[3], "secure": bool(ref[4]),
                             "certificate": ref[5]}
            pool = {"callmanagers": [h for h in cm_group.split(",") if h][:3], "srst": srst or None,
                    "reference": reference}
        out[name] = DeviceInputs(name, dict(zip(raw.columns, row)),
                                 dict(zip(raw.capf_columns, op)) if op else None, pool, key)
    return out


async def device_configs(session: AsyncSession, endpoints: ClusterEndpoints,
                         names: list[str] | None = None) -> list[DeviceSource]:
    """The configs of `names` (all devices when None), read in one session (one snapshot)."""
    return [DeviceSource(i.name, i.device["config_version"],
                         build_device_config(i.device, i.capf, i.pool, endpoints))
            for i in await read_inputs(session, names)]


async def security_mode(session: AsyncSession) -> ClusterMode:
    return await cluster_security_mode(session)


# --- static files ------------------------------------------------------------------------------

RINGS = (("Chirp 1", "Ringer1.raw", 480.0), ("Chirp 2", "Ringer2.raw", 620.0))
LOCALE_FILES = {
    "United_States/g3-tones.xml": (
        '<?xml version="1.0" encoding="UTF-8"?>\n<tones country="United_States">\n'
        '  <tone name="dial" freq1="350" freq2="440" on="continuous"/>\n'
        '  <tone name="ringback" freq1="440" freq2="480" on="2000" off="4000"/>\n'
        '  <tone name="busy" freq1="480" freq2="620" on="500" off="500"/>\n</tones>\n'),
    "English_United_States/7970-dictionary.xml": (
        '<?xml version="1.0" encoding="UTF-8"?>\n<dictionary locale="English_United_States">\n'
        '  <entry key="settings">Settings</entry>\n  <entry key="services">Services</entry>\n'
        '  <entry key="directories">Directories</entry>\n  <entry key="messages">Messages</entry>\n'
        '</dictionary>\n'),
    "English_United_States/7960-dictionary.xml": (
        '<?xml version="1.0" encoding="UTF-8"?>\n<dictionary locale="English_United_States">\n'
        '  <entry key="redial">Redial</entry>\n  <entry key="newcall">NewCall</entry>\n'
        '</dictionary>\n'),
}


def _mulaw(sample: float) -> int:
    """G.711 mu-law of a sample in [-1, 1] (the ring tones are 8 kHz mu-law .raw files)."""
    value = max(-32635, min(32635, int(sample * 32635)))
    sign = 0x80 if value < 0 else 0
    value = abs(value) + 0x84
    exponent = max(0, min(7, value.bit_length() - 8))
    mantissa = (value >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def ring_tone(frequency: float, seconds: float = 1.0, rate: int = 8000) -> bytes:
    return bytes(_mulaw(0.5 * math.sin(2 * math.pi * frequency * i / rate)) for i in range(int(seconds * rate)))


def ring_list() -> bytes:
    rings = "".join(f"  <Ring>\n    <DisplayName>{d}</DisplayName>\n    <FileName>{f}</FileName>\n  </Ring>\n"
                    for d, f, _ in RINGS)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<CiscoIPPhoneRingList>\n{rings}</CiscoIPPhoneRingList>\n'.encode()


def static_files(endpoints: ClusterEndpoints) -> dict[str, bytes]:
    files = {"RingList.xml": ring_list()}
    for _, name, freq in RINGS:
        files[name] = ring_tone(freq)
    files.update({name: body.encode() for name, body in LOCALE_FILES.items()})
    loads = tuple(sorted(firmware.LOADS.items()))
    files[DefaultConfig.FILENAME] = DefaultConfig(endpoints.members(), loads).to_xml()
    return files


def write_static_files(folder: Path, endpoints: ClusterEndpoints) -> list[str]:
    """Create the static files that are missing (never overwrite: the administrator may edit them)."""
    written = []
    for name, data in static_files(endpoints).items():
        path = folder / name
        if not path.exists():
            atomic_write(path, data)
            written.append(name)
    return written

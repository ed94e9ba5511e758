"""Service accounts of the local runner (issue 9 §1): when `ccmsec up` runs as root, every process
of the cluster runs under a uid and gid of its own node, and the data directory is laid out so that
each holds only its own private keys and the cluster CA key stays root's.

Ids are numeric, from one fixed range (no /etc/passwd entry is made): `CCMSEC_SERVICE_UID_BASE`
(default 61000) is the shared group `ccmsec` (the folders every service traverses); base+1 … base+8
the eight roles in topology order, base+9 NATS, base+10 the group `ccmsec-servers` (who reads the
servers' certificates: the CTL Provider, and CAPF for its CERT-3 copy), base+10+N the call-control
subscriber N. Each account's gid is its uid; a subscriber is also in callmanager's group (call
control's database, which the publisher and its subscribers share). `up` refuses a range that an existing account or group
uses. The layout (`apply_layout`) mirrors compose's volumes (`compose.shared_volumes`): a file one
role writes and another must read is in a folder its writer owns, readable by the reader's group.
"""

from __future__ import annotations

import grp
import os
import pwd
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ccmsec.cluster.topology import MAX_SUBSCRIBERS, ROLES, LocalCluster

UID_BASE_DEFAULT = 61000
UID_BASE_VARIABLE = "CCMSEC_SERVICE_UID_BASE"
MODE_VARIABLE = "CCMSEC_SERVICE_USERS"
MODES = ("auto", "on", "off")
NATS = "nats"
SUBSCRIBER_SLOT = 10          # callmanager-subN: base + 10 + N; base + 10 itself: ccmsec-servers
SERVER_READERS = ("ctl-provider", "capf")
RANGE = SUBSCRIBER_SLOT + MAX_SUBSCRIBERS + 1   # ids base .. base+RANGE-1 are ours
# Roles that keep a server key (ccmserver.key) get CCMSEC_KEY_DIR=DATA/keys/<node>: the key leaves
# the folder the CTL Provider reads (DATA/servers/<node>), as compose's keys-<role> volume does.
KEY_DIR_ROLES = ("callmanager", "tftp-signer", "srst")
# Files of DATA/pki that only their owner role opens; the rest of DATA/pki is root's.
PKI_OWNED = {"capf.key": "capf", ".capf.lock": "capf",
             "manufacturer-ca.key": "phone-sim", ".manufacturer-ca.lock": "phone-sim"}


class AccountError(Exception):
    """The service accounts cannot be used (ids taken, bad setting, interpreter out of reach)."""


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]   # supplementary groups (the shared `ccmsec` group)


@dataclass(frozen=True)
class Accounts:
    base: int

    @property
    def shared_gid(self) -> int:
        return self.base

    def uid(self, node: str) -> int:
        if node == NATS:
            return self.base + 1 + len(ROLES)
        if node in ROLES:
            return self.base + 1 + ROLES.index(node)
        role, _, number = node.rpartition("-sub")
        if role == "callmanager" and number.isdigit() and 1 <= int(number) <= MAX_SUBSCRIBERS:
            return self.base + SUBSCRIBER_SLOT + int(number)
        raise AccountError(f"no service account for {node!r}")

    @property
    def servers_gid(self) -> int:
        return self.base + SUBSCRIBER_SLOT

    def of(self, node: str) -> Account:
        uid = self.uid(node)
        groups: tuple[int, ...] = () if node == NATS else (self.shared_gid,)  # NATS reads nothing of theirs
        if node in SERVER_READERS:
            groups += (self.servers_gid,)
        if node != "callmanager" and node.startswith("callmanager-sub"):
            groups += (self.uid("callmanager"),)  # call control's database (ccmsec.cluster.databases)
        return Account(node, uid, uid, groups)

    def ids(self) -> range:
        return range(self.base, self.base + RANGE)


def uid_base(env: dict[str, str] | None = None) -> int:
    raw = (env if env is not None else os.environ).get(UID_BASE_VARIABLE, "").strip()
    if not raw:
        return UID_BASE_DEFAULT
    try:
        base = int(raw)
    except ValueError:
        raise AccountError(f"{UID_BASE_VARIABLE}={raw!r} is not a number") from None
    if not 1000 <= base <= 2**31 - 1 - RANGE:
        raise AccountError(f"{UID_BASE_VARIABLE}={base}: choose 1000 to {2**31 - 1 - RANGE}")
    return base


def wanted_mode(value: str | None = None) -> str:
    mode = (value or os.environ.get(MODE_VARIABLE) or "auto").strip().lower()
    if mode not in MODES:
        raise AccountError(f"service users {mode!r}: expected one of {', '.join(MODES)}")
    return mode


def ids_in_use(accounts: Accounts) -> list[str]:
    """Accounts and groups of this machine whose ids fall in our range (each would share files)."""
    taken = []
    for i in accounts.ids():
        try:
            taken.append(f"uid {i} ({pwd.getpwuid(i).pw_name})")
        except KeyError:
            pass
        try:
            taken.append(f"gid {i} ({grp.getgrgid(i).gr_name})")
        except KeyError:
            pass
    return taken


def reach_problem(account: Account, data_dir: Path, python: str | None = None) -> str | None:
    """Why a process of `account` could not run this installation from `data_dir` (None: it can):
    the interpreter and the packages must be readable, and the data directory reachable, by a uid
    that is not root — an interpreter under /root (pyenv, uv's default) is not."""
    python = python or sys.executable
    probe = "import os, sys, ccmsec.cluster.supervisor; os.stat(sys.argv[1])"
    try:
        res = subprocess.run([python, "-c", probe, str(data_dir)], user=account.uid, group=account.gid,
                             extra_groups=list(account.groups), capture_output=True, text=True, timeout=60,
                             cwd="/", stdin=subprocess.DEVNULL)
    except PermissionError:
        return (f"the Python interpreter {python} cannot be run by uid {account.uid} (a folder on its "
                "path is closed to other users)")
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot start a process as uid {account.uid}: {exc}"
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        return f"a process of uid {account.uid} cannot run {python} with {data_dir}: {last}"
    return None


def choose(data_dir: Path, mode: str, *, is_root: bool | None = None) -> tuple[Accounts | None, str]:
    """The accounts to run the services under (None: all as the caller) and, when None, why.
    `on` fails with AccountError where `auto` falls back to one user, saying why."""
    is_root = os.geteuid() == 0 if is_root is None else is_root
    if mode == "off":
        return None, "service users turned off (--service-users off)"
    if not is_root:
        if mode == "on":
            raise AccountError("--service-users on needs root: only root can run each service "
                               "under a uid of its own")
        return None, "not started as root: every service runs as this user (separation needs root, or compose)"
    accounts = Accounts(uid_base())
    taken = ids_in_use(accounts)
    problem = None
    if taken:
        problem = (f"the service ids {accounts.base}-{accounts.base + RANGE - 1} are in use on this "
                   f"machine ({', '.join(taken[:4])}); set {UID_BASE_VARIABLE} to a free range")
    problem = problem or reach_problem(accounts.of("ctl-provider"), data_dir)
    if problem:
        if mode == "on":
            raise AccountError(problem + ("" if taken else "; install the project where every user can "
                                         "read it (e.g. a virtualenv under /opt)") + ", or use --service-users off")
        return None, problem + ": every service runs as root"
    return accounts, ""


# --- the layout ------------------------------------------------------------------------------------


def _own(path: Path, uid: int, gid: int, mode: int) -> None:
    os.chown(path, uid, gid, follow_symlinks=False)
    os.chmod(path, mode)


def _own_tree(path: Path, uid: int, gid: int) -> None:
    """Every file and folder under `path` to `uid:gid`, keeping their modes (keys stay 0600)."""
    if not path.exists():
        return
    os.chown(path, uid, gid, follow_symlinks=False)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


def _folder(path: Path, uid: int, gid: int, mode: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    _own(path, uid, gid, mode)
    return path


def key_dir(data_dir: Path, node: str) -> Path:
    return Path(data_dir) / "keys" / node


def _move_key(old: Path, new_dir: Path) -> None:
    """A server key made before the key folders (beside its certificate) moves into its node's key
    folder, so the certificate is kept (CERT-5) and the key leaves what the CTL Provider reads."""
    target = new_dir / old.name
    if old.exists() and not target.exists():
        os.replace(old, target)


SHARED_DIR = 0o2750     # setgid: files made inside keep the group; fsutil.private_dir keeps its group bits
# setgid + sticky: files made inside keep the group, none removes another's entry; o+x (no
# listing) only so NATS, in no group of the services', reaches DATA/run/nats.conf and DATA/nats —
# no entry of DATA grants anything to others.
DATA_DIR_MODE = 0o3771
RUN_DIR_MODE = 0o2751


def apply_layout(cluster: LocalCluster, accounts: Accounts) -> None:
    """Give each node its own files and nothing else's (run as root after issuing, before starting).

    DATA                      root:ccmsec 3771
    DATA/pki                  root:ccmsec 2750; cluster-ca.key, nats-admin.nk root 0600;
                              capf.key capf 0600, manufacturer-ca.key phone-sim 0600; certificates 0644
    DATA/identities/services/<node>   <node> 0700, keys 0600;  DATA/identities/clients root 0700
    DATA/keys/<node>          <node> 0700 (server keys: callmanager nodes, tftp-signer, srst)
    DATA/servers/<node>       <node>:ccmsec-servers 2750 (the CTL Provider's fallback reads it)
    DATA/tokens               root:ccmsec-servers 2750 (certificates; the .p12 files stay root 0600)
    DATA/{capf,callmanager,tftp,tftp-signer,phone-sim}, DATA/srst/<node>   the owner's, 0700
    DATA/run                  root:ccmsec 2751 (endpoints.json; nats.conf nats 0600); DATA/nats nats 0700
    DATA/db                   root:ccmsec 0750; DATA/db/<role> the role's 0700, its ccmsec.db (+ -wal,
                              -shm, .migrate.lock) 0600 — callmanager's callmanager:callmanager 2770,
                              files 0660, which its subscribers (in that group) open too; no other uid
                              opens another's (ccmsec.cluster.databases)
    DATA/db/commits           root:ccmsec 0750; <owner> the owner's 0644, callmanager's 0664 (its
                              commit counter, no secret: tftp-signer reads it, ccmsec.db.commits)
    DATA/logs                 root 0700 (the supervisor writes each service's log for it)
    """
    data = cluster.data_dir
    shared = accounts.shared_gid
    a = accounts.of

    _own(data, 0, shared, DATA_DIR_MODE)
    # The issuer's folder: readable certificates, root's keys, each CA's key to its owner.
    pki = _folder(data / "pki", 0, shared, SHARED_DIR)
    for entry in pki.iterdir():
        owner = PKI_OWNED.get(entry.name)
        if owner is not None:
            acct = a(owner)
            _own(entry, acct.uid, acct.gid, 0o600)
        elif entry.is_file():
            os.chown(entry, 0, 0, follow_symlinks=False)
            os.chmod(entry, 0o644 if entry.suffix == ".crt" else 0o600)
    idents = _folder(data / "identities", 0, shared, SHARED_DIR)
    services = _folder(idents / "services", 0, shared, SHARED_DIR)
    clients = idents / "clients"
    if clients.exists():
        _own_tree(clients, 0, 0)
        os.chmod(clients, 0o700)
    for inst in cluster.instances:
        acct = a(inst.node)
        folder = services / inst.node
        _own_tree(folder, acct.uid, acct.gid)
        os.chmod(folder, 0o700)
    _folder(data / "keys", 0, shared, SHARED_DIR)
    servers = _folder(data / "servers", 0, shared, SHARED_DIR)
    reader = accounts.servers_gid
    for inst in cluster.instances:
        acct = a(inst.node)
        if inst.role in KEY_DIR_ROLES:
            keys = _folder(key_dir(data, inst.node), acct.uid, acct.gid, 0o700)
            if inst.role == "srst":
                cert_dir = data / "srst" / inst.node
            else:
                cert_dir = servers / inst.node
            _move_key(cert_dir / "ccmserver.key", keys)
            _own_tree(keys, acct.uid, acct.gid)
        if inst.role in ("callmanager", "tftp-signer"):
            folder = _folder(servers / inst.node, acct.uid, reader, SHARED_DIR)
            _own_tree(folder, acct.uid, reader)
            os.chmod(folder, SHARED_DIR)
    _write_capf_copies(data, servers, reader)
    tokens = _folder(data / "tokens", 0, reader, SHARED_DIR)
    for entry in tokens.iterdir():
        os.chown(entry, 0, reader, follow_symlinks=False)
    for folder, owner in (("capf", "capf"), ("callmanager", "callmanager"), ("tftp", "tftp-signer"),
                          ("tftp-signer", "tftp-signer"), ("phone-sim", "phone-sim")):
        acct = a(owner)
        _folder(data / folder, acct.uid, acct.gid, 0o700)
        _own_tree(data / folder, acct.uid, acct.gid)
    srst = _folder(data / "srst", 0, shared, SHARED_DIR)
    for inst in cluster.instances:
        if inst.role == "srst":
            acct = a(inst.node)
            _folder(srst / inst.node, acct.uid, acct.gid, 0o700)
            _own_tree(srst / inst.node, acct.uid, acct.gid)
    admin_password = data / "admin-password"
    if admin_password.exists():
        acct = a("callmanager")
        _own(admin_password, acct.uid, acct.gid, 0o600)
    run = _folder(data / "run", 0, shared, RUN_DIR_MODE)
    for entry in run.iterdir():
        if entry.is_file():
            os.chown(entry, 0, shared, follow_symlinks=False)
    nats = a(NATS)
    conf = run / "nats.conf"
    if conf.exists():
        _own(conf, nats.uid, nats.gid, 0o600)
    _folder(data / "nats", nats.uid, nats.gid, 0o700)
    _own_tree(data / "nats", nats.uid, nats.gid)
    _folder(data / "logs", 0, 0, 0o700)
    _owner_databases(data, accounts)


def _write_capf_copies(data: Path, servers: Path, reader_gid: int) -> None:
    """CERT-3's copies of the CAPF certificate (DATA/servers/<role>/CAPF.cer), written here, from
    the certificate the runner made: CAPF may not write into another server's folder, and the bytes
    never change (CHK-2), so its own copy finds them equal and writes nothing."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from ccmsec.fsutil import atomic_write

    crt = data / "pki" / "capf.crt"
    if not crt.exists():
        return
    der = x509.load_pem_x509_certificate(crt.read_bytes()).public_bytes(serialization.Encoding.DER)
    for role in ("callmanager", "tftp-signer", "ctl-provider", "srst"):
        folder = servers / role
        if not folder.exists():
            _folder(folder, 0, reader_gid, SHARED_DIR)
        path = folder / "CAPF.cer"
        if not path.exists() or path.read_bytes() != der:
            atomic_write(path, der, mode=0o644)
        os.chown(path, 0, reader_gid, follow_symlinks=False)


def _owner_databases(data: Path, accounts: Accounts) -> None:
    """Each role's own database folder and file (ccmsec.cluster.databases), and the owners' commit
    counters. Call control's database is made here, in WAL mode, with its lock file: the publisher
    and its subscribers open both, so they must be group read-write from the first byte (SQLite
    gives -wal and -shm the database's mode, the setgid folder its group)."""
    from ccmsec.cluster.databases import database_dir, database_path, db_root
    from ccmsec.cluster.topology import ROLES
    from ccmsec.db.commits import WATCHED, commit_dir, counter_path

    _folder(db_root(data), 0, accounts.shared_gid, 0o750)
    for role in ROLES:
        acct = accounts.of(role)
        shared_by_nodes = role == "callmanager"
        folder = _folder(database_dir(data, role), acct.uid, acct.gid, 0o2770 if shared_by_nodes else 0o700)
        _own_tree(folder, acct.uid, acct.gid)
        db = database_path(data, role)
        if shared_by_nodes:
            if not db.exists():
                conn = sqlite3.connect(db)
                try:
                    conn.execute("PRAGMA journal_mode=WAL")
                finally:
                    conn.close()
            Path(str(db) + ".migrate.lock").touch(exist_ok=True)
        mode = 0o660 if shared_by_nodes else 0o600
        for path in folder.iterdir():
            if path.is_file():
                _own(path, acct.uid, acct.gid, mode)
    _folder(commit_dir(data), 0, accounts.shared_gid, 0o750)
    for owner in WATCHED:
        acct = accounts.of(owner)
        counter = counter_path(data, owner)
        counter.touch(exist_ok=True)
        # call control's subscribers commit to callmanager's database too: its group writes it
        _own(counter, acct.uid, acct.gid, 0o664 if owner == "callmanager" else 0o644)


def prepare_issuer_files(cluster: LocalCluster) -> None:
    """The CAPF certificate and the manufacturer CA, made by the runner (as root) before anything
    starts, their keys then given to their owners (capf, phone-sim): DATA/pki is not writable by
    any service, and call control reads both certificates from there (with its key folder it waits
    for them, never creates them). Same names, addresses and key types as their owners make."""
    from ccmsec.pki.lsc import ensure_capf_ca
    from ccmsec.pki.tokens import ensure_manufacturer_ca

    pki = cluster.data_dir / "pki"
    capf = cluster.instance("capf")
    ensure_capf_ca(pki, ip_addresses=tuple(dict.fromkeys((capf.host, "127.0.0.1"))))
    ensure_manufacturer_ca(pki)


# A service's own uid has no home: the supervisor's (root's) would make libraries probe files
# there they may not open (asyncpg: ~/.postgresql/postgresql.key -> PermissionError).
SERVICE_HOME = "/nonexistent"


def child_env(cluster: LocalCluster, node: str, separated: bool) -> dict[str, str]:
    """What a node's environment gains: its key folder under service users — and afterwards too,
    once its key moved there (a cluster started again without service users keeps finding it) —
    and, under service users, a home of none."""
    role = node if node in ROLES else "callmanager"
    env = {"HOME": SERVICE_HOME} if separated else {}
    keys = key_dir(cluster.data_dir, node)
    if role in KEY_DIR_ROLES and (separated or (keys / "ccmserver.key").exists()):
        env["CCMSEC_KEY_DIR"] = str(keys)
    return env


def describe(accounts: Accounts | None, reason: str) -> str:
    if accounts is None:
        return f"services share one user: {reason}"
    return (f"each service runs as a uid of its own ({accounts.base + 1}-{accounts.base + RANGE - 1}, "
            f"group ccmsec {accounts.shared_gid}); only root opens the cluster CA key")

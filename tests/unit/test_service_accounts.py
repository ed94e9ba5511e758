"""The local runner's service accounts and data layout (issue 9 §1, ccmsec.cluster.accounts): ids,
the choice between one user and a uid per node, and — as root — the permissions the layout gives."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from ccmsec.cluster import accounts as acc
from ccmsec.cluster import pki
from ccmsec.cluster.runner import cluster_for, service_users_note
from ccmsec.cluster.topology import ROLES, local_cluster
from ccmsec.fsutil import private_dir

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the layout chowns to other uids: needs root")


def test_every_node_has_its_own_uid_in_one_range_and_its_gid_equals_it():
    a = acc.Accounts(61000)
    nodes = [*ROLES, "nats", *(f"callmanager-sub{n}" for n in range(1, 5))]
    uids = [a.uid(n) for n in nodes]
    assert len(set(uids)) == len(uids)
    assert all(u in a.ids() for u in uids) and a.shared_gid in a.ids() and a.servers_gid in a.ids()
    assert a.shared_gid not in uids and a.servers_gid not in uids
    for n in nodes:
        account = a.of(n)
        assert account.gid == account.uid
    # who is in which group: every service in ccmsec, NATS in none, the servers' readers in theirs
    assert a.of("nats").groups == ()
    assert a.of("keymanager").groups == (a.shared_gid,)
    assert set(a.of("ctl-provider").groups) == set(a.of("capf").groups) == {a.shared_gid, a.servers_gid}
    # a call-control subscriber reaches callmanager's database through callmanager's group
    assert a.of("callmanager-sub2").groups == (a.shared_gid, a.uid("callmanager"))
    assert a.of("callmanager").groups == (a.shared_gid,)
    with pytest.raises(acc.AccountError):
        a.uid("callmanager-sub9")
    with pytest.raises(acc.AccountError):
        a.uid("intruder")


def test_uid_base_setting_is_checked():
    assert acc.uid_base({}) == acc.UID_BASE_DEFAULT
    assert acc.uid_base({acc.UID_BASE_VARIABLE: "70000"}) == 70000
    for bad in ("abc", "0", "999", str(2**31)):
        with pytest.raises(acc.AccountError, match=acc.UID_BASE_VARIABLE):
            acc.uid_base({acc.UID_BASE_VARIABLE: bad})


def test_ids_already_used_on_the_machine_are_found(monkeypatch):
    """A range over an existing account is refused (`on`) or falls back to one user (`auto`): a
    service would share files with that account."""
    assert any(t.startswith("uid 0 ") for t in acc.ids_in_use(acc.Accounts(0)))
    monkeypatch.setattr(acc, "ids_in_use", lambda _a: ["uid 61001 (someone)"])
    with pytest.raises(acc.AccountError, match="in use on this machine"):
        acc.choose(Path("/"), "on", is_root=True)
    accounts, why = acc.choose(Path("/"), "auto", is_root=True)
    assert accounts is None and "uid 61001 (someone)" in why and acc.UID_BASE_VARIABLE in why


def test_mode_choice_one_user_unless_root():
    assert acc.wanted_mode("ON") == "on"
    with pytest.raises(acc.AccountError):
        acc.wanted_mode("sometimes")
    accounts, why = acc.choose(Path("/"), "off", is_root=True)
    assert accounts is None and "off" in why
    accounts, why = acc.choose(Path("/"), "auto", is_root=False)
    assert accounts is None and "needs root" in why
    with pytest.raises(acc.AccountError, match="needs root"):
        acc.choose(Path("/"), "on", is_root=False)
    assert "share one user" in acc.describe(None, why)


def test_ports_below_1024_move_up_under_service_users(tmp_path):
    """A service's own uid cannot bind TFTP 69: the cluster (and `status` after it) use 10069."""
    assert local_cluster(tmp_path, privileged_ports=False).instance("tftp-signer").ports["tftp_port"] == 10069
    assert local_cluster(tmp_path, privileged_ports=True).instance("tftp-signer").ports["tftp_port"] == 69
    (tmp_path / "run").mkdir()
    endpoints = local_cluster(tmp_path).endpoints()
    (tmp_path / "run" / "endpoints.json").write_text(json.dumps({**endpoints, "service_users": {"uid_base": 61000}}))
    assert cluster_for(tmp_path).instance("tftp-signer").ports["tftp_port"] == 10069
    assert "uid of its own" in service_users_note(tmp_path)
    (tmp_path / "run" / "endpoints.json").write_text(json.dumps({**endpoints, "service_users": {"shared": "not root"}}))
    assert "share one user: not root" in service_users_note(tmp_path)


def test_key_folder_given_to_server_roles_and_kept_once_used(tmp_path):
    cluster = local_cluster(tmp_path, subscribers=1)
    assert acc.child_env(cluster, "callmanager-sub1", True) == {
        "CCMSEC_KEY_DIR": str(tmp_path.resolve() / "keys" / "callmanager-sub1"), "HOME": acc.SERVICE_HOME}
    assert acc.child_env(cluster, "keymanager", True) == {"HOME": acc.SERVICE_HOME}
    assert acc.child_env(cluster, "srst", False) == {}   # one user, key beside its certificate
    (tmp_path / "keys" / "srst").mkdir(parents=True)
    (tmp_path / "keys" / "srst" / "ccmserver.key").write_bytes(b"k")
    assert "CCMSEC_KEY_DIR" in acc.child_env(cluster, "srst", False)  # moved there once: kept


def test_private_dir_keeps_a_shared_folders_group_and_drops_the_world(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o2775)
    private_dir(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o2771   # the world's read gone, its traverse kept
    os.chmod(shared, 0o3777)   # DATA under service users: traverse kept for NATS, read/write not
    private_dir(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o3771
    plain = tmp_path / "plain"
    plain.mkdir()
    os.chmod(plain, 0o775)
    private_dir(plain)
    assert stat.S_IMODE(plain.stat().st_mode) == 0o700


def test_database_in_a_shared_folder_is_group_read_write_never_world(tmp_path):
    from ccmsec.runtime.database import _owner_only

    os.chmod(tmp_path, 0o2770)
    db = tmp_path / "ccmsec.db"
    db.touch()
    os.chmod(db, 0o666)
    _owner_only(db)
    assert stat.S_IMODE(db.stat().st_mode) == 0o660
    other = tmp_path / "solo"
    other.mkdir(mode=0o700)
    os.chmod(other, 0o700)
    _owner_only(other / "ccmsec.db")
    assert stat.S_IMODE((other / "ccmsec.db").stat().st_mode) == 0o600


@pytest.fixture
def laid_out():
    work = Path(tempfile.mkdtemp(prefix="ccmsec-layout-"))
    os.chmod(work, 0o711)  # other uids reach the data directory (as `up` under /tmp would)
    data = work / "data"
    cluster = local_cluster(data, base="127.78.0.0", subscribers=1)
    pki.issue_local_cluster(cluster)
    # a cluster first run with one user: the server key beside its certificate, moved by the layout
    old = data / "servers" / "tftp-signer"
    old.mkdir(parents=True)
    (old / "ccmserver.key").write_bytes(b"old key")
    os.chmod(old / "ccmserver.key", 0o600)
    accounts = acc.Accounts(acc.uid_base())
    acc.prepare_issuer_files(cluster)
    acc.apply_layout(cluster, accounts)
    yield data, accounts
    shutil.rmtree(work, ignore_errors=True)


def _owner_mode(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


@root_only
def test_layout_gives_each_node_its_own_keys_and_root_the_ca(laid_out):
    data, a = laid_out
    shared, servers = a.shared_gid, a.servers_gid
    assert _owner_mode(data) == (0, shared, 0o3771)
    assert _owner_mode(data / "pki") == (0, shared, 0o2750)
    assert _owner_mode(data / "pki" / "cluster-ca.key") == (0, 0, 0o600)
    assert _owner_mode(data / "pki" / "nats-admin.nk") == (0, 0, 0o600)
    assert _owner_mode(data / "pki" / "cluster-ca.crt")[2] == 0o644
    capf, phone = a.of("capf"), a.of("phone-sim")
    assert _owner_mode(data / "pki" / "capf.key") == (capf.uid, capf.gid, 0o600)
    assert _owner_mode(data / "pki" / "manufacturer-ca.key") == (phone.uid, phone.gid, 0o600)
    for node in (*ROLES, "callmanager-sub1"):
        me = a.of(node)
        folder = data / "identities" / "services" / node
        assert _owner_mode(folder) == (me.uid, me.gid, 0o700), node
        assert _owner_mode(folder / "tls.key") == (me.uid, me.gid, 0o600), node
        assert _owner_mode(folder / "nats.nk") == (me.uid, me.gid, 0o600), node
    assert _owner_mode(data / "identities" / "clients")[:1] == (0,)
    tftp = a.of("tftp-signer")
    assert _owner_mode(data / "keys" / "tftp-signer" / "ccmserver.key") == (tftp.uid, tftp.gid, 0o600)
    assert (data / "keys" / "tftp-signer" / "ccmserver.key").read_bytes() == b"old key"  # moved, kept
    assert not (data / "servers" / "tftp-signer" / "ccmserver.key").exists()
    assert _owner_mode(data / "servers" / "tftp-signer") == (tftp.uid, servers, 0o2750)
    assert _owner_mode(data / "tokens") == (0, servers, 0o2750)
    assert (data / "servers" / "callmanager" / "CAPF.cer").exists()
    assert _owner_mode(data / "run" / "nats.conf") == (a.uid("nats"), a.uid("nats"), 0o600)
    # one database per owner (ccmsec.cluster.databases), none shared; call control's for its nodes
    assert not (data / "ccmsec.db").exists()
    assert _owner_mode(data / "db") == (0, shared, 0o750)
    cm = a.of("callmanager")
    assert _owner_mode(data / "db" / "callmanager") == (cm.uid, cm.gid, 0o2770)
    for name in ("ccmsec.db", "ccmsec.db.migrate.lock"):
        assert _owner_mode(data / "db" / "callmanager" / name) == (cm.uid, cm.gid, 0o660)
    for role in ROLES:
        if role != "callmanager":
            me = a.of(role)
            assert _owner_mode(data / "db" / role) == (me.uid, me.gid, 0o700), role
    assert _owner_mode(data / "db" / "commits") == (0, shared, 0o750)
    for owner in ("ctl-provider", "callmanager", "capf"):
        me = a.of(owner)
        mode = 0o664 if owner == "callmanager" else 0o644  # its subscribers commit too
        assert _owner_mode(data / "db" / "commits" / owner) == (me.uid, me.gid, mode), owner
    assert _owner_mode(data / "logs") == (0, 0, 0o700)


@root_only
def test_as_another_uid_only_its_own_key_opens(laid_out):
    """The permissions really refuse: `cat` as each uid (the bad case: root's own control opens)."""
    data, a = laid_out
    keys = {node: data / "identities" / "services" / node / "tls.key" for node in ("capf", "phone-sim")}
    ca_key = data / "pki" / "cluster-ca.key"
    assert subprocess.run(["cat", str(ca_key)], capture_output=True).returncode == 0  # root: opens
    for node, own in keys.items():
        me = a.of(node)

        def cat(path: Path, me=me) -> int:
            return subprocess.run(["cat", str(path)], capture_output=True, user=me.uid, group=me.gid,
                                  extra_groups=list(me.groups), cwd="/").returncode

        assert cat(own) == 0, node
        assert cat(ca_key) != 0, node
        assert all(cat(other) != 0 for n, other in keys.items() if n != node), node
        assert cat(data / "pki" / "capf.crt") == 0  # a certificate every service reads


@root_only
def test_as_another_uid_only_its_own_database_opens(laid_out):
    """Each role's database opens for its own uid (call control's for the publisher and its
    subscriber) and for no other; the commit counters open for tftp-signer and only their owner
    writes them. Each file is made as its owner's service would make it, then probed with `cat`
    (read) and an append (write) as every uid."""
    from ccmsec.cluster.databases import database_path

    data, a = laid_out
    nodes = [*ROLES, "callmanager-sub1"]
    for role in ROLES:
        me = a.of(role)
        db = database_path(data, role)
        if not db.exists():  # as the service makes it (ccmsec.runtime.database._owner_only)
            subprocess.run(["sh", "-c", f"umask 077; : > '{db}'"], user=me.uid, group=me.gid,
                           extra_groups=list(me.groups), check=True)

    def can(node: str, probes: list[str]) -> list[bool]:
        """Whether each probe (a shell command) succeeds as `node`: its uid, gid and groups. One
        shell per node runs every probe as a command of its own and reports each exit status — a
        fork of this large test process per node, not one per probe (each cost ~50 ms in the
        whole suite, ~130 of them)."""
        me = a.of(node)
        script = "".join(f"( {probe} ) >/dev/null 2>&1; echo $?\n" for probe in probes)
        done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, user=me.uid,
                              group=me.gid, extra_groups=list(me.groups), cwd="/", check=True)
        codes = done.stdout.split()
        assert len(codes) == len(probes), (node, done.stdout, done.stderr)
        return [code == "0" for code in codes]

    def cat(path) -> str:
        return f"cat {shlex.quote(str(path))}"

    def append(path) -> str:
        return f": >> {shlex.quote(str(path))}"

    owners = ("ctl-provider", "callmanager", "capf")
    for node in nodes:
        opened = can(node, [cat(database_path(data, role)) for role in ROLES]
                     + [cat(data / "db" / "commits" / owner) for owner in owners]
                     + [append(data / "db" / "commits" / owner) for owner in owners])
        for role, ok in zip(ROLES, opened):
            own = role == node or (role == "callmanager" and node.startswith("callmanager"))
            assert ok == own, (node, role)
        read, written = opened[len(ROLES):len(ROLES) + len(owners)], opened[len(ROLES) + len(owners):]
        for owner, ok_read, ok_written in zip(owners, read, written):
            assert ok_read, (node, owner)   # no secret in it
            writer = node == owner or (owner == "callmanager" and node.startswith("callmanager"))
            assert ok_written == writer, (node, owner)
    assert can("callmanager-sub1", [append(database_path(data, "callmanager"))]) == [True]

"""Issue 9 §1 in the local runner: started as root, every process of the cluster runs under a uid of
its own node, and acting as each of those uids nothing but its own private keys and its own database
opens — never the cluster CA key, never another service's tls.key, nats.nk or database file — while
the cluster still serves and a phone registers (ccmsec.cluster.accounts, ccmsec.cluster.databases)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ccmsec.cluster import accounts as acc
from ccmsec.cluster.databases import database_path
from ccmsec.cluster.topology import ROLES
from ccmsec.cluster.state import cluster_processes, read_state

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600),
              pytest.mark.skipif(os.geteuid() != 0, reason="service users need root: only root "
                                 "can start processes under other uids (the runner keeps one user otherwise)")]

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHONS = ("/usr/bin/python3.11", "/usr/local/bin/python3.11")
# Opens a list of files, says for each: "ok" or the errno name.
PROBE = """
import errno, json, sys
out = {}
for path in sys.argv[1:]:
    try:
        open(path, "rb").close()
        out[path] = "ok"
    except OSError as exc:
        out[path] = errno.errorcode.get(exc.errno, str(exc.errno))
print(json.dumps(out))
"""


def _python_for_service_users(workdir: Path) -> str:
    """An interpreter other uids can run: this one, or (pyenv and uv put theirs under /root, 0700)
    a virtualenv of the project on the system's Python, built offline from uv's cache."""
    probe_account = acc.Accounts(acc.uid_base()).of("ctl-provider")
    if acc.reach_problem(probe_account, Path("/"), python=sys.executable) is None:
        return sys.executable
    uv = shutil.which("uv")
    system = next((p for p in SYSTEM_PYTHONS if os.path.exists(p)), None)
    if not uv or not system:
        pytest.fail(f"{sys.executable} is out of reach of other uids and there is no uv ({uv}) or "
                    f"system Python 3.11 ({SYSTEM_PYTHONS}) to build an environment they can run")
    venv = workdir / "venv"
    res = subprocess.run([uv, "sync", "--frozen", "--offline", "--quiet", "--python", system],
                         cwd=REPO, env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv)},
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    python = str(venv / "bin" / "python")
    problem = acc.reach_problem(probe_account, Path("/"), python=python)
    assert problem is None, problem
    return python


def _cli(python: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "ccmsec.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def separated():
    work = Path(tempfile.mkdtemp(prefix="ccmsec-uids-"))
    os.chmod(work, 0o755)  # other uids reach the environment and the data directory inside
    data = work / "data"
    python = _python_for_service_users(work)
    # one call-control subscriber: it shares callmanager's database through callmanager's group
    up = _cli(python, "up", "-d", "--data", str(data), "--service-users", "on", "--subscribers", "1")
    if up.returncode != 0:
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in (data / "logs").glob("*.log"))
        _cli(python, "down", "--data", str(data))
        shutil.rmtree(work, ignore_errors=True)
        pytest.fail(f"ccmsec up --service-users on failed: {up.stderr}\n{logs}")
    base = json.loads((data / "run" / "endpoints.json").read_text())["service_users"]["uid_base"]
    yield {"data": data, "python": python, "accounts": acc.Accounts(base), "up": up}
    down = _cli(python, "down", "--data", str(data))
    strays = cluster_processes(data)
    shutil.rmtree(work, ignore_errors=True)
    assert down.returncode == 0, down.stderr
    assert strays == [], f"processes left after ccmsec down: {strays}"


def _uid_of(pid: int) -> tuple[int, ...]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return tuple(int(v) for v in line.split()[1:])
    raise AssertionError(f"no Uid line for {pid}")


def test_every_process_runs_under_a_distinct_uid_of_its_own(separated):
    state = read_state(separated["data"])
    children = state["children"]
    uids = {}
    for node, info in children.items():
        real, effective, saved, fs = _uid_of(int(info["pid"]))
        assert real == effective == saved == fs, (node, real, effective, saved, fs)
        assert real != 0, f"{node} runs as root"
        assert real == separated["accounts"].uid(node), node
        uids[node] = real
    assert len(set(uids.values())) == len(uids), uids   # no two nodes share a uid
    assert {"nats", "ctl-provider", "capf", "tftp-signer", "callmanager", "keymanager", "srtp-gateway",
            "srst", "phone-sim"} <= set(uids)
    # whatever the services started (pool workers) runs under a service uid too: only the
    # supervisor is root
    supervisor = int(state["supervisor_pid"])
    for pid in cluster_processes(separated["data"]):
        if pid != supervisor:
            assert _uid_of(pid)[0] in set(uids.values()), (pid, _uid_of(pid))
    assert "each service runs as a uid of its own" in separated["up"].stderr


def _secrets(data: Path, nodes: list[str]) -> dict[str, str | tuple[str, ...] | None]:
    """Every private file of the cluster -> the node (or nodes) that alone may open it (None: root
    only)."""
    owned: dict[str, str | tuple[str, ...] | None] = {
        str(data / "pki" / "cluster-ca.key"): None,
        str(data / "pki" / "nats-admin.nk"): None,
        str(data / "identities" / "clients" / "cli" / "tls.key"): None,
        str(data / "identities" / "clients" / "cli" / "nats.nk"): None,
        str(data / "run" / "nats.conf"): "nats",
        str(data / "pki" / "capf.key"): "capf",
        str(data / "pki" / "manufacturer-ca.key"): "phone-sim",
        str(data / "admin-password"): "callmanager",
        str(data / "identities" / "services" / "callmanager" / "admin-api" / "tls.key"): "callmanager",
    }
    # each role's own database (ccmsec.cluster.databases): callmanager's admin password hashes,
    # CAPF's operations, the CTL Provider's mode — no other uid opens it (as a PostgreSQL role and
    # schema of its own keeps it in compose)
    for role in ROLES:
        owned[str(database_path(data, role))] = (role if role != "callmanager" else
                                                 tuple(n for n in nodes if n.startswith("callmanager")))
    for node in nodes:
        folder = data / "identities" / "services" / node
        owned[str(folder / "tls.key")] = node
        owned[str(folder / "nats.nk")] = node
        key = data / "keys" / node / "ccmserver.key"
        if key.exists():
            owned[str(key)] = node
    missing = [p for p in owned if not os.path.exists(p)]
    assert missing == [], f"expected private files missing: {missing}"
    return owned


def _may_open(owner: str | tuple[str, ...] | None, node: str) -> bool:
    return node == owner or (isinstance(owner, tuple) and node in owner)


def _open_as(python: str, account: acc.Account | None, paths: list[str]) -> dict[str, str]:
    kwargs = {} if account is None else dict(user=account.uid, group=account.gid,
                                              extra_groups=list(account.groups))
    res = subprocess.run([python, "-c", PROBE, *paths], capture_output=True, text=True, timeout=60,
                         cwd="/", **kwargs)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_each_service_opens_its_own_keys_and_no_other_nor_the_cluster_ca_key(separated):
    data, python, accounts = separated["data"], separated["python"], separated["accounts"]
    nodes = [n for n in read_state(data)["children"] if n != "nats"]
    owned = _secrets(data, nodes)
    paths = sorted(owned)
    # The control: the probe does open these files — as root every one opens, so a refusal below
    # is the file's permissions, not a wrong path.
    assert set(_open_as(python, None, paths).values()) == {"ok"}
    for node in [*nodes, "nats"]:
        result = _open_as(python, accounts.of(node), paths)
        own = sorted(p for p in paths if _may_open(owned[p], node))
        assert own, f"{node} holds no private file of its own?"
        for path in paths:
            if _may_open(owned[path], node):
                assert result[path] == "ok", f"{node} cannot open its own {path}: {result[path]}"
            else:
                assert result[path] == "EACCES", f"{node} opened {path} ({owned[path] or 'root'}'s)"


def test_no_service_writes_what_another_trusts(separated):
    """DATA/pki (the cluster CA, CAPF's and the manufacturer's certificates) is root's; a server's
    certificate folder is its server's alone; the identity folders are their owners'."""
    data, python, accounts = separated["data"], separated["python"], separated["accounts"]
    attempts = {
        "phone-sim": [data / "pki" / "capf.crt", data / "pki" / "planted.crt",
                      data / "servers" / "callmanager" / "ccmserver.cer"],
        "capf": [data / "pki" / "cluster-ca.crt", data / "servers" / "tftp-signer" / "planted"],
        "srtp-gateway": [data / "identities" / "services" / "callmanager" / "ca.crt",
                         data / "tokens" / "planted.crt", data / "keys" / "capf-planted"],
        "ctl-provider": [data / "servers" / "callmanager" / "ccmserver.cer",
                         database_path(data, "capf"), data / "db" / "commits" / "callmanager"],
        "tftp-signer": [database_path(data, "callmanager"), data / "db" / "commits" / "capf",
                        data / "db" / "commits" / "planted"],
    }
    script = ("import sys, errno\nfor p in sys.argv[1:]:\n    try:\n        open(p, 'ab').close()\n"
              "        print(p, 'ok')\n    except OSError as e:\n        print(p, errno.errorcode[e.errno])\n")
    for node, targets in attempts.items():
        account = accounts.of(node)
        res = subprocess.run([python, "-c", script, *map(str, targets)], capture_output=True, text=True,
                             user=account.uid, group=account.gid, extra_groups=list(account.groups),
                             cwd="/", timeout=60)
        assert res.returncode == 0, res.stderr
        for line in res.stdout.splitlines():
            assert line.endswith("EACCES"), f"{node} could write: {line}"


def test_the_separated_cluster_serves_and_a_phone_registers(separated):
    data, python = str(separated["data"]), separated["python"]
    status = _cli(python, "status", "--data", data)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "each service runs as a uid of its own" in status.stderr
    rows = [line.split() for line in status.stdout.splitlines()[1:]]
    assert rows and all("SERVING" in r or "RUNNING" in r for r in rows), status.stdout
    added = _cli(python, "phones", "add", "--count", "1", "--model", "7960", "--name-prefix", "SEP0F1D",
                 "--data", data)
    assert added.returncode == 0, added.stderr
    name = added.stdout.split()[0]
    booted = _cli(python, "phones", "boot", name, "--wait", "--timeout", "60", "--data", data, timeout=120)
    assert booted.returncode == 0, booted.stdout + booted.stderr
    shown = _cli(python, "phones", "show", name, "--data", data).stdout
    assert "state: registered" in shown, shown

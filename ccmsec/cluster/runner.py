"""`ccmsec up | status | down` for a local cluster in one data directory."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ccmsec.cluster.state import (
    alive, cluster_processes, endpoints_path, pid_belongs_to, read_endpoints, read_state, run_dir,
)
from ccmsec.cluster.topology import NATS_PORT, LocalCluster, local_cluster
from ccmsec.fsutil import atomic_write, private_dir

UP_TIMEOUT = 120.0
DOWN_TIMEOUT = 20.0


class RunnerError(Exception):
    """A clear, user-facing problem with the local cluster."""


@dataclass
class Row:
    service: str
    address: str
    ports: str
    pid: int
    state: str
    restarts: int = 0
    # The same ports, structured (`ccmsec status --json`): name, number, protocol; metrics included.
    port_list: list[dict] = field(default_factory=list)
    metrics: str = ""   # the Prometheus endpoint (http://host:port/metrics), "" when off or none
    reason: str = ""     # why a DEGRADED service is not serving (BUS-5)

    def as_json(self) -> dict:
        return {"service": self.service, "address": self.address, "ports": self.port_list,
                "pid": self.pid or None, "state": self.state, "restarts": self.restarts,
                "metrics": self.metrics, "reason": self.reason}


def service_uid_base(data_dir: Path) -> int | None:
    """The uid range the running (or last) cluster of `data_dir` was started under, or None when
    its services share one user (`ccmsec.cluster.accounts`)."""
    users = (read_endpoints(data_dir) or {}).get("service_users") or {}
    base = users.get("uid_base") if isinstance(users, dict) else None
    return int(base) if isinstance(base, int) else None


def service_users_note(data_dir: Path) -> str:
    """One line for `ccmsec status`: whether the cluster's services run under uids of their own."""
    users = (read_endpoints(data_dir) or {}).get("service_users")
    if not isinstance(users, dict):
        return ""
    from ccmsec.cluster.accounts import Accounts, describe

    base = users.get("uid_base")
    if isinstance(base, int):
        return describe(Accounts(base), "")
    return describe(None, str(users.get("shared") or "unknown"))


def cluster_for(data_dir: Path, base: str | None = None, subscribers: int | None = None,
                privileged_ports: bool | None = None) -> LocalCluster:
    known = read_endpoints(data_dir)
    if base is None and known:
        base = known.get("base")
    if subscribers is None:
        subscribers = int((known or {}).get("subscribers") or 0)
    if privileged_ports is None and service_uid_base(data_dir) is not None:
        privileged_ports = False  # its services run under their own uids: TFTP on 10069
    try:
        return local_cluster(data_dir, base, subscribers, privileged_ports)
    except ValueError as exc:
        raise RunnerError(str(exc)) from None


def check_data_dir(data_dir: Path) -> None:
    """The data directory exists, is writable, and only its owner may enter it: it holds the
    cluster's private keys, tokens and database. One laid out for service users (setgid,
    `ccmsec.cluster.accounts`) keeps its mode: the layout sets it again before anything starts."""
    try:
        if not (data_dir.is_dir() and data_dir.stat().st_mode & stat.S_ISGID):
            private_dir(data_dir)
    except PermissionError:
        raise RunnerError(f"cannot create data directory {data_dir}: permission denied") from None
    except OSError as exc:
        raise RunnerError(f"cannot create data directory {data_dir}: {exc.strerror}") from None
    if not data_dir.is_dir():
        raise RunnerError(f"{data_dir} is not a directory")
    probe = data_dir / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError:
        raise RunnerError(f"data directory {data_dir} is not writable") from None


def supervisor_pid(data_dir: Path) -> int | None:
    state = read_state(data_dir)
    if not state:
        return None
    pid = int(state.get("supervisor_pid") or 0)
    return pid if pid_belongs_to(pid, data_dir) else None


def _port_free(host: str, port: int, proto: str) -> bool:
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as s:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise RunnerError(f"cannot bind {host}:{port}: {exc.strerror}") from None
    return True


def check_ports(cluster: LocalCluster) -> None:
    wanted = [("nats", cluster.nats_host, NATS_PORT, "tcp", "NATS")]
    for inst in cluster.instances:
        protos = {p.name: p for p in inst.spec.ports}
        for name, number in inst.ports.items():
            proto = protos[name].protocol if name in protos else "tcp"
            purpose = protos[name].purpose if name in protos else name.replace("_port", "")
            wanted.append((inst.role, inst.host, number, proto, purpose))
    busy = [f"{host}:{port}/{proto} ({role} {purpose})" for role, host, port, proto, purpose in wanted
            if not _port_free(host, port, proto)]
    if busy:
        raise RunnerError("port already in use: " + ", ".join(busy)
                          + " — stop what holds it, or choose other addresses with --base")


_last_progress = [""]


def _progress(msg: str, final: bool = False) -> None:
    """One updating line on a terminal; a new line only when something changed otherwise."""
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K" + msg + ("\n" if final else ""))
    elif msg != _last_progress[0]:
        sys.stderr.write(msg + "\n")
    _last_progress[0] = msg
    sys.stderr.flush()


async def health_states(cluster: LocalCluster, timeout: float = 1.5,
                        reasons: dict[str, str] | None = None) -> dict[str, str]:
    """Node -> SERVING / NOT_SERVING / DEGRADED / UNREACHABLE; `reasons` gets why each DEGRADED one is."""
    from ccmsec.runtime.grpcio import health_detail
    from ccmsec.runtime.identity import client_identity

    ident = client_identity(cluster.data_dir)

    async def one(inst):
        try:
            state, why = await health_detail(ident, inst.host, inst.ports["grpc_port"], inst.role, timeout)
        except Exception:
            return inst.node, "UNREACHABLE"
        if why and reasons is not None:
            reasons[inst.node] = why
        return inst.node, state

    return dict(await asyncio.gather(*(one(i) for i in cluster.instances)))


def _tail(path: Path, lines: int = 5) -> str:
    """The last lines of a log, each JSON record shown as its message (and error, if any)."""
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    shown = []
    for line in tail:
        try:
            record = json.loads(line)
            text = str(record["msg"]) + (f" ({record['exc'].splitlines()[-1]})" if record.get("exc") else "")
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            text = line
        shown.append(text)
    return "\n".join(shown)


def missing_parts(cluster: LocalCluster) -> list[str]:
    """What `up` needs and cannot find: each role's Python package, the NATS server binary."""
    import importlib.util

    missing = []
    for package in sorted({inst.spec.package for inst in cluster.instances}):
        try:
            found = importlib.util.find_spec(package) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            roles = sorted({i.spec.role for i in cluster.instances if i.spec.package == package})
            missing.append(f"Python package {package} (role {', '.join(roles)})")
    from ccmsec.cluster.supervisor import nats_server_binary

    try:
        nats_server_binary()
    except FileNotFoundError as exc:
        missing.append(str(exc))
    return missing


def up(data_dir: Path, *, base: str | None = None, timeout: float = UP_TIMEOUT, quiet: bool = False,
       subscribers: int = 0, service_users: str | None = None) -> list[Row]:
    """Start the cluster. `service_users` (auto | on | off; default $CCMSEC_SERVICE_USERS or auto):
    as root, run every process under a uid of its own node (`ccmsec.cluster.accounts`); auto falls
    back to one user, and says why, where that cannot work (not root, interpreter out of reach)."""
    data_dir = data_dir.resolve()
    missing = missing_parts(cluster_for(data_dir, base, subscribers))
    if missing:  # fail before anything is written or started
        raise RunnerError("cannot start the cluster; missing: " + "; ".join(missing)
                          + " — install the whole project into the environment of "
                           f"{sys.executable}: `pip install .` in the source tree, or the ccmsec wheel "
                           "(it carries every service)")
    check_data_dir(data_dir)
    pid = supervisor_pid(data_dir)
    if pid:
        raise RunnerError(f"a cluster is already running from {data_dir} (supervisor pid {pid}); "
                          "use `ccmsec status` or `ccmsec down`")
    from ccmsec.cluster import accounts as accounts_mod
    from ccmsec.cluster import databases

    try:  # the old layout's one shared file becomes one per owner before anything opens it
        split = "" if os.environ.get("CCMSEC_DATABASE_URL") else databases.split_shared(data_dir)
    except databases.SplitError as exc:
        raise RunnerError(str(exc)) from None
    if split and not quiet:
        _progress(split, final=True)
    databases.prepare(data_dir)
    try:
        accts, why_shared = accounts_mod.choose(data_dir, accounts_mod.wanted_mode(service_users))
    except accounts_mod.AccountError as exc:
        raise RunnerError(str(exc)) from None
    if not quiet:
        _progress(accounts_mod.describe(accts, why_shared), final=True)
    cluster = cluster_for(data_dir, base, subscribers, privileged_ports=False if accts else None)
    check_ports(cluster)
    from ccmsec.cluster.pki import issue_local_cluster

    issue_local_cluster(cluster)  # before anything starts: services never hold the CA key
    run_dir(data_dir).mkdir(parents=True, exist_ok=True)
    (data_dir / "logs").mkdir(parents=True, exist_ok=True)
    endpoints = cluster.endpoints()
    endpoints["service_users"] = ({"uid_base": accts.base} if accts else {"shared": why_shared})
    atomic_write(endpoints_path(data_dir), json.dumps(endpoints, indent=2).encode())
    argv = [sys.executable, "-m", "ccmsec.cluster.supervisor", "--data", str(data_dir), "--base", cluster.base,
            "--subscribers", str(subscribers)]
    if accts:
        accounts_mod.prepare_issuer_files(cluster)
        accounts_mod.apply_layout(cluster, accts)
        argv += ["--uid-base", str(accts.base)]
    env = dict(os.environ, CCMSEC_CLUSTER_DIR=str(data_dir))
    with open(data_dir / "logs" / "supervisor.log", "ab") as logf:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=env, start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while True:
        code = proc.poll()
        if code is not None:
            raise RunnerError(f"the cluster supervisor exited (code {code}): "
                              + (_tail(data_dir / "logs" / "supervisor.log", 3) or "see logs"))
        states = asyncio.run(health_states(cluster))
        serving = [r for r, s in states.items() if s == "SERVING"]
        if not quiet:
            waiting = [r for r in states if r not in serving]
            _progress(f"starting cluster in {data_dir}: {len(serving)}/{len(states)} services serving"
                      + (f" (waiting for {', '.join(waiting)})" if waiting else ""), final=not waiting)
        if len(serving) == len(states):
            break
        if time.monotonic() > deadline:
            laggards = [r for r in states if r not in serving]
            details = "; ".join(f"{r}: {_tail(data_dir / 'logs' / f'{r}.log', 1)}" for r in laggards)
            down(data_dir, quiet=True)
            raise RunnerError(f"services not serving after {timeout:.0f}s: {', '.join(laggards)}. {details}")
        time.sleep(0.5)
    return status(data_dir, states=states)


def status(data_dir: Path, states: dict[str, str] | None = None) -> list[Row]:
    data_dir = data_dir.resolve()
    state = read_state(data_dir)
    if not state or not endpoints_path(data_dir).exists():
        raise RunnerError(f"no cluster has been started from {data_dir}")
    cluster = cluster_for(data_dir)
    running = supervisor_pid(data_dir) is not None
    reasons: dict[str, str] = {}
    if states is None:
        states = asyncio.run(health_states(cluster, reasons=reasons)) if running else {}
    children = state.get("children", {})
    rows = []
    nats = children.get("nats", {})
    nats_pid = int(nats.get("pid") or 0)
    rows.append(Row("nats", cluster.nats_host, f"{NATS_PORT}/tcp", nats_pid,
                    "RUNNING" if running and pid_belongs_to(nats_pid, data_dir) else "DOWN",
                    int(nats.get("restarts") or 0),
                    [{"name": "nats", "port": NATS_PORT, "protocol": "tcp",
                      "purpose": "NATS JetStream (events)"}]))
    for inst in cluster.instances:
        info = children.get(inst.node, {})
        pid = int(info.get("pid") or 0)
        protos = {p.name: p.protocol for p in inst.spec.ports}
        ports = ", ".join(f"{n}/{protos.get(k, 'tcp')}" for k, n in inst.ports.items() if k != "metrics_port")
        st = states.get(inst.node, "DOWN") if running and pid_belongs_to(pid, data_dir) else "DOWN"
        purposes = {p.name: p.purpose for p in inst.spec.ports}
        purposes.setdefault("grpc_port", "gRPC over mutual TLS")
        purposes.setdefault("metrics_port", "Prometheus metrics (HTTP)")
        port_list = [{"name": k.removesuffix("_port"), "port": n, "protocol": protos.get(k, "tcp"),
                      "purpose": purposes.get(k, "")} for k, n in inst.ports.items()]
        metrics_port = inst.ports.get("metrics_port") or 0
        metrics = f"http://{inst.host}:{metrics_port}/metrics" if metrics_port else ""
        rows.append(Row(inst.node, inst.host, ports, pid, st, int(info.get("restarts") or 0), port_list,
                        metrics, reasons.get(inst.node, "") if st == "DEGRADED" else ""))
    return rows


def status_through_ports(cluster_dir: Path, timeout: float = 3.0) -> list[Row]:
    """A cluster this machine does not run (a context's `cluster/` folder: the cli identity and
    `run/endpoints.json` with the published ports): each service's gRPC health over mutual TLS.
    No process is ours to see, so PID is empty and a service that does not answer is UNREACHABLE."""
    try:
        endpoints = json.loads(endpoints_path(cluster_dir).read_text())
        services = {str(node): dict(svc) for node, svc in dict(endpoints["services"]).items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunnerError(f"no usable endpoints in {endpoints_path(cluster_dir)}: {exc}") from None
    from ccmsec.cluster.topology import ROLES
    from ccmsec.runtime.grpcio import health_detail
    from ccmsec.runtime.identity import IdentityError, load_identity, client_identity_dir

    try:
        ident = load_identity(client_identity_dir(cluster_dir, "cli"))
    except (IdentityError, OSError) as exc:
        raise RunnerError(f"the context's cli identity cannot be used: {exc}") from None

    def role_of(node: str) -> str:  # call-control subscribers are named <role>-subN
        return node if node in ROLES else node.rsplit("-sub", 1)[0]

    async def one(node: str, svc: dict) -> Row:
        host, port = str(svc.get("host")), int(svc.get("grpc_port") or 0)
        reason = ""
        try:
            state, reason = await health_detail(ident, host, port, role_of(node), timeout)
        except Exception:
            state = "UNREACHABLE"
        ports = [{"name": k.removesuffix("_port"), "port": v, "protocol": "tcp"}
                 for k, v in sorted(svc.items()) if k.endswith("_port") and isinstance(v, int)]
        return Row(node, host, f"{port}/tcp (gRPC)", 0, state, 0, ports, "",
                   reason if state == "DEGRADED" else "")

    async def all_rows() -> list[Row]:
        return list(await asyncio.gather(*(one(n, s) for n, s in services.items())))

    return asyncio.run(all_rows())


STATUS_OK, STATUS_DOWN, STATUS_DEGRADED = 0, 3, 4


def status_exit_code(rows: list[Row]) -> int:
    """`ccmsec status` exit code: 0 every process serving; 3 one is down or not serving; 4 every
    process runs but one or more are DEGRADED (e.g. the event stream or a consumer lost, BUS-5)."""
    if any(r.state not in ("SERVING", "RUNNING", "DEGRADED") for r in rows):
        return STATUS_DOWN
    return STATUS_DEGRADED if any(r.state == "DEGRADED" for r in rows) else STATUS_OK


def cluster_pids(data_dir: Path) -> list[int]:
    state = read_state(data_dir) or {}
    pids = [int(state.get("supervisor_pid") or 0)]
    pids += [int(c.get("pid") or 0) for c in state.get("children", {}).values()]
    return [p for p in pids if pid_belongs_to(p, data_dir)]


def down(data_dir: Path, *, quiet: bool = False) -> int:
    """Stop the supervisor (which stops its children); kill leftovers by PID. Returns processes stopped."""
    data_dir = data_dir.resolve()
    before = cluster_pids(data_dir)
    if not before:
        return 0
    sup = supervisor_pid(data_dir)
    if sup:
        os.kill(sup, signal.SIGTERM)
    # The supervisor's own budget when it is longer (phone-sim's final save of phones.json).
    budget = (read_state(data_dir) or {}).get("stop_timeout")
    budget = float(budget) + 4.0 if isinstance(budget, (int, float)) and 0 < budget < 4 * 3600 else 0.0
    deadline = time.monotonic() + max(DOWN_TIMEOUT, budget)
    while time.monotonic() < deadline and cluster_pids(data_dir):
        if not quiet:
            _progress(f"stopping cluster in {data_dir}: {len(cluster_pids(data_dir))} processes left")
        time.sleep(0.2)
    for pid in cluster_pids(data_dir):  # the supervisor could not finish: stop its children ourselves
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    # Anything else started for this cluster (e.g. a pool worker orphaned by a crashed service)
    # must not outlive it either.
    for pid in cluster_processes(data_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 2.0
    while (left := cluster_pids(data_dir) + cluster_processes(data_dir)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if left:
        raise RunnerError(f"processes still running after down: {sorted(set(left))}")
    if not quiet:
        _progress(f"stopped {len(before)} processes", final=True)
    return len(before)


RESTART_EVENT = re.compile(r"\bservice\.restart\.([a-z][a-z0-9-]*)")


def restarted_roles(events) -> list[str]:
    """The roles a change restarts, from its described events ('service.restart.<role> RST-4')."""
    roles: list[str] = []
    for text in events:
        match = RESTART_EVENT.search(text)
        if match and match.group(1) not in roles:
            roles.append(match.group(1))
    return roles


def service_pids(data_dir: Path) -> dict[str, int] | None:
    """PID of each service of the local cluster, or None when no local supervisor runs it (a
    compose cluster, or nothing running): then there is nothing this process can watch."""
    data_dir = data_dir.resolve()
    if not supervisor_pid(data_dir):
        return None
    children = (read_state(data_dir) or {}).get("children", {})
    return {r: int((c or {}).get("pid") or 0) for r, c in children.items()}


async def wait_restarted(data_dir: Path, roles: list[str], before: dict[str, int], *,
                         timeout: float = 90.0, progress: bool = False) -> dict[str, tuple[int, int]]:
    """Until each role runs in a process other than the one in `before` and answers SERVING.

    `before` must be read before the change was made, or a quick restart would go unnoticed.
    """
    data_dir = data_dir.resolve()
    cluster = cluster_for(data_dir)
    deadline = time.monotonic() + timeout
    while True:
        now = service_pids(data_dir) or {}
        moved = [r for r in roles if now.get(r) and now.get(r) != before.get(r)]
        states = await health_states(cluster) if moved else {}
        back = [r for r in moved if states.get(r) == "SERVING"]
        if progress:
            waiting = [r for r in roles if r not in back]
            _progress(f"restarting {', '.join(roles)}: {len(back)}/{len(roles)} serving again"
                      + (f" (waiting for {', '.join(waiting)})" if waiting else ""),
                      final=not waiting)
        if len(back) == len(roles):
            return {r: (before.get(r, 0), now[r]) for r in roles}
        if time.monotonic() > deadline:
            missing = [r for r in roles if r not in back]
            raise RunnerError(f"not restarted and serving after {timeout:.0f}s: {', '.join(missing)} "
                              f"(see `ccmsec status` and {data_dir / 'logs'})")
        await asyncio.sleep(0.3)


async def restart_services(data_dir: Path, roles: list[str], *, timeout: float = 90.0,
                           progress: bool = False) -> dict[str, tuple[int, int]]:
    """Publish `service.restart` for each role and wait until each runs in a new, SERVING process."""
    from ccmsec.runtime.bus import BusError, EventBus, make_event
    from ccmsec_proto import events_pb2

    data_dir = data_dir.resolve()
    before = service_pids(data_dir)
    if before is None:
        raise RunnerError(f"no cluster running from {data_dir}")
    cluster = cluster_for(data_dir)
    try:
        bus = EventBus.for_cli(data_dir, cluster.nats_url, connect_timeout=5)
    except BusError as exc:
        raise RunnerError(str(exc)) from None
    try:
        await bus.connect()
        # Straight onto the bus, no outbox: CHK-14 changes no stored state (nothing to commit the
        # events with), JetStream acknowledges each publish or it fails here, and the command waits
        # below until every role restarted — a lost restart is reported, never silently dropped.
        for role in roles:
            await bus.publish(make_event("service.restart", "cli", service_restart=events_pb2.ServiceRestart(
                role=role, rule="CHK-14", reason="administrator restarted the server")), target=role)
    except BusError as exc:
        raise RunnerError(str(exc)) from None
    finally:
        await bus.close()
    return await wait_restarted(data_dir, roles, before, timeout=timeout, progress=progress)


def format_rows(rows: list[Row]) -> str:
    headers = ("SERVICE", "ADDRESS", "PORTS", "METRICS", "PID", "STATE", "RESTARTS")
    table = [headers] + [(r.service, r.address, r.ports, r.metrics.removeprefix("http://") or "-",
                          str(r.pid or "-"), r.state, str(r.restarts)) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    lines += [f"{r.service}: DEGRADED: {r.reason}" for r in rows if r.state == "DEGRADED" and r.reason]
    return "\n".join(lines)


def is_alive(pid: int) -> bool:
    return alive(pid)

"""The compose suite: the cluster of docker-compose.yml on a real Docker engine.

Run by `scripts/compose-test` (which prepares the engine and builds the images once); collected
only with CCMSEC_COMPOSE=1. One cluster per test module (a compose project of its own), torn down with
its volumes at the end, pass or fail. The first one's host ports are picked free; each next module's
cluster is made beside the running one (a copy of its env file, `ccmsec compose ports --fix`) and
brought up while the running one's tests go on (`Clusters`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ccmsec.cluster import compose
from ccmsec.cluster.topology import ROLES

ROOT = Path(__file__).resolve().parents[2]
# The compose file's call-control nodes: the publisher and its subscriber(s) (LATER-7).
SUBSCRIBERS = tuple(compose.call_control_nodes()[1:])
# Failover timing of the test cluster (env file; docs/survivability.md): keepalive 5 s, so three
# missed ones are noticed in 15 s; fail-back after 15 s of the higher node answering, probed every
# 2 s — the defaults (30 s, 120 s, 10 s) would make the suite wait minutes for nothing.
FAILOVER_SETTINGS = {"CCMSEC_SCCP_KEEPALIVE": "5", "CCMSEC_PHONE_FAILBACK_STABLE": "15",
                     "CCMSEC_PHONE_PROBE_INTERVAL": "2", "CCMSEC_PHONE_STANDBY_INTERVAL": "5"}
# 480 s: on the shared 2-core host (load 30+) a service's Python imports alone took over 30 s
HEALTH_TIMEOUT = float(os.environ.get("CCMSEC_COMPOSE_HEALTH_TIMEOUT", "480"))

if os.environ.get("CCMSEC_COMPOSE") != "1":
    collect_ignore_glob = ["test_*.py"]  # run by scripts/compose-test (`.ci/run`), not the default suite


def free_port(protocol: str, taken: set[int] | None = None) -> int:
    """A free host port, none of `taken` (which it joins): the kernel can hand out the same
    ephemeral port twice in a row, and two variables on one port make `up` fail ("port is
    already allocated")."""
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    taken = set() if taken is None else taken
    while True:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in taken:
            taken.add(port)
            return port


@dataclass
class Cluster:
    project: str
    env_file: Path
    ports: dict[str, int]          # env variable -> host port
    workdir: Path
    log: list[str] = field(default_factory=list)
    beside: str = ""                # the project whose env file this one's was copied from
    fixed: str = ""                 # what `ccmsec compose ports --fix` said then

    # --- running docker and docker-compose ---------------------------------------------------
    def dc(self, *args: str, timeout: float = 300, check: bool = True,
           input: str | None = None) -> subprocess.CompletedProcess:
        cmd = ["docker-compose", "-p", self.project, "--env-file", str(self.env_file),
               "-f", str(ROOT / "docker-compose.yml"), "--project-directory", str(ROOT), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd[7:])} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def docker(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def container(self, service: str) -> str:
        out = self.docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}",
                          "--filter", f"label=com.docker.compose.service={service}").stdout.split()
        assert out, f"no container for {service}"
        return out[0]

    def inspect(self, service: str) -> dict:
        return json.loads(self.docker("inspect", self.container(service)).stdout)[0]

    def health(self, service: str) -> str:
        state = self.inspect(service)["State"]
        if "Health" in state:
            return state["Health"]["Status"]
        return state["Status"]

    def healths(self, services) -> dict[str, str]:
        """`health` of each service with two docker commands (not two per service): polled often."""
        ids = self.docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}").stdout.split()
        found: dict[str, str] = {}
        # check=False: a `run --rm cli` container may be gone between the two; the others are listed
        listed = self.docker("inspect", *ids, check=False).stdout if ids else ""
        for info in json.loads(listed or "[]"):
            service = info["Config"]["Labels"].get("com.docker.compose.service", "")
            state = info["State"]
            # the first listed (the newest) container of a service, as `container` picks it
            found.setdefault(service, state["Health"]["Status"] if "Health" in state else state["Status"])
        return {s: found.get(s, "no container") for s in services}

    def exec(self, service: str, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.docker("exec", self.container(service), *cmd, check=check, timeout=timeout)

    def cli(self, *args: str, timeout: float = 240, check: bool = True) -> subprocess.CompletedProcess:
        """`ccmsec ARGS` in the `cli` container (the cluster's network, its own identity)."""
        return self.dc("run", "--rm", "-T", "-e", "CCMSEC_ADMIN_TIMEOUT=120", "cli", *args,
                       timeout=timeout, check=check)

    def wait_healthy(self, services=("nats", "postgres", *ROLES, *SUBSCRIBERS),
                     timeout: float = HEALTH_TIMEOUT) -> float:
        start = time.monotonic()
        deadline = start + timeout
        last: dict[str, str] = {}
        while time.monotonic() < deadline:
            last = self.healths(services)
            if all(v == "healthy" for v in last.values()):
                return time.monotonic() - start
            time.sleep(0.5)
        logs = self.dc("logs", "--tail", "30", check=False).stdout[-6000:]
        raise AssertionError(f"not healthy after {timeout:.0f} s: {last}\n{logs}")

    def file(self, service: str, path: str) -> str:
        return self.exec(service, "cat", path).stdout

    def fetch_admin_credentials(self) -> tuple[Path, Path]:
        """What an operator copies out once: the cluster CA certificate and the admin password."""
        ca = self.workdir / "cluster-ca.crt"
        ca.write_text(self.file("callmanager", f"{compose.IDENTITY_DIR}/ca.crt"))
        pw = self.workdir / "admin-password"
        deadline = time.monotonic() + 60
        while True:
            proc = self.exec("callmanager", "cat", f"{compose.ADMIN_SECRET_DIR}/admin-password", check=False)
            if proc.returncode == 0 and proc.stdout.strip():
                break
            assert time.monotonic() < deadline, proc.stderr
            time.sleep(1)
        pw.touch(mode=0o600)
        pw.write_text(proc.stdout)
        return ca, pw

    def address(self, service: str) -> str:
        """The container's address on the cluster's network (what phones' configurations carry)."""
        return self.inspect(service)["NetworkSettings"]["Networks"][f"{self.project}_default"]["IPAddress"]

    def admin_url(self) -> str:
        return f"https://127.0.0.1:{self.ports[compose.publish_variable('callmanager', 'admin_port')]}"

    def down(self) -> None:
        self.dc("--profile", "tools", "down", "-v", "--remove-orphans", "--timeout", "5", check=False)


def make_env_file(path: Path, project: str) -> dict[str, int]:
    ports = {}
    taken: set[int] = set()
    lines = [f"COMPOSE_PROJECT_NAME={project}", f"{compose.BIND_VARIABLE}=127.0.0.1"]
    for entries in compose.host_ports().values():
        for name, _default, _target, proto in entries:
            ports[name] = free_port(proto, taken)
            lines.append(f"{name}={ports[name]}")
    for name in ("CCMSEC_PUBLISH_PROMETHEUS", "CCMSEC_PUBLISH_GRAFANA", compose.NATS_PUBLISH_VARIABLE):
        ports[name] = free_port("tcp", taken)
        lines.append(f"{name}={ports[name]}")
    for name, value in FAILOVER_SETTINGS.items():
        lines.append(f"{name}={value}")
    for name in (*compose.IMAGE_VARIABLES, compose.IMAGE_TAG_VARIABLE):
        if os.environ.get(name):
            lines.append(f"{name}={os.environ[name]}")
    path.write_text("\n".join(lines) + "\n")
    return ports


def _engine_or_fail() -> None:
    if shutil.which("docker-compose") is None or subprocess.run(
            ["docker", "info"], capture_output=True).returncode != 0:
        pytest.fail("no Docker engine: run the compose suite through scripts/compose-test")


def _project(name: str) -> str:
    return f"{os.environ.get('CCMSEC_COMPOSE_PREFIX', 'ccmsectest')}{name}"


def new_cluster(tmp_path_factory, name: str) -> Cluster:
    """A project with free host ports picked for its env file."""
    project = _project(name)
    workdir = tmp_path_factory.mktemp(project)
    env_file = workdir / "compose.env"
    ports = make_env_file(env_file, project)
    return Cluster(project, env_file, ports, workdir)


def cluster_beside(tmp_path_factory, name: str, first: Cluster) -> Cluster:
    """A second cluster the way an operator makes one beside a running cluster: a copy of the
    first one's env file (another project name, so every host port in it is taken by the first),
    then `ccmsec compose ports --fix`, which writes free ones (issue 13 item 3)."""
    from tests.conftest import run_cli

    project = _project(name)
    workdir = tmp_path_factory.mktemp(project)
    env_file = workdir / "compose.env"
    lines = [f"COMPOSE_PROJECT_NAME={project}" if ln.startswith("COMPOSE_PROJECT_NAME=") else ln
             for ln in first.env_file.read_text().splitlines()]
    env_file.write_text("\n".join(lines) + "\n")
    fixed = run_cli("compose", "ports", "--env-file", str(env_file), "--fix", timeout=120)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    values = dict(ln.split("=", 1) for ln in env_file.read_text().splitlines() if "=" in ln)
    ports = {k: int(values[k]) for k in first.ports}
    c = Cluster(project, env_file, ports, workdir)
    c.fixed = fixed.stdout
    c.log.append(f"env file copied from {first.project}'s, {fixed.stdout.count(' is taken; now ')} host ports "
                 "moved by `compose ports --fix`")
    c.beside = first.project
    return c


SUMMARY: list[str] = []  # each cluster's bring-up and teardown figures, printed at the end


def pytest_terminal_summary(terminalreporter):
    if SUMMARY:
        terminalreporter.write_line("compose clusters:")
        for line in SUMMARY:
            terminalreporter.write_line("  " + line)


class Clusters:
    """Every cluster of the session. A finished one is torn down in the background. Each module
    has a cluster of its own — no test sees another module's state. The `neighbour` fixture (the
    last test of test_cluster.py) brings the next module's cluster up beside the current one (a
    copy of its env file, fixed by `ccmsec compose ports --fix`) — the side-by-side check — and
    that module then finds it up."""

    def __init__(self, tmp_path_factory):
        self.tmp = tmp_path_factory
        self.clusters: dict[str, Cluster] = {}
        self.threads: dict[str, threading.Thread] = {}
        self.errors: dict[str, BaseException] = {}
        self.downs: list[threading.Thread] = []

    def start(self, name: str, beside: str | None = None) -> None:
        """`docker-compose up -d` of cluster NAME in the background; BESIDE: made beside that one,
        once that one's `up` has returned (its host ports are then bound)."""
        if name in self.threads:
            return

        def up() -> None:
            try:
                first = None
                if beside is not None:
                    self.threads[beside].join()
                    first = self.clusters.get(beside) if beside not in self.errors else None
                c = cluster_beside(self.tmp, name, first) if first else new_cluster(self.tmp, name)
                self.clusters[name] = c
                begun = time.monotonic()
                c.dc("up", "-d", "--no-build", timeout=600)
                c.log.append(f"up -d returned after {time.monotonic() - begun:.0f} s")
            except BaseException as exc:  # noqa: BLE001 — raised in the module that needs it
                self.errors[name] = exc

        self.threads[name] = threading.Thread(target=up, name=f"up-{name}", daemon=True)
        self.threads[name].start()

    def get(self, name: str) -> Cluster:
        """Cluster NAME, up and healthy (brought up now if nobody started it)."""
        self.start(name)
        self.threads[name].join()
        if name in self.errors:
            raise self.errors[name]
        c = self.clusters[name]
        c.log.append(f"healthy {c.wait_healthy():.0f} s after it was asked for")
        return c

    def stop(self, name: str) -> None:
        """Tear cluster NAME down (containers, networks, volumes) in the background."""
        thread = self.threads.pop(name, None)
        if thread is None:
            return

        def down() -> None:
            thread.join()
            if name in self.clusters:
                c = self.clusters.pop(name)
                begun = time.monotonic()
                c.down()
                c.log.append(f"down -v took {time.monotonic() - begun:.0f} s")
                SUMMARY.append(f"{c.project}: " + "; ".join(x.strip().replace("\n", " | ") for x in c.log))

        t = threading.Thread(target=down, name=f"down-{name}", daemon=True)
        t.start()
        self.downs.append(t)

    def close(self) -> None:
        for name in list(self.threads):
            self.stop(name)
        for t in self.downs:
            t.join(300)


def module_cluster_names(session) -> list[str]:
    """The compose modules of this run that use `cluster`, in the order they run."""
    names: list[str] = []
    for item in session.items:
        if "cluster" in getattr(item, "fixturenames", ()):
            name = cluster_name(item.module)
            if name not in names:
                names.append(name)
    return names


def cluster_name(module) -> str:
    return module.__name__.rsplit(".", 1)[-1].replace("test_", "").replace("_", "")


@pytest.fixture(scope="session")
def clusters(tmp_path_factory):
    _engine_or_fail()
    pool = Clusters(tmp_path_factory)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(scope="module")
def cluster(clusters, request):
    """This module's own cluster (already up when a `neighbour` test of the previous module made it).
    The next module's is not brought up while this one's tests run: on two cores an idle cluster's
    health checks and a bring-up beside the timing-bound faults slowed the suite (18 min against
    under 10 with one cluster at a time)."""
    name = cluster_name(request.module)
    clusters.start(name)
    try:
        yield clusters.get(name)
    finally:
        clusters.stop(name)


@pytest.fixture(scope="module")
def neighbour(clusters, cluster, request):
    """Another cluster up beside `cluster` at the same time: the next module's (used here read-only:
    it must reach its own module unchanged), or, when this module runs alone, one of its own."""
    order = module_cluster_names(request.session)
    name = cluster_name(request.module)
    following = order[order.index(name) + 1:] if name in order else []
    other = following[0] if following else f"{name}beside"
    clusters.start(other, beside=name)
    try:
        yield clusters.get(other)
    finally:
        if not following:
            clusters.stop(other)

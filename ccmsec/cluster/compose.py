"""docker-compose.yml, the Dockerfile, .dockerignore and compose.env.example, all rendered from the
topology (docs/compose.md).

Nothing here is edited by hand: `ccmsec compose render` writes the files and `--check` (and the unit
tests) fail when a committed copy differs from what the topology gives.

Rules the renderer follows (and why):
- Start order: a role waits (`service_started`) for a peer it calls only when that peer does not
  call back to it, directly or through others. Roles that call each other (callmanager and
  ctl-provider, callmanager → phone-sim → srst → callmanager) would otherwise form a cycle that
  compose refuses; they start independently and connect lazily, as gRPC channels retry on their own.
  Every role waits for the one-shot `init` step, and for NATS and PostgreSQL to be healthy.
- Identities (DEPLOY-1): `init` alone mounts the cluster CA (volume `ccmsec-ca`); it issues each
  role its identity into `identity-<role>`, a volume only that role mounts (read-only).
- Secrets (DEPLOY-2): no password in the file or in any environment. `init` generates one database
  password per stateful role (ccmsec/db/roles.py) into `db-secret-<role>`, a volume only that role's
  containers mount, and PostgreSQL's bootstrap (superuser) password into `postgres-secret`, which
  only PostgreSQL and the one-shot `db-init` step mount; `db-init` creates the per-owner roles from
  their SCRAM verifiers (it never sees their passwords). Roles that keep no table (keymanager,
  srtp-gateway, srst, phone-sim) get no database credential: their bus bookkeeping is SQLite in
  their own key volume. callmanager generates the `admin` password into `admin-secret` at its
  first start.
- gRPC from the host: each role's gRPC port is published too (mutual TLS: only holders of an
  identity from the cluster CA get past the handshake, and each RPC's policy applies), so the CLI
  on the host reaches phone-sim, CAPF, the CTL Provider … with the `cli` identity it is handed by
  `ccmsec compose client-bundle` (docs/compose.md). NATS's client port is published too (its
  `cli` nkey is in the bundle; NATS admits only known nkeys, BUS-1). Nothing unauthenticated is published.
- Published ports (DEPLOY-3): on `${CCMSEC_BIND_ADDRESS:-127.0.0.1}`, each host port a variable
  of the env file (compose.env.example lists them), so two clusters run side by side. A
  phone-facing port keeps its number by default, unless an earlier role already publishes that
  number and protocol (srst repeats callmanager's SCCP ports): then `PUBLISHED_PORT_SHIFT` higher.
- Containers (DEPLOY-4): one multi-stage Dockerfile — a build stage, one runtime stage every image
  shares, a metadata-only stage per role; an unprivileged user, every capability dropped, no new
  privileges, memory/CPU/process limits. A role with a port below 1024 (TFTP 69) gets the
  namespaced sysctl `net.ipv4.ip_unprivileged_port_start=0`. Base images are pinned official
  images by default and variables of the file (`CCMSEC_*_IMAGE`); our images are tagged with the
  project version.
- Data (issue 9 §1): no role can write a file another role trusts. Each node's /data is a volume
  of its own (`data-<node>`); what one role writes and others read — the CAPF certificate
  (`pki-capf` at /data/pki), the manufacturer CA certificate (`manufacturer-ca` at
  /data/manufacturer) and each server's certificate the CTL Provider falls back to
  (`servers-<node>` at /data/servers/<node>) — is a volume its writer alone mounts read-write and
  its readers mount read-only (`shared_volumes`). A role that is not `persistent` also gets its
  own folder (/data/<role>) on a tmpfs so its state is lost on restart, as the topology asks.
- Call-control subscribers (LATER-7): `callmanager-sub1`… (COMPOSE_SUBSCRIBERS in the committed
  file, `render --subscribers N` for another number) run the callmanager image with their own
  identity and key volumes, `CCMSEC_CALLMANAGER_PUBLISHER=false`; their SCCP ports and gRPC are
  published like the publisher's (variables `CCMSEC_PUBLISH_CALLMANAGER_SUBN_*`, after every
  role's so the roles' defaults stay put), not the administration API (the publisher's alone). Every role gets the group
  `CCMSEC_CALL_CONTROL_NODES` (publisher first, at most three, compose names) and the failover
  timing variables of the env file (FAILOVER_VARIABLES) it reads. Every callmanager node gets
  `CCMSEC_CLUSTER_CALL_CONTROL_NODES`, every call-control node's name however many
  (topology.cluster_nodes_env, as the local runner sets it): a reset on a server (RST-9) naming
  another is refused.
- Private keys (DEPLOY-1): each role keeps its own keys (its server key, the CAPF CA key, the
  simulated manufacturer CA key) in `keys-<role>`, a volume only that role mounts, at
  CCMSEC_KEY_DIR; the shared volume carries their certificates only.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from pathlib import Path

import yaml

from ccmsec.cluster.topology import (GRPC_PORT, MAX_SUBSCRIBERS, METRICS_PORT, NATS_PORT, SERVICES, ServiceSpec,
                                     call_control_node_names, cluster_nodes_env, subscriber_name)
from ccmsec.db.roles import pg_role, uses_database

HEADER = "# generated by `ccmsec compose render`; do not edit\n"
PKI_VOLUME = "pki-capf"                 # /data/pki: the CAPF certificate (capf writes)
MANUFACTURER_VOLUME = "manufacturer-ca"  # the manufacturer CA certificate (phone-sim writes)
MANUFACTURER_DIR = "/data/manufacturer"
CA_VOLUME = "ccmsec-ca"
CLI_VOLUME = "cli-data"
NATS_CONFIG_VOLUME = "nats-config"
PG_SECRET_VOLUME = "postgres-secret"
NATS_VOLUME = "nats-data"
POSTGRES_VOLUME = "postgres-data"
PUBLISHED_PORT_SHIFT = 10000
GRPC_HOST_PORT_BASE = 15051  # default host port of the first role's published gRPC port (mTLS)
APP_UID = 10001
POSTGRES_UID = 999  # the official postgres image's (Debian variant) postgres user
UV_VERSION = "0.13.9"  # the uv that wrote uv.lock; pinned so image builds are repeatable
# Base images: pinned official images by default; each is a variable of the compose file (and a
# build argument of the Dockerfile), so a machine without a registry points them at its own
# builds (scripts/compose-test does) without retagging anything under an official name.
PYTHON_IMAGE = "python:3.11.11-slim-bookworm"
NATS_IMAGE = "nats:2.10.24-alpine"
POSTGRES_IMAGE = "postgres:16.6-bookworm"
PROMETHEUS_IMAGE = "prom/prometheus:v2.55.1"
GRAFANA_IMAGE = "grafana/grafana:11.3.1"
IMAGE_VARIABLES = {
    "CCMSEC_PYTHON_IMAGE": PYTHON_IMAGE, "CCMSEC_NATS_IMAGE": NATS_IMAGE,
    "CCMSEC_POSTGRES_IMAGE": POSTGRES_IMAGE, "CCMSEC_PROMETHEUS_IMAGE": PROMETHEUS_IMAGE,
    "CCMSEC_GRAFANA_IMAGE": GRAFANA_IMAGE,
}
IMAGE_TAG_VARIABLE = "CCMSEC_IMAGE_TAG"
BIND_VARIABLE = "CCMSEC_BIND_ADDRESS"
BIND_DEFAULT = "127.0.0.1"  # published ports listen on loopback unless the env file says otherwise
# The event bus's client port, published for the CLI on the host (its `cli` nkey from the client
# bundle): NATS authenticates every connection by nkey and applies its role's subjects (BUS-1), so
# nothing unauthenticated is published. Plain NATS like the local runner's (the nkey is a signed
# challenge, never sent); on loopback by default like every published port.
NATS_PUBLISH_VARIABLE = "CCMSEC_PUBLISH_NATS"
NATS_PUBLISH_DEFAULT = 14222  # not 4222: a NATS server of the host's own (or a local runner's) keeps it
DOCKERFILE = "docker/Dockerfile"
VENV_PYTHON = "/app/.venv/bin/python"
IDENTITY_DIR = "/run/ccmsec/identity"
DB_PASSWORD_DIR = "/run/ccmsec/db"
DB_PASSWORD_FILE = f"{DB_PASSWORD_DIR}/password"
ADMIN_SECRET_DIR = "/run/ccmsec/admin"
KEY_DIR = "/run/ccmsec/keys"  # the role's own private keys (volume keys-<role>)
# No password in the file or the environment: the init step generates each stateful role's database
# password into a volume only that role mounts (CCMSEC_DATABASE_PASSWORD_FILE), PostgreSQL's
# bootstrap password into its own (POSTGRES_PASSWORD_FILE); db-init makes the per-owner roles.
PG_BOOTSTRAP_USER = "ccmsec"  # PostgreSQL's superuser: only postgres and db-init hold its password
PG_DATABASE = "ccmsec"
PG_ROLES_FILE = "roles.json"  # the per-owner roles' SCRAM verifiers, beside the bootstrap password
# A role without tables keeps its bus bookkeeping (handled events, outbox) in its own key volume.
PRIVATE_DATABASE_URL = f"sqlite:///{KEY_DIR}/bus.db"


def db_secret_volume(role: str) -> str:
    return f"db-secret-{role}"


def database_url(role: str) -> str:
    """Where `role` keeps its state: PostgreSQL as its own role, or (no tables) its private SQLite."""
    if not uses_database(role):
        return PRIVATE_DATABASE_URL
    return f"postgresql://{pg_role(role)}@postgres:5432/{PG_DATABASE}"


DATABASE_URL = database_url("callmanager")
# A health check is a Python process (mutual TLS to the service's own gRPC health): every 10 s
# keeps its cost low on small machines; 30 s of timeout because a loaded 2-core host can take 15 s
# to start it.
HEALTH = {"interval": "10s", "timeout": "30s", "retries": 6, "start_period": "30s"}
# NATS's and PostgreSQL's checks are small programs (wget, pg_isready): every 2 s, since every
# service's start waits for them to be healthy (and after a restart of either, everything waits);
# 30 retries keep the minute a slow first start (initdb on a loaded host) had with 5 s x 12.
INFRA_HEALTH = {"interval": "2s", "timeout": "3s", "retries": 30}
# Call-control subscribers (LATER-7): callmanager nodes beside the publisher, each a service of its
# own (`callmanager-sub1`, …) running the callmanager image with its own identity and key volumes.
# The committed file has COMPOSE_SUBSCRIBERS; `ccmsec compose render --subscribers N` another number.
COMPOSE_SUBSCRIBERS = 1
# Failover timing (docs/survivability.md), variables of the env file with the services' defaults:
# variable -> (default, the roles that read it).
FAILOVER_VARIABLES = {
    "CCMSEC_SCCP_KEEPALIVE": ("30", ("callmanager", "srst")),
    "CCMSEC_PHONE_FAILBACK_STABLE": ("120", ("phone-sim",)),
    "CCMSEC_PHONE_PROBE_INTERVAL": ("10", ("phone-sim",)),
    "CCMSEC_PHONE_STANDBY_INTERVAL": ("30", ("phone-sim",)),
}
# Resource limits per container (memory, CPUs, processes).
LIMITS = {"mem_limit": "512m", "cpus": 1.0, "pids_limit": 256}
INFRA_LIMITS = {"mem_limit": "512m", "cpus": 1.0, "pids_limit": 512}


def project_version() -> str:
    """Our images are tagged with the project's version (pyproject.toml, else the installed one)."""
    import tomllib

    root = Path(__file__).resolve().parents[2] / "pyproject.toml"
    try:
        return tomllib.loads(root.read_text())["project"]["version"]
    except (OSError, KeyError, ValueError):
        from importlib.metadata import version

        return version("ccmsec")


def image_tag() -> str:
    """Our images' tag: CCMSEC_IMAGE_TAG of the env file, the project's version by default (so two
    checkouts can build and run their own images on one engine without replacing each other's)."""
    return var(IMAGE_TAG_VARIABLE, project_version())


def var(name: str, default) -> str:
    return "${%s:-%s}" % (name, default)


def publish_variable(role: str, port_name: str) -> str:
    """CCMSEC_PUBLISH_<ROLE>_<PORT>: the host port one published port takes (env file)."""
    short = port_name.removesuffix("_port")
    return f"CCMSEC_PUBLISH_{role.upper().replace('-', '_')}_{short.upper()}"


class ComposeError(ValueError):
    """The topology cannot be rendered (e.g. one port name with two numbers)."""


# --- start order --------------------------------------------------------------------------

def _reachable(graph: dict[str, tuple[str, ...]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


def start_dependencies(services: tuple[ServiceSpec, ...] = SERVICES) -> dict[str, list[str]]:
    """role -> peers it waits for: only peers that cannot reach back to it (no cycles by construction)."""
    known = {s.role for s in services}
    graph = {s.role: tuple(p for p in s.peers if p in known) for s in services}
    return {s.role: [p for p in graph[s.role] if s.role not in _reachable(graph, p)] for s in services}


# --- ports --------------------------------------------------------------------------------

def host_ports(services: tuple[ServiceSpec, ...] = SERVICES,
               subscribers: int = COMPOSE_SUBSCRIBERS) -> dict[str, list[tuple[str, int, int, str]]]:
    """node -> (variable, default host port, container port, protocol) for its public ports; the
    default host ports are unique per protocol (a later node repeating a number is shifted). Each
    role, then each call-control subscriber (LATER-7: `callmanager-subN`, call control's phone
    ports and gRPC — not the administration API, which is the publisher's alone); subscribers come
    last so the roles' defaults do not move with their number."""
    check_subscribers(subscribers)
    taken: set[tuple[int, str]] = set()
    out: dict[str, list[tuple[str, int, int, str]]] = {}
    has_callmanager = any(s.role == "callmanager" for s in services)
    sub_nodes = call_control_nodes(subscribers)[1:] if has_callmanager else []
    nodes = [(s.role, s, [p for p in s.ports if p.public]) for s in services]
    nodes += [(node, s, [p for p in s.ports if p.public and p.name != "admin_port"])
              for s in services if s.role == "callmanager" for node in sub_nodes]
    for node, _s, public in nodes:
        entries = []
        for p in public:
            host = p.number
            while (host, p.protocol) in taken:
                host += PUBLISHED_PORT_SHIFT
                if host > 65535:
                    raise ComposeError(f"no free host port for {node} {p.name}/{p.protocol}")
            taken.add((host, p.protocol))
            entries.append((publish_variable(node, p.name), host, p.number, p.protocol))
        out[node] = entries
    # every node's gRPC port (mutual TLS): the CLI on the host with its own `cli` identity
    for index, (node, _s, _public) in enumerate(nodes):
        host = GRPC_HOST_PORT_BASE + index
        if (host, "tcp") in taken:
            raise ComposeError(f"default host port {host}/tcp for {node}'s gRPC is taken")
        taken.add((host, "tcp"))
        out[node].append((publish_variable(node, "grpc_port"), host, GRPC_PORT, "tcp"))
    return out


def port_name(role: str, container_port: int, protocol: str) -> str:
    """The topology's name of one of a role's (or a call-control subscriber's) container ports
    (`grpc_port` for gRPC)."""
    if container_port == GRPC_PORT and protocol == "tcp":
        return "grpc_port"
    from ccmsec.cluster.topology import spec

    if re.fullmatch(r"callmanager-sub[0-9]+", role):
        role = "callmanager"

    return next(p.name for p in spec(role).ports if p.number == container_port and p.protocol == protocol)


def published_ports(services: tuple[ServiceSpec, ...] = SERVICES,
                    subscribers: int = COMPOSE_SUBSCRIBERS) -> dict[str, list[str]]:
    """node -> short-syntax port entries: ADDRESS:HOST:CONTAINER/PROTOCOL, address and host port
    variables of the env file (loopback and the topology's numbers by default)."""
    bind = var(BIND_VARIABLE, BIND_DEFAULT)
    return {role: [f"{bind}:{var(name, host)}:{target}/{proto}" for name, host, target, proto in entries]
            for role, entries in host_ports(services, subscribers).items()}


def env_example(services: tuple[ServiceSpec, ...] = SERVICES) -> str:
    """compose.env.example: every variable the compose file reads, with its default."""
    lines = [
        HEADER.rstrip("\n"),
        "# Copy to .env (or pass --env-file) and change what you need; every line is optional.",
        "# Two clusters side by side: another COMPOSE_PROJECT_NAME and other host ports.",
        "COMPOSE_PROJECT_NAME=ccmsec",
        "# Address the published ports listen on (loopback only by default).",
        f"{BIND_VARIABLE}={BIND_DEFAULT}",
        "# Host ports (container ports are fixed by the topology).",
    ]
    for role, entries in host_ports(services).items():
        for name, host, target, proto in entries:
            lines.append(f"{name}={host}")
    lines += ["# The event bus (NATS, nkey authentication only) for the CLI on the host.",
              f"{NATS_PUBLISH_VARIABLE}={NATS_PUBLISH_DEFAULT}"]
    lines += ["# Failover timing, seconds (LATER-7, docs/survivability.md): call control's and SRST's",
              "# keepalive (three missed = node lost); phones' stable period before fail-back, probes",
              "# of higher nodes, keepalive on the standby connection.",
              *(f"{name}={default}" for name, (default, _roles) in FAILOVER_VARIABLES.items())]
    lines += ["# Monitoring profile (--profile monitoring): Prometheus and Grafana.",
              "CCMSEC_PUBLISH_PROMETHEUS=9090", "CCMSEC_PUBLISH_GRAFANA=3000",
              "# Base images (pinned official images by default).",
              *(f"{k}={v}" for k, v in IMAGE_VARIABLES.items()),
              "# Our images' tag (the project's version by default).",
              f"{IMAGE_TAG_VARIABLE}={project_version()}"]
    return "\n".join(lines) + "\n"


def protocol_port_env(services: tuple[ServiceSpec, ...] = SERVICES) -> dict[str, str]:
    """CCMSEC_<PORT> for every protocol port of the topology (clients such as phone-sim need them too)."""
    env: dict[str, str] = {}
    for s in services:
        for p in s.ports:
            key = f"CCMSEC_{p.name.upper()}"
            if key in env and env[key] != str(p.number):
                raise ComposeError(f"{key} has two numbers in the topology: {env[key]} and {p.number}")
            env[key] = str(p.number)
    return env


# --- docker-compose.yml -------------------------------------------------------------------

def _hardening(caps: list[str] | None = None) -> dict:
    out: dict = {"cap_drop": ["ALL"]}
    if caps:
        out["cap_add"] = caps
    out["security_opt"] = ["no-new-privileges:true"]
    return out


def identity_volume(role: str) -> str:
    return f"identity-{role}"


def data_volume(node: str) -> str:
    return f"data-{node}"


def servers_volume(node: str) -> str:
    return f"servers-{node}"


def shared_volumes(nodes: tuple[str, ...] | list[str]) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(volume, mount point, the one node that writes it, the nodes that read it) for every file one
    role writes and another trusts (issue 9 §1), among `nodes` (the rendered roles and subscribers).
    The writer mounts it read-write, the readers read-only, nobody else at all."""
    present = set(nodes)
    cm = tuple(n for n in nodes if n == "callmanager" or n.startswith("callmanager-sub"))
    table = [
        # CAPF's certificate: the CA of every LSC call control accepts; the CTL Provider's fallback.
        # Read-only in every other container (CERT-3: every server holds it), so a write there fails.
        (PKI_VOLUME, "/data/pki", "capf", tuple(n for n in nodes if n != "capf")),
        # the manufacturer (phone-sim) CA: call control and CAPF check MICs with it; read-only elsewhere
        (MANUFACTURER_VOLUME, MANUFACTURER_DIR, "phone-sim", tuple(n for n in nodes if n != "phone-sim")),
        # each server certificate the CTL Provider lists when its server does not answer
        *((servers_volume(n), f"/data/servers/{n}", n, ("ctl-provider",)) for n in (*cm, "tftp-signer")),
    ]
    return [(vol, path, writer, tuple(r for r in readers if r in present))
            for vol, path, writer, readers in table if writer in present]


def data_mounts(node: str, nodes: tuple[str, ...] | list[str]) -> list[str]:
    """A node's data volumes: its own /data, then what it writes or reads of `shared_volumes`."""
    mounts = [f"{data_volume(node)}:/data"]
    for vol, path, writer, readers in shared_volumes(nodes):
        if node == writer:
            mounts.append(f"{vol}:{path}")
        elif node in readers:
            mounts.append(f"{vol}:{path}:ro")
    return mounts


# Roles that read the manufacturer CA certificate from MANUFACTURER_DIR (CCMSEC_MANUFACTURER_CA_DIR).
MANUFACTURER_ROLES = ("phone-sim", "capf", "callmanager")


def key_volume(role: str) -> str:
    return f"keys-{role}"


def project_dir_for(root: Path, compose_path: Path | None) -> str:
    """The project root as a compose file at `compose_path` reaches it: docker-compose resolves a
    relative path (build context, bind mount) against the compose file's folder, so a file rendered
    outside the root (`render --output ../elsewhere/x.yml`) names the root relative to its own
    folder; `.` for a file in the root (the committed one, and `--output -`)."""
    if compose_path is None:
        return "."
    rel = Path(os.path.relpath(Path(root).resolve(), Path(compose_path).resolve().parent)).as_posix()
    # `./` in front of a folder below the file's: a volume source without `.` or `/` is a volume name
    return rel if rel == "." or rel.startswith("..") else f"./{rel}"


def project_path(project_dir: str, rel: str) -> str:
    """`rel` (relative to the project root) as the compose file whose root is `project_dir` names it."""
    return f"./{rel}" if project_dir == "." else posixpath.join(project_dir, rel)


def _build(target: str, project_dir: str = ".") -> dict:
    return {"context": project_dir, "dockerfile": DOCKERFILE, "target": target,
            "args": {"PYTHON_IMAGE": var("CCMSEC_PYTHON_IMAGE", PYTHON_IMAGE)}}


def _init_service(services: tuple[ServiceSpec, ...], subscribers: tuple[str, ...] = (),
                  project_dir: str = ".") -> dict:
    """One-shot: the only container that holds the cluster CA key. Gives each role (and each
    call-control subscriber) its own identity folder (a volume only it mounts) and generates the
    per-owner database passwords."""
    volumes = [f"{CA_VOLUME}:/ca", f"{PG_SECRET_VOLUME}:/secrets/postgres", "grafana-secret:/secrets/grafana"]
    volumes += [f"{db_secret_volume(s.role)}:/secrets/db/{s.role}" for s in services if uses_database(s.role)]
    volumes += [f"{identity_volume(s.role)}:/identities/{s.role}" for s in services]
    volumes += [f"{identity_volume(node)}:/identities/{node}" for node in subscribers]
    volumes.append(f"{CLI_VOLUME}:/cli")
    volumes.append(f"{NATS_CONFIG_VOLUME}:/nats")
    return {
        "build": _build("tools", project_dir),
        "image": f"ccmsec/tools:{image_tag()}",
        "command": ["ccmsec", "compose", "init", "--ca", "/ca", "--identities", "/identities",
                    "--secrets", "/secrets", "--cli", "/cli", "--nats-config", "/nats/nats.conf", "--uid", str(APP_UID), "--postgres-uid",
                    str(POSTGRES_UID), "--grafana-uid", str(GRAFANA_UID),
                    *(f"--role={s.role}" for s in services),
                    *(f"--subscriber={node}" for node in subscribers)],
        "user": "0:0",  # hands each folder to its owner's uid; drops everything else
        "volumes": volumes,
        **_hardening(["CHOWN", "DAC_OVERRIDE", "FOWNER"]),
        "restart": "no",
        **LIMITS,
    }


def _db_init_service() -> dict:
    """One-shot, once PostgreSQL answers: the per-owner roles, their schemas and their only grants
    (ccmsec/db/roles.py), from the verifiers init wrote. Runs as PostgreSQL's uid: it reads the
    bootstrap password and the verifiers, nothing else."""
    return {
        "image": f"ccmsec/tools:{image_tag()}",
        "command": ["ccmsec", "compose", "db-init", "--url",
                    f"postgresql://{PG_BOOTSTRAP_USER}@postgres:5432/{PG_DATABASE}", "--secrets", "/secrets/postgres"],
        "user": f"{POSTGRES_UID}:{POSTGRES_UID}",
        "volumes": [f"{PG_SECRET_VOLUME}:/secrets/postgres:ro"],
        "depends_on": {"postgres": {"condition": "service_healthy"}},
        **_hardening(),
        "restart": "no",
        **LIMITS,
    }


def _infra_services() -> dict:
    return {
        "nats": {
            "image": var("CCMSEC_NATS_IMAGE", NATS_IMAGE),
            # BUS-1: users by public nkey only (rendered by init); JetStream in /data
            "command": ["-c", "/etc/ccmsec-nats/nats.conf", "-m", "8222"],
            "volumes": [f"{NATS_VOLUME}:/data", f"{NATS_CONFIG_VOLUME}:/etc/ccmsec-nats:ro"],
            # for the CLI on the host: every connection is by nkey, with its role's subjects (BUS-1)
            "ports": [f"{var(BIND_VARIABLE, BIND_DEFAULT)}:{var(NATS_PUBLISH_VARIABLE, NATS_PUBLISH_DEFAULT)}:{NATS_PORT}/tcp"],
            "depends_on": {"init": {"condition": "service_completed_successfully"}},
            "healthcheck": {
                "test": ["CMD", "wget", "-q", "--spider", "http://localhost:8222/healthz"],
                **INFRA_HEALTH,
            },
            **_hardening(),
            "restart": "unless-stopped",
            **INFRA_LIMITS,
        },
        "postgres": {
            "image": var("CCMSEC_POSTGRES_IMAGE", POSTGRES_IMAGE),
            "environment": {"POSTGRES_USER": PG_BOOTSTRAP_USER, "POSTGRES_DB": PG_DATABASE,
                            "POSTGRES_PASSWORD_FILE": "/run/secrets/postgres/password"},
            "volumes": [f"{POSTGRES_VOLUME}:/var/lib/postgresql/data",
                        f"{PG_SECRET_VOLUME}:/run/secrets/postgres:ro"],
            "depends_on": {"init": {"condition": "service_completed_successfully"}},
            "healthcheck": {
                "test": ["CMD", "pg_isready", "-U", "ccmsec", "-d", "ccmsec", "-h", "127.0.0.1"],
                **INFRA_HEALTH,
            },
            # the entrypoint prepares the data folder as root, then runs as postgres
            **_hardening(["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"]),
            "restart": "unless-stopped",
            **INFRA_LIMITS,
        },
    }


def call_control_nodes(subscribers: int = COMPOSE_SUBSCRIBERS) -> list[str]:
    """The callmanager nodes by compose service name, publisher first (LATER-7): the local
    runner's names too (topology.call_control_node_names)."""
    return call_control_node_names(check_subscribers(subscribers))


def _role_service(s: ServiceSpec, ports: list[str], waits_for: list[str], port_env: dict[str, str],
                  node: str | None = None, subscribers: int = COMPOSE_SUBSCRIBERS,
                  nodes: tuple[str, ...] = (), project_dir: str = ".") -> dict:
    """One node's service: a role's only instance, or (`node` given) a call-control subscriber —
    the callmanager image with its own identity and key volumes, not the publisher: it serves
    phones and reads the shared tables, no administration API; its SCCP and gRPC ports published."""
    node = node or s.role
    publisher = node == s.role
    env = {
        "CCMSEC_SERVICE": s.role,
        "CCMSEC_NODE": node,
        "CCMSEC_HOST": "0.0.0.0",
        "CCMSEC_DATA_DIR": "/data",
        "CCMSEC_IDENTITY_DIR": IDENTITY_DIR,
        "CCMSEC_KEY_DIR": KEY_DIR,
        "CCMSEC_NATS_URL": f"nats://nats:{NATS_PORT}",
        "CCMSEC_DATABASE_URL": database_url(s.role),
        # compose service names are the role names; compose DNS resolves them
        "CCMSEC_PEERS": json.dumps({r.role: r.role for r in SERVICES}, sort_keys=True),
        # the CallManager group of phones without a pool (publisher first, at most three), as
        # compose names; tftp-signer and the CTL Provider resolve them to the containers' addresses
        "CCMSEC_CALL_CONTROL_NODES": json.dumps(call_control_nodes(subscribers)[:3]),
        # every call-control node by name (callmanager's nodes: RST-9 refuses a node not among them)
        **cluster_nodes_env(s.role, subscribers),
        "CCMSEC_GRPC_PORT": str(GRPC_PORT),
        "CCMSEC_METRICS_PORT": str(METRICS_PORT),
        **port_env,
    }
    for name, (default, roles) in FAILOVER_VARIABLES.items():
        if s.role in roles:
            env[name] = var(name, default)
    if s.role in MANUFACTURER_ROLES:
        env["CCMSEC_MANUFACTURER_CA_DIR"] = MANUFACTURER_DIR
    volumes = [*data_mounts(node, nodes or (node,)), f"{identity_volume(node)}:{IDENTITY_DIR}:ro",
               f"{key_volume(node)}:{KEY_DIR}"]
    stateful = uses_database(s.role)
    if stateful:  # its own database password; subscribers share their role's (one per role)
        env["CCMSEC_DATABASE_PASSWORD_FILE"] = DB_PASSWORD_FILE
        volumes.append(f"{db_secret_volume(s.role)}:{DB_PASSWORD_DIR}:ro")
    if s.role == "callmanager":
        env["CCMSEC_CALLMANAGER_PUBLISHER"] = "true" if publisher else "false"
    if s.role == "callmanager" and publisher:
        env["CCMSEC_ADMIN_PASSWORD_FILE"] = f"{ADMIN_SECRET_DIR}/admin-password"
        volumes.append(f"admin-secret:{ADMIN_SECRET_DIR}")
    svc: dict = {
        "build": _build(s.role, project_dir),
        "image": f"ccmsec/{s.role}:{image_tag()}",
        "environment": env,
        "volumes": volumes,
    }
    if not s.persistent:
        svc["tmpfs"] = [f"/data/{s.role}:uid={APP_UID},gid={APP_UID},mode=0700"]
    if ports:
        svc["ports"] = ports
    if any(p.number < 1024 for p in s.ports):
        svc["sysctls"] = {"net.ipv4.ip_unprivileged_port_start": "0"}
    depends = {"init": {"condition": "service_completed_successfully"}, "nats": {"condition": "service_healthy"}}
    if stateful:
        depends["postgres"] = {"condition": "service_healthy"}
        depends["db-init"] = {"condition": "service_completed_successfully"}
    for peer in waits_for:
        depends[peer] = {"condition": "service_started"}
    svc["depends_on"] = depends
    svc["healthcheck"] = {"test": ["CMD", VENV_PYTHON, "-m", "ccmsec.runtime.healthcheck"], **HEALTH}
    svc.update(_hardening())
    svc["restart"] = "unless-stopped"  # also brings back a service that exits for a requested restart
    svc["stop_grace_period"] = "10s"
    svc.update(LIMITS)
    return svc


TOOLS_PROFILE = "tools"


def _cli_service(services: tuple[ServiceSpec, ...] = SERVICES, subscribers: int = COMPOSE_SUBSCRIBERS) -> dict:
    """`docker-compose run --rm cli <command>`: the command line inside the cluster's network, with
    its own `cli` identity and the administrator's password (phone-sim and the other services'
    services are reached over the network; from the host, a named context uses the published ports)."""
    return {
        "image": f"ccmsec/tools:{image_tag()}",
        "profiles": [TOOLS_PROFILE],
        "entrypoint": ["ccmsec"],
        "command": ["status"],
        # the host's side of the published ports, for `ccmsec compose client-bundle`
        "environment": {"CCMSEC_DATA_DIR": "/cli", BIND_VARIABLE: var(BIND_VARIABLE, BIND_DEFAULT),
                        NATS_PUBLISH_VARIABLE: var(NATS_PUBLISH_VARIABLE, NATS_PUBLISH_DEFAULT),
                        **{name: var(name, host) for entries in host_ports(services, subscribers).values()
                           for name, host, _target, _proto in entries}},
        "volumes": [f"{CLI_VOLUME}:/cli", f"admin-secret:{ADMIN_SECRET_DIR}:ro"],
        "depends_on": {"init": {"condition": "service_completed_successfully"}},
        **_hardening(),
        "restart": "no",
        **LIMITS,
    }


MONITORING_PROFILE = "monitoring"


MONITORING_DIR = "deploy/monitoring"
# Prometheus's scrape targets (file-based service discovery): written by `ccmsec compose render`
# with the compose file, so they follow `--subscribers N`; the folder is mounted (not the file), so
# a re-render is seen by a running Prometheus too.
PROMETHEUS_TARGETS_DIR = f"{MONITORING_DIR}/prometheus/targets"
PROMETHEUS_TARGETS = f"{PROMETHEUS_TARGETS_DIR}/ccmsec.yml"


def prometheus_targets_dir(subscribers: int = COMPOSE_SUBSCRIBERS) -> str:
    """The targets folder a compose file for `subscribers` mounts: the committed one for the
    committed number; a folder of its own under it for another number, so rendering another size
    (`--subscribers 2 --output …`) never rewrites the committed cluster's targets (Prometheus
    reads `targets/*.yml`, not sub-folders)."""
    if subscribers == COMPOSE_SUBSCRIBERS:
        return PROMETHEUS_TARGETS_DIR
    return f"{PROMETHEUS_TARGETS_DIR}/subscribers-{subscribers}"


def prometheus_targets_path(subscribers: int = COMPOSE_SUBSCRIBERS) -> str:
    return f"{prometheus_targets_dir(subscribers)}/ccmsec.yml"
MONITORING_FILES = {  # file in the project -> where the container reads it
    "prometheus": {
        f"{MONITORING_DIR}/prometheus/prometheus.yml": "/etc/prometheus/prometheus.yml",
        f"{MONITORING_DIR}/prometheus/ccmsec-rules.yml": "/etc/prometheus/rules/ccmsec-rules.yml",
        PROMETHEUS_TARGETS_DIR: "/etc/prometheus/targets",
    },
    "grafana": {
        f"{MONITORING_DIR}/grafana/provisioning": "/etc/grafana/provisioning",
        f"{MONITORING_DIR}/grafana/ccmsec-dashboard.json": "/var/lib/grafana/dashboards/ccmsec/ccmsec-dashboard.json",
    },
}
GRAFANA_UID = 472  # the official image's grafana user


def _monitoring_services(subscribers: int = COMPOSE_SUBSCRIBERS, project_dir: str = ".") -> dict:
    """Optional (`--profile monitoring`): Prometheus scraping every service's metrics port with the
    project's alert rules, Grafana with the project's dashboard (deploy/monitoring). Official
    images, pinned; Grafana's admin password generated by `init` and read from a file."""
    bind = var(BIND_VARIABLE, BIND_DEFAULT)
    targets = prometheus_targets_dir(subscribers)
    mounts = {name: [f"{project_path(project_dir, targets if src == PROMETHEUS_TARGETS_DIR else src)}:{dst}:ro"
                     for src, dst in files.items()]
              for name, files in MONITORING_FILES.items()}
    return {
        "prometheus": {
            "image": var("CCMSEC_PROMETHEUS_IMAGE", PROMETHEUS_IMAGE),
            "profiles": [MONITORING_PROFILE],
            "command": ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"],
            "volumes": [*mounts["prometheus"], "prometheus-data:/prometheus"],
            "ports": [f"{bind}:{var('CCMSEC_PUBLISH_PROMETHEUS', 9090)}:9090/tcp"],
            "healthcheck": {"test": ["CMD", "wget", "-q", "--spider", "http://localhost:9090/-/ready"],
                            "interval": "10s", "timeout": "5s", "retries": 6},
            **_hardening(),
            "restart": "unless-stopped",
            **INFRA_LIMITS,
        },
        "grafana": {
            "image": var("CCMSEC_GRAFANA_IMAGE", GRAFANA_IMAGE),
            "profiles": [MONITORING_PROFILE],
            "environment": {"GF_AUTH_ANONYMOUS_ENABLED": "false",
                            "GF_SECURITY_ADMIN_PASSWORD__FILE": "/run/secrets/grafana/admin-password"},
            "volumes": [*mounts["grafana"], "grafana-secret:/run/secrets/grafana:ro",
                        "grafana-data:/var/lib/grafana"],
            "ports": [f"{bind}:{var('CCMSEC_PUBLISH_GRAFANA', 3000)}:3000/tcp"],
            "depends_on": {"init": {"condition": "service_completed_successfully"},
                           "prometheus": {"condition": "service_healthy"}},
            "healthcheck": {"test": ["CMD", "wget", "-q", "--spider", "http://localhost:3000/api/health"],
                            "interval": "10s", "timeout": "5s", "retries": 6},
            **_hardening(),
            "restart": "unless-stopped",
            **INFRA_LIMITS,
        },
    }


def scrape_targets(services: tuple[ServiceSpec, ...] = SERVICES,
                   subscribers: int = COMPOSE_SUBSCRIBERS) -> list[str]:
    """Every node's metrics endpoint as compose names it: each role, and after callmanager its
    call-control subscribers (LATER-7) — the services `compose_model` renders."""
    check_subscribers(subscribers)
    out = []
    for s in services:
        nodes = call_control_nodes(subscribers) if s.role == "callmanager" else [s.role]
        out += [f"{node}:{METRICS_PORT}" for node in nodes]
    return out


def render_prometheus_targets(subscribers: int = COMPOSE_SUBSCRIBERS) -> str:
    """The monitoring profile's file-based service discovery (job `ccmsec` in prometheus.yml)."""
    body = yaml.safe_dump([{"targets": scrape_targets(subscribers=subscribers)}], sort_keys=False,
                          default_flow_style=False)
    return HEADER + body


def check_subscribers(subscribers: int) -> int:
    if not isinstance(subscribers, int) or not 0 <= subscribers <= MAX_SUBSCRIBERS:
        raise ComposeError(f"--subscribers: 0 to {MAX_SUBSCRIBERS} call-control subscribers, not {subscribers}")
    return subscribers


def compose_model(services: tuple[ServiceSpec, ...] = SERVICES, subscribers: int = COMPOSE_SUBSCRIBERS,
                  project_dir: str = ".") -> dict:
    """The compose document as plain data, keys in a fixed order; `subscribers` call-control
    subscribers follow the publisher (LATER-7); its build context and bind mounts name the project
    root as `project_dir` (relative to the compose file's folder, `project_dir_for`)."""
    check_subscribers(subscribers)
    ports = published_ports(services, subscribers)
    waits = start_dependencies(services)
    port_env = protocol_port_env(services)
    has_callmanager = any(s.role == "callmanager" for s in services)
    sub_nodes = tuple(call_control_nodes(subscribers)[1:]) if has_callmanager else ()
    doc_services = {"init": _init_service(services, sub_nodes, project_dir), **_infra_services(),
                    "db-init": _db_init_service()}
    nodes = (*(s.role for s in services), *sub_nodes)
    for s in services:
        doc_services[s.role] = _role_service(s, ports[s.role], waits[s.role], port_env, subscribers=subscribers,
                                             nodes=nodes, project_dir=project_dir)
        if s.role == "callmanager":
            for node in sub_nodes:
                doc_services[node] = _role_service(s, ports[node], waits[s.role], port_env, node=node,
                                                   subscribers=subscribers, nodes=nodes, project_dir=project_dir)
    doc_services["cli"] = _cli_service(services, subscribers)
    doc_services.update(_monitoring_services(subscribers, project_dir))
    volumes = ["prometheus-data", "grafana-data", "grafana-secret", CLI_VOLUME, NATS_CONFIG_VOLUME, NATS_VOLUME, POSTGRES_VOLUME,
               *(data_volume(n) for n in nodes), *(vol for vol, *_ in shared_volumes(nodes)),
               CA_VOLUME, PG_SECRET_VOLUME,
               "admin-secret", *(db_secret_volume(s.role) for s in services if uses_database(s.role)),
               *(identity_volume(s.role) for s in services),
               *(key_volume(s.role) for s in services),
               *(v(node) for node in sub_nodes for v in (identity_volume, key_volume))]
    return {
        "services": doc_services,
        "volumes": {v: {} for v in volumes},
    }


def render_compose(subscribers: int = COMPOSE_SUBSCRIBERS, project_dir: str = ".") -> str:
    body = yaml.safe_dump(compose_model(subscribers=subscribers, project_dir=project_dir), sort_keys=False, default_flow_style=False,
                          width=4096)
    return HEADER + body


# --- the Dockerfile and .dockerignore -----------------------------------------------------

def _writable_mount_points() -> list[str]:
    """Where the shared volumes are mounted, made in the image and owned by the app user: a new
    named volume takes its owner from the image's folder, so the writer can write its volume."""
    every = (*(s.role for s in SERVICES), *(subscriber_name(n) for n in range(1, MAX_SUBSCRIBERS + 1)))
    return sorted({path for _vol, path, *_ in shared_volumes(every)})


def render_dockerfile(services: tuple[ServiceSpec, ...] = SERVICES) -> str:
    """One multi-stage Dockerfile: a build stage (uv, the locked dependencies, every workspace
    package, no editable installs), one runtime stage every image shares (base image, user,
    the virtual environment — one layer for all), and one small final stage per role."""
    members = ["proto/pyproject.toml", *(f"services/{r.role}/pyproject.toml" for r in services)]
    lines = [
        HEADER.rstrip("\n"),
        "# Base image: a build argument (compose passes CCMSEC_PYTHON_IMAGE); the default is pinned.",
        f"ARG PYTHON_IMAGE={PYTHON_IMAGE}",
        "",
        "FROM ${PYTHON_IMAGE} AS build",
        "ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \\",
        "    UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never \\",
        "    UV_PROJECT_ENVIRONMENT=/app/.venv",
        f"RUN python3 -m venv /opt/uv && /opt/uv/bin/pip install --no-cache-dir uv=={UV_VERSION}",
        "WORKDIR /app",
        "# Third-party dependencies first: this layer is reused while only our source changes.",
        "# Every workspace member's pyproject.toml is needed for the workspace (and uv.lock) to resolve.",
        "COPY pyproject.toml uv.lock README.md ./",
        *(f"COPY {m} {m.rsplit('/', 1)[0]}/" for m in members),
        "RUN /opt/uv/bin/uv sync --frozen --no-dev --no-install-workspace --all-packages",
        "COPY ccmsec/ ccmsec/",
        "COPY proto/ccmsec_proto/ proto/ccmsec_proto/",
        *(f"COPY services/{r.role}/ services/{r.role}/" for r in services),
        "RUN /opt/uv/bin/uv sync --frozen --no-dev --no-editable --all-packages",
        "",
        "# What every image shares: no compiler, no uv, no source tree; an unprivileged user.",
        "FROM ${PYTHON_IMAGE} AS runtime",
        f"RUN groupadd --system --gid {APP_UID} ccmsec \\",
        f"    && useradd --system --uid {APP_UID} --gid ccmsec --home-dir /app --shell /usr/sbin/nologin ccmsec \\",
        f"    && mkdir -p /data {' '.join(_writable_mount_points())} \\",
        "       /run/ccmsec/identity /run/ccmsec/db /run/ccmsec/admin /run/ccmsec/keys \\",
        f"    && chown ccmsec:ccmsec /data {' '.join(_writable_mount_points())} \\",
        "       /run/ccmsec/identity /run/ccmsec/db /run/ccmsec/admin /run/ccmsec/keys \\",
        "    && chmod 0700 /run/ccmsec/identity /run/ccmsec/db /run/ccmsec/admin /run/ccmsec/keys",
        "COPY --from=build /app/.venv /app/.venv",
        "ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 CCMSEC_DATA_DIR=/data \\",
        "    CCMSEC_IDENTITY_DIR=/run/ccmsec/identity PATH=/app/.venv/bin:$PATH",
        "USER ccmsec",
        "WORKDIR /app",
        "",
        "# The one-shot init step (compose service `init`) and the command line.",
        "FROM runtime AS tools",
        'CMD ["ccmsec", "--help"]',
    ]
    for s in services:
        exposed = [f"{GRPC_PORT}/tcp", f"{METRICS_PORT}/tcp", *(f"{p.number}/{p.protocol}" for p in s.ports)]
        lines += [
            "",
            f"# {s.role}: {s.description}",
            f"FROM runtime AS {s.role}",
        ]
        if any(p.number < 1024 for p in s.ports):
            lines += ["# Binds a port below 1024 as a normal user: compose sets the namespaced sysctl",
                      "# net.ipv4.ip_unprivileged_port_start=0."]
        lines += [
            f"EXPOSE {' '.join(exposed)}",
            f"HEALTHCHECK --interval={HEALTH['interval']} --timeout={HEALTH['timeout']} "
            f"--retries={HEALTH['retries']} --start-period={HEALTH['start_period']} \\",
            f"    CMD [\"{VENV_PYTHON}\", \"-m\", \"ccmsec.runtime.healthcheck\"]",
            f'CMD ["/app/.venv/bin/{s.executable}"]',
        ]
    return "\n".join(lines) + "\n"


DOCKERIGNORE_PATTERNS = (
    ".git", ".ci", ".venv", "**/__pycache__", "**/*.pyc", ".pytest_cache", ".hypothesis",
    ".data", "build", "dist", "**/*.egg-info", "tests", "bench", "docs", "scripts", "deploy",
    "docker/standins", "docker-compose.yml", "compose.env.example", ".env", "*.env",
)


def render_dockerignore() -> str:
    return HEADER + "".join(f"{p}\n" for p in DOCKERIGNORE_PATTERNS)


def rendered_files(subscribers: int = COMPOSE_SUBSCRIBERS, project_dir: str = ".") -> dict[str, str]:
    """Every generated file, by path relative to the project root (the compose file's text for a
    file whose folder reaches the root as `project_dir`; every other file belongs in the root, where
    that compose file's build context and mounts look)."""
    return {"docker-compose.yml": render_compose(subscribers, project_dir), ".dockerignore": render_dockerignore(),
            DOCKERFILE: render_dockerfile(), "compose.env.example": env_example(),
            prometheus_targets_path(subscribers): render_prometheus_targets(subscribers)}


def stale_files(root: Path, compose_path: Path | None = None,
                subscribers: int = COMPOSE_SUBSCRIBERS) -> list[str]:
    """Generated files under `root` (the compose file at `compose_path` if given) that are missing
    or differ from what the topology gives."""
    stale = []
    for rel, text in rendered_files(subscribers, project_dir_for(root, compose_path)).items():
        path = compose_path if (rel == "docker-compose.yml" and compose_path) else root / rel
        try:
            current = path.read_text()
        except OSError:
            current = None
        if current != text:
            stale.append(str(path))
    return stale


# --- validation ---------------------------------------------------------------------------

_DURATION = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"}
_STR_LIST = {"type": "array", "items": {"type": "string"}}
_SCALAR = {"type": ["string", "number", "boolean", "null"]}

# A reduced compose-spec schema for the parts we use (the full one cannot be fetched here).
COMPOSE_SCHEMA = {
    "type": "object",
    "required": ["services"],
    "additionalProperties": False,
    "properties": {
        "services": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "anyOf": [{"required": ["image"]}, {"required": ["build"]}],
                "properties": {
                    "image": {"type": "string", "minLength": 1},
                    "build": {"oneOf": [
                        {"type": "string"},
                        {"type": "object", "additionalProperties": False, "required": ["context"],
                         "properties": {"context": {"type": "string"}, "dockerfile": {"type": "string"},
                                        "target": {"type": "string"},
                                        "args": {"type": "object", "additionalProperties": _SCALAR}}},
                    ]},
                    "user": {"type": "string"},
                    "profiles": _STR_LIST,
                    "cap_drop": _STR_LIST,
                    "cap_add": _STR_LIST,
                    "security_opt": _STR_LIST,
                    "mem_limit": {"type": ["string", "integer"]},
                    "cpus": {"type": ["number", "string"]},
                    "pids_limit": {"type": "integer"},
                    "command": {"oneOf": [{"type": "string"}, _STR_LIST]},
                    "entrypoint": {"oneOf": [{"type": "string"}, _STR_LIST]},
                    "environment": {"oneOf": [
                        {"type": "object", "additionalProperties": _SCALAR}, _STR_LIST]},
                    "volumes": _STR_LIST,
                    "tmpfs": {"oneOf": [{"type": "string"}, _STR_LIST]},
                    "ports": {"type": "array", "items": {"oneOf": [
                        {"type": "string"},
                        {"type": "object", "additionalProperties": False, "required": ["target"],
                         "properties": {
                             "target": {"type": "integer", "minimum": 1, "maximum": 65535},
                             "published": {"type": ["integer", "string"]},
                             "protocol": {"enum": ["tcp", "udp"]},
                             "mode": {"enum": ["host", "ingress"]},
                             "host_ip": {"type": "string"}}},
                    ]}},
                    "sysctls": {"type": "object", "additionalProperties": {"type": ["string", "number"]}},
                    "depends_on": {"oneOf": [
                        _STR_LIST,
                        {"type": "object", "additionalProperties": {
                            "type": "object", "additionalProperties": False, "required": ["condition"],
                            "properties": {"condition": {"enum": [
                                "service_started", "service_healthy", "service_completed_successfully"]}}}},
                    ]},
                    "healthcheck": {
                        "type": "object", "additionalProperties": False,
                        "properties": {
                            "test": {"oneOf": [{"type": "string"}, _STR_LIST]},
                            "interval": _DURATION, "timeout": _DURATION, "start_period": _DURATION,
                            "retries": {"type": "integer", "minimum": 1},
                            "disable": {"type": "boolean"},
                        }},
                    "restart": {"enum": ["no", "always", "on-failure", "unless-stopped"]},
                    "stop_grace_period": _DURATION,
                },
            },
        },
        "volumes": {"type": "object", "additionalProperties": {"type": ["object", "null"]}},
    },
}


def _schema_problems(doc) -> list[str]:
    try:
        import jsonschema
    except ImportError:  # structural checks below still run
        return []
    validator = jsonschema.Draft202012Validator(COMPOSE_SCHEMA)
    problems = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        problems.append(f"schema: {where}: {err.message}")
    return problems


def _named_volume(entry: str) -> str | None:
    source = entry.split(":", 1)[0] if ":" in entry else ""
    if not source or source.startswith(("/", ".", "~", "$")):
        return None  # bind mount or anonymous volume
    return source


_VARIABLE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}")


def _defaults(text: str) -> str:
    """`${NAME:-default}` -> default: what the file means when the env file sets nothing."""
    return _VARIABLE.sub(lambda m: m.group(1), text)


def _published(entry) -> tuple[int, str] | None:
    if isinstance(entry, dict):
        if "published" not in entry:
            return None
        return int(_defaults(str(entry["published"]))), entry.get("protocol", "tcp")
    text, _, proto = _defaults(str(entry)).partition("/")
    parts = text.split(":")
    if len(parts) < 2 or not parts[-2].isdigit():
        return None
    return int(parts[-2]), proto or "tcp"


def _one_shot(svc: dict) -> bool:
    return svc.get("restart") == "no"


def _has_healthcheck(svc) -> bool:
    health = svc.get("healthcheck") if isinstance(svc, dict) else None
    return isinstance(health, dict) and bool(health.get("test")) and not health.get("disable")


def _depends_targets(svc: dict) -> list[str]:
    dep = svc.get("depends_on") or []
    return list(dep) if isinstance(dep, (list, dict)) else []


def _cycle(services: dict) -> list[str] | None:
    state: dict[str, int] = {}  # 1 visiting, 2 done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for dep in _depends_targets(services.get(name) or {}):
            if dep not in services:
                continue
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[name] = 2
        return None

    for name in services:
        if name not in state and (found := visit(name)):
            return found
    return None


def validate_compose(text: str) -> list[str]:
    """Problems in a compose file (empty list = none): schema, references, volumes, ports, health."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [f"not YAML: {str(exc).splitlines()[0]}"]
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        return ["no `services` mapping at the top level"]
    problems = _schema_problems(doc)
    services: dict = doc["services"]
    declared = set((doc.get("volumes") or {}) if isinstance(doc.get("volumes"), dict) else ())
    used_ports: dict[tuple[int, str], str] = {}
    for name, svc in services.items():
        if not isinstance(svc, dict):
            problems.append(f"service {name}: not a mapping")
            continue
        for dep in _depends_targets(svc):
            if dep not in services:
                problems.append(f"service {name}: depends_on unknown service {dep!r}")
            elif (isinstance(svc.get("depends_on"), dict)
                  and (svc["depends_on"][dep] or {}).get("condition") == "service_healthy"
                  and not _has_healthcheck(services[dep])):
                problems.append(f"service {name}: waits for {dep!r} to be healthy but it has no healthcheck")
        if not _has_healthcheck(svc) and not _one_shot(svc):
            problems.append(f"service {name}: no healthcheck")
        for entry in svc.get("volumes") or []:
            vol = _named_volume(str(entry))
            if vol is not None and vol not in declared:
                problems.append(f"service {name}: volume {vol!r} is not declared under top-level volumes")
        for entry in svc.get("ports") or []:
            try:
                key = _published(entry)
            except (TypeError, ValueError):
                problems.append(f"service {name}: unreadable port entry {entry!r}")
                continue
            if key is None:
                continue
            if key in used_ports:
                problems.append(f"service {name}: host port {key[0]}/{key[1]} already published by "
                                f"{used_ports[key]}")
            else:
                used_ports[key] = name
    cycle = _cycle(services)
    if cycle:
        problems.append("depends_on cycle: " + " -> ".join(cycle))
    return problems

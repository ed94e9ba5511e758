"""`ccmsec compose render [--check] [--output FILE] [--subscribers N]`: docker-compose.yml and
Dockerfiles from the topology (N call-control subscribers beside the publisher; 1 by default).

`ccmsec compose init`: the compose file's one-shot `init` step. It alone mounts the cluster CA
(its own volume): it issues each role its identity into a folder only that role mounts, and
generates the database passwords — one per stateful role (ccmsec/db/roles.py) in a folder only that
role mounts, PostgreSQL's bootstrap password in PostgreSQL's — each a file readable by its own
user only, plus the roles' SCRAM verifiers for `db-init`. Idempotent: a second start keeps what is
there.

`ccmsec compose db-init`: the one-shot step after PostgreSQL is up — with the bootstrap password it
creates (or sets again) each stateful role's login role, its own schema and nothing else.

`ccmsec compose client-bundle` (run in the `cli` container): what the CLI on the host needs to reach
the cluster through its published ports — the `cli` identity (certificate and key from the cluster
CA, and its NATS nkey seed), the CA certificate, the administrator's password and the host side of
every published port (the event bus's too) —
as one JSON document on standard output, for `ccmsec context add NAME --client-bundle -`.

`ccmsec compose ports [--env-file FILE] [--fix]`: before `docker-compose up`, whether every host
port the env file publishes is free on its bind address. A taken one is named with its variable
and a free alternative (exit 1); `--fix` writes the alternatives into the env file instead, so a
second cluster made from a copy of the first one's env file comes up beside it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
from pathlib import Path

from ccmsec.cli.common import CliError
from ccmsec.cluster import compose
from ccmsec.db.roles import scram_verifier, uses_database
from ccmsec.fsutil import atomic_write
from ccmsec.textsafe import shown


def project_root() -> Path:
    """The checkout this ccmsec package comes from, else the current directory."""
    here = Path(compose.__file__).resolve().parents[2]
    if (here / "pyproject.toml").exists() and (here / "services").is_dir():
        return here
    return Path.cwd()


def _render(args) -> int:
    root = (args.root or project_root()).resolve()
    to_stdout = args.output is not None and str(args.output) == "-"
    compose_path = None if args.output is None or to_stdout else args.output.resolve()
    # docker-compose resolves the build context and the monitoring mounts against the compose
    # file's folder: a file written outside the root names the root from there, and every other
    # file (Dockerfile, targets, …) is written in the root, where those paths lead
    project_dir = compose.project_dir_for(root, compose_path)
    subscribers = args.subscribers
    try:
        compose.check_subscribers(subscribers)
    except compose.ComposeError as exc:
        raise CliError(str(exc)) from None
    problems = compose.validate_compose(compose.render_compose(subscribers, project_dir))
    if problems:  # the topology itself is wrong: say so rather than write a broken file
        raise CliError("rendered compose file has problems: " + "; ".join(problems))
    if args.check:
        stale = compose.stale_files(root, compose_path, subscribers)
        if stale:
            raise CliError("generated files are out of date (run `ccmsec compose render`): " + ", ".join(stale))
        print("generated files are up to date")
        return 0
    if to_stdout:
        sys.stdout.write(compose.render_compose(subscribers))
        return 0
    for rel, text in compose.rendered_files(subscribers, project_dir).items():
        path = compose_path if (rel == "docker-compose.yml" and compose_path) else root / rel
        try:
            if path.exists() and path.read_text() == text:
                continue
            atomic_write(path, text.encode())
        except OSError as exc:
            raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None
        print(f"wrote {path}")
    if project_dir != ".":
        print(f"{compose_path} names the project root {root} as {project_dir} (build context, monitoring files)")
    return 0


SECRET_BYTES = 24
SUBSCRIBER_NAME = re.compile(r"callmanager-sub[1-9][0-9]*")


def _owned(path: Path, uid: int | None, mode: int) -> None:
    os.chmod(path, mode)
    if uid is not None and os.geteuid() == 0:
        os.chown(path, uid, uid)


def _secret_file(path: Path, uid: int | None, value: str | None = None) -> str:
    """The secret in `path`, generated (0600, owned by `uid`) when missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        atomic_write(path, ((value or secrets.token_urlsafe(SECRET_BYTES)) + "\n").encode(), mode=0o600)
    _owned(path, uid, 0o600)
    _owned(path.parent, uid, 0o700)
    return path.read_text().strip()


def _cli_data(args, roles: list[str], subscribers: list[str] = ()) -> None:
    """The `cli` container's data folder: its own client identity, the CA certificate (not the
    key), where the services are (compose names) and a link to the administrator's password."""
    import json

    from ccmsec.cluster import pki
    from ccmsec.cluster.compose import ADMIN_SECRET_DIR
    from ccmsec.cluster.topology import GRPC_PORT, METRICS_PORT, spec

    cli = args.cli
    pki.issue_client_identity(args.ca, "cli", out_dir=cli / "identities" / "clients" / "cli")
    atomic_write(cli / "pki" / pki.CA_CERT, (args.ca / "pki" / pki.CA_CERT).read_bytes())
    services = {}
    for role in roles:
        ports = {"grpc_port": GRPC_PORT, "metrics_port": METRICS_PORT,
                 **{p.name: p.number for p in spec(role).ports}}
        services[role] = {"host": role, **ports}
    if "callmanager" in services:
        # a subscriber: call control's ports without the administration API (the publisher's)
        node_ports = {k: v for k, v in services["callmanager"].items() if k not in ("host", "admin_port")}
        for node in subscribers:
            services[node] = {"host": node, **node_ports}
    admin = spec("callmanager").ports
    admin_port = next(p.number for p in admin if p.name == "admin_port")
    endpoints = {"admin_url": f"https://callmanager:{admin_port}", "nats_url": "nats://nats:4222",
                 "services": services}
    atomic_write(cli / "run" / "endpoints.json", json.dumps(endpoints, indent=2, sort_keys=True).encode())
    link = cli / "admin-password"
    if not link.is_symlink():
        link.symlink_to(f"{ADMIN_SECRET_DIR}/admin-password")
    for path in [cli, *cli.rglob("*")]:
        if path.is_symlink():
            continue
        private = path.is_dir() or path.suffix in (".key", ".nk")
        _owned(path, args.uid, 0o700 if path.is_dir() else (0o600 if private else 0o644))


def _init(args) -> int:
    from ccmsec.cluster import pki
    from ccmsec.runtime.identity import IdentityError, admin_api_identity_dir

    roles = args.role or []
    subscribers = args.subscriber or []
    for node in subscribers:
        if not SUBSCRIBER_NAME.fullmatch(node):
            raise CliError(f"--subscriber '{shown(node)}': a call-control subscriber is named callmanager-subN")
    if subscribers and "callmanager" not in roles:
        raise CliError("--subscriber: call-control subscribers need the callmanager role (--role callmanager)")
    try:
        pki.ensure_cluster_ca(args.ca)
        for role, node in [*((r, r) for r in roles), *(("callmanager", n) for n in subscribers)]:
            out = args.identities / node
            publisher = node not in subscribers  # a subscriber mounts no administration API
            held = pki.issue_service_identity(args.ca, role, node, out_dir=out, admin_api=publisher)
            folders = [out] + ([admin_api_identity_dir(out)] if role == "callmanager" and publisher else [])
            for folder in folders:
                for f in folder.iterdir():
                    if f.is_file():
                        _owned(f, args.uid, 0o600 if f.suffix in (".key", ".nk") else 0o644)
                _owned(folder, args.uid, 0o700)
            print(f"{held.identity.uri}: issued into its own volume")
        folders = [args.identities / node for node in [*roles, *subscribers]]
        if args.cli is not None:
            _cli_data(args, roles, subscribers)
            folders.append(args.cli / "identities" / "clients" / "cli")
        if args.nats_config is not None:
            # BUS-1: NATS knows every container's public nkey and nothing else; the operator's
            # seed stays with the CA in init's own volume.
            text = pki.nats_config(args.ca, folders, listen="0.0.0.0:4222", store_dir="/data",
                                   server_name="ccmsec")
            atomic_write(args.nats_config, text.encode(), mode=0o644)
            print(f"NATS configuration: {len(folders)} users by public key, no anonymous user")
        _secret_file(args.secrets / "postgres" / "password", args.postgres_uid)
        # one password per stateful role, in a folder only its containers mount; PostgreSQL (and
        # db-init) get only its SCRAM verifier
        verifiers = {role: scram_verifier(_secret_file(args.secrets / "db" / role / "password", args.uid))
                     for role in roles if uses_database(role)}
        roles_file = args.secrets / "postgres" / compose.PG_ROLES_FILE
        atomic_write(roles_file, json.dumps(verifiers, indent=2, sort_keys=True).encode(), mode=0o600)
        _owned(roles_file, args.postgres_uid, 0o600)
        print(f"database: one password per stateful role ({', '.join(sorted(verifiers)) or 'none'}), "
              "each in its own volume; the bootstrap password only for PostgreSQL and db-init")
        if (args.secrets / "grafana").is_dir():
            _secret_file(args.secrets / "grafana" / "admin-password", args.grafana_uid)
    except IdentityError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"init: {exc.filename or ''}: {exc.strerror or exc}") from None
    return 0


def _db_init(args) -> int:
    """Create the per-owner roles once PostgreSQL answers (compose waits for its health check;
    a restart of the server in between is retried for a minute)."""
    import asyncio
    import time

    from sqlalchemy.engine import make_url

    from ccmsec.db.roles import RoleError, provision

    try:
        password = (args.secrets / "password").read_text().strip()
        verifiers = json.loads((args.secrets / compose.PG_ROLES_FILE).read_text())
    except OSError as exc:
        raise CliError(f"db-init: {exc.filename}: {exc.strerror}") from None
    except ValueError:
        raise CliError(f"db-init: {args.secrets / compose.PG_ROLES_FILE}: not JSON (run init again)") from None
    if not isinstance(verifiers, dict) or not all(isinstance(v, str) for v in verifiers.values()):
        raise CliError(f"db-init: {args.secrets / compose.PG_ROLES_FILE}: expected role -> verifier")
    url = make_url(args.url).set(password=password).render_as_string(hide_password=False)
    deadline = time.monotonic() + args.wait
    while True:
        try:
            names = asyncio.run(provision(url, verifiers))
            break
        except RoleError as exc:
            if time.monotonic() > deadline or "cannot provision" not in str(exc):
                raise CliError(str(exc)) from None
            time.sleep(1)
    print(f"database roles: {', '.join(names)} — each owns its schema only (no grant on another's)")
    return 0


BUNDLE_FORMAT = "ccmsec-client-bundle/1"


def _client_bundle(args) -> int:
    """The bundle for `ccmsec context add --client-bundle` (see the module's docstring)."""
    import json

    from ccmsec.cli.common import default_data_dir
    from ccmsec.cluster.compose import (ADMIN_SECRET_DIR, BIND_DEFAULT, BIND_VARIABLE, NATS_PUBLISH_DEFAULT,
                                        NATS_PUBLISH_VARIABLE, host_ports, port_name)

    data = default_data_dir()
    ident = data / "identities" / "clients" / "cli"
    try:
        files = {p.name: p.read_text() for p in sorted(ident.iterdir()) if p.is_file()}
        ca = (data / "pki" / "cluster-ca.crt").read_text()
        password = Path(ADMIN_SECRET_DIR, "admin-password").read_text().strip()
    except OSError as exc:
        raise CliError(f"client-bundle: {exc.filename or ''}: {exc.strerror or exc} (run it in compose's "
                       "`cli` container: docker-compose run --rm -T cli compose client-bundle)") from None
    bind = os.environ.get(BIND_VARIABLE) or BIND_DEFAULT
    if bind in ("0.0.0.0", "::"):  # listening everywhere: this host reaches it on loopback
        bind = "127.0.0.1"
    services: dict[str, dict] = {}
    from ccmsec.cluster.topology import MAX_SUBSCRIBERS, ROLES

    for role, entries in host_ports(subscribers=MAX_SUBSCRIBERS).items():
        # a call-control subscriber is in the bundle when the compose file rendered it (its
        # variables are in this container's environment), whatever their number
        if role not in ROLES and not any(name in os.environ for name, *_ in entries):
            continue
        ports = {port_name(role, target, proto): int(os.environ.get(name) or default)
                 for name, default, target, proto in entries}
        services[role] = {"host": bind, **ports}
    admin_url = f"https://{bind}:{services['callmanager']['admin_port']}"
    if "nats.nk" not in files:
        raise CliError(f"client-bundle: {ident} has no nats.nk (the cli identity's NATS nkey; run "
                       "`docker-compose up init` again)")
    # the event bus's published port: the cli identity's nkey (nats.nk above) authenticates there
    nats_url = f"nats://{bind}:{int(os.environ.get(NATS_PUBLISH_VARIABLE) or NATS_PUBLISH_DEFAULT)}"
    bundle = {"format": BUNDLE_FORMAT, "admin_url": admin_url, "user": "admin", "password": password,
              "ca": ca, "identity": files, "services": services, "nats_url": nats_url}
    if sys.stdout.isatty():
        print("client-bundle: holds the cli key and the admin password; pipe it into "
              "`ccmsec context add NAME --client-bundle -`", file=sys.stderr)
    sys.stdout.write(json.dumps(bundle, indent=2, sort_keys=True) + "\n")
    return 0


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as docker-compose reads an env file (comments and blank lines skipped)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise CliError(f"compose ports: {path}: {exc.strerror or exc}") from None
    out = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
            raise CliError(f"compose ports: {path}:{number}: not a KEY=VALUE line: {line[:80]!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def port_is_free(address: str, port: int, protocol: str) -> bool:
    """Whether a listener could bind ADDRESS:PORT now, as Docker's port proxy does when a
    container starts (SO_REUSEADDR for TCP, like it: a closing connection does not count). A port
    below 1024 this user may not bind counts as free: the engine binds it as root."""
    import socket

    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    with socket.socket(family, kind) as s:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except PermissionError:
            return True
        except OSError:
            return False
    return True


_PUBLISHED = re.compile(r"^\$\{(?P<bind>\w+):-[^}]*\}:\$\{(?P<name>\w+):-(?P<default>\d+)\}:\d+/(?P<proto>tcp|udp)$")


def published_host_ports(env: dict[str, str], compose_file: Path | None = None,
                         profiles: tuple[str, ...] = ()) -> list[tuple[str, int, str]]:
    """(variable, host port, protocol) of every port the compose file publishes with this env —
    the services without a profile and those of PROFILES: the env's value (the shell's
    environment first, as docker-compose reads it) or the compose file's default."""
    import yaml

    if compose_file is None:
        doc = compose.compose_model()
    else:
        try:
            doc = yaml.safe_load(compose_file.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise CliError(f"compose ports: {compose_file}: {getattr(exc, 'strerror', None) or exc}") from None
    out = []
    for svc in (doc.get("services") or {}).values():
        if svc.get("profiles") and not set(svc["profiles"]) & set(profiles):
            continue
        for entry in svc.get("ports") or ():
            m = _PUBLISHED.match(str(entry))
            if not m:
                raise CliError(f"compose ports: a published port not of the rendered form: {entry!r}")
            name = m["name"]
            raw = os.environ.get(name) or env.get(name) or m["default"]
            if not raw.isdigit() or not 1 <= int(raw) <= 65535:
                raise CliError(f"compose ports: {name}={raw!r} is not a port number (1-65535)")
            out.append((name, int(raw), m["proto"]))
    return out


def check_ports(env: dict[str, str], compose_file: Path | None = None,
                profiles: tuple[str, ...] = ()) -> tuple[str, list[tuple[str, int, str, int]]]:
    """(bind address, [(variable, port, protocol, free alternative)] for each taken or repeated port)."""
    bind = os.environ.get(compose.BIND_VARIABLE) or env.get(compose.BIND_VARIABLE) or compose.BIND_DEFAULT
    probe = {"0.0.0.0": "0.0.0.0", "::": "::"}.get(bind, bind)
    ports = published_host_ports(env, compose_file, profiles)
    claimed = {(port, proto) for _n, port, proto in ports}
    seen: set[tuple[int, str]] = set()
    bad = []
    for name, port, proto in ports:
        repeated = (port, proto) in seen
        seen.add((port, proto))
        if not repeated and port_is_free(probe, port, proto):
            continue
        alternative = port
        while True:  # the next port up that is free and that no other variable of the file takes
            alternative = alternative + 1 if alternative < 65535 else 1024
            if (alternative, proto) not in claimed and port_is_free(probe, alternative, proto):
                break
        claimed.add((alternative, proto))
        bad.append((name, port, proto, alternative))
    return bind, bad


def _ports(args) -> int:
    path = args.env_file
    env = read_env_file(path) if path.exists() or args.env_file_given else {}
    compose_file = args.file or (project_root() / "docker-compose.yml")
    if not compose_file.exists() and args.file is None:
        compose_file = None  # no checkout here: the compose file this ccmsec renders
    bind, bad = check_ports(env, compose_file, tuple(args.profile))
    if not bad:
        count = len(published_host_ports(env, compose_file, tuple(args.profile)))
        print(f"compose ports: the {count} published ports of {path} are free on {bind}")
        return 0
    if args.fix:
        lines = path.read_text().splitlines() if path.exists() else []
        new = {name: alt for name, _port, _proto, alt in bad}
        for i, line in enumerate(lines):
            key = line.partition("=")[0].strip()
            if key in new and not line.lstrip().startswith("#"):
                lines[i] = f"{key}={new.pop(key)}"
        lines += [f"{key}={alt}" for key, alt in new.items()]
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
        atomic_write(path, ("\n".join(lines) + "\n").encode(), mode=mode)
        for name, port, proto, alt in bad:
            print(f"compose ports: {name}: {bind}:{port}/{proto} is taken; now {alt} in {path}")
        return 0
    for name, port, proto, alt in bad:
        print(f"compose ports: {name}={port}: {bind}:{port}/{proto} is taken (by another program, another "
              f"cluster, or this one already up); a free one: {name}={alt}", file=sys.stderr)
    raise CliError(f"{len(bad)} published port(s) taken: set the free ones above in {path}, or run "
                   f"`ccmsec compose ports --env-file {path} --fix` to write them, then `docker-compose up`")


def _ports_args(args) -> int:
    args.env_file_given = args.env_file is not None
    args.env_file = args.env_file or Path(".env")
    return _ports(args)


def register(sub) -> None:
    p = sub.add_parser("compose", help="docker-compose.yml and Dockerfiles rendered from the topology")
    csub = p.add_subparsers(dest="compose_command", metavar="ACTION")
    csub.required = True
    r = csub.add_parser("render", help="write docker-compose.yml, services/*/Dockerfile and .dockerignore")
    r.add_argument("--check", action="store_true",
                   help="write nothing; fail if a committed file differs from the rendered one")
    r.add_argument("--output", type=Path, default=None,
                   help="compose file to write or check (default: ROOT/docker-compose.yml; '-' = stdout); "
                        "outside ROOT it names ROOT relative to its own folder, and the other files "
                        "(Dockerfile, Prometheus targets) are still written in ROOT")
    r.add_argument("--root", type=Path, default=None,
                   help="project root holding services/ (default: this checkout)")
    r.add_argument("--subscribers", type=int, default=compose.COMPOSE_SUBSCRIBERS, metavar="N",
                   help=f"call-control subscribers beside the publisher (0-4, default "
                        f"{compose.COMPOSE_SUBSCRIBERS}; LATER-7): phones list the publisher and the "
                        "first two subscribers, then SRST")
    r.set_defaults(func=_render)
    i = csub.add_parser("init", help="compose's one-shot init step: identities and secrets (idempotent)")
    i.add_argument("--ca", type=Path, required=True, help="the folder holding the cluster CA (its own volume)")
    i.add_argument("--identities", type=Path, required=True, help="ROLE/ folders to issue into")
    i.add_argument("--secrets", type=Path, required=True, help="db/ and postgres/ (and grafana/) folders")
    i.add_argument("--cli", type=Path, default=None, help="the `cli` container's data folder")
    i.add_argument("--nats-config", type=Path, default=None,
                   help="write the NATS server configuration (public keys, permissions) here")
    i.add_argument("--role", action="append", help="a role to issue an identity for (repeatable)")
    i.add_argument("--subscriber", action="append", metavar="NODE",
                   help="a call-control subscriber (callmanager-subN) to issue a callmanager identity for")
    i.add_argument("--uid", type=int, default=None, help="owner of the services' files")
    i.add_argument("--postgres-uid", type=int, default=None, help="owner of PostgreSQL's password file")
    i.add_argument("--grafana-uid", type=int, default=472, help="owner of Grafana's password file")
    i.set_defaults(func=_init)
    d = csub.add_parser("db-init", help="compose's one-shot db-init step: the per-owner PostgreSQL roles")
    d.add_argument("--url", required=True, help="PostgreSQL as the bootstrap (superuser) role, no password")
    d.add_argument("--secrets", type=Path, required=True,
                   help=f"the folder with the bootstrap `password` and {compose.PG_ROLES_FILE}")
    d.add_argument("--wait", type=float, default=60.0, help="seconds to retry while PostgreSQL is not up")
    d.set_defaults(func=_db_init)
    b = csub.add_parser("client-bundle", help="in the `cli` container: the cli identity, CA, admin password "
                                              "and host ports as JSON, for `context add --client-bundle -`")
    b.set_defaults(func=_client_bundle)
    o = csub.add_parser("ports", help="before `up`: is every published host port of the env file free? "
                                      "(a taken one: its variable and a free alternative; --fix writes them)")
    o.add_argument("--env-file", type=Path, default=None,
                   help="the env file docker-compose will read (default: .env here; none: the defaults)")
    o.add_argument("--fix", action="store_true", help="write free alternatives for the taken ports into the env file")
    o.add_argument("-f", "--file", type=Path, default=None,
                   help="the compose file (default: this checkout's docker-compose.yml)")
    o.add_argument("--profile", action="append", default=[],
                   help="also the ports of this profile's services (e.g. monitoring: Prometheus, Grafana)")
    o.set_defaults(func=_ports_args)

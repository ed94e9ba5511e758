"""docker-compose.yml, Dockerfiles and .dockerignore come from the topology and are valid."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from ccmsec.cli import compose as compose_cli
from ccmsec.cli.common import CliError
from ccmsec.cluster import compose
from ccmsec.cluster.topology import GRPC_PORT, ROLES, SERVICES, Port, ServiceSpec
from ccmsec.db.roles import uses_database
from ccmsec.runtime.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
DOCKER_COMPOSE = shutil.which("docker-compose")


def _doc() -> dict:
    return yaml.safe_load(compose.render_compose())


def _dump(doc: dict) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


# --- committed files == rendered files ---------------------------------------------------

def test_committed_compose_file_is_the_rendered_one():
    committed = (ROOT / "docker-compose.yml").read_text()
    assert committed == compose.render_compose(), "docker-compose.yml is stale: run `ccmsec compose render`"
    assert committed.startswith(compose.HEADER)


def test_committed_dockerfile_and_env_example_are_the_rendered_ones():
    assert (ROOT / compose.DOCKERFILE).read_text() == compose.render_dockerfile()
    assert (ROOT / "compose.env.example").read_text() == compose.env_example()
    assert not any((ROOT / "services" / role / "Dockerfile").exists() for role in ROLES)


def test_committed_dockerignore_is_the_rendered_one():
    assert (ROOT / ".dockerignore").read_text() == compose.render_dockerignore()


def test_stale_files_names_a_changed_file(tmp_path):
    for rel, text in compose.rendered_files().items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert compose.stale_files(tmp_path) == []
    (tmp_path / compose.DOCKERFILE).write_text("FROM scratch\n")
    (tmp_path / "docker-compose.yml").unlink()
    assert sorted(compose.stale_files(tmp_path)) == sorted(
        [str(tmp_path / "docker-compose.yml"), str(tmp_path / compose.DOCKERFILE)])


# --- the compose model --------------------------------------------------------------------

def test_every_role_is_a_service_with_versioned_image_target_and_its_own_identity_volume():
    """DEPLOY-1, DEPLOY-4: images tagged with the project version, one Dockerfile target each, a
    role mounts its own identity volume (read-only) and no other's, never the CA's; hardened."""
    services = _doc()["services"]
    nodes = [n for role in ROLES for n in ([role, *compose.call_control_nodes()[1:]] if role == "callmanager"
                                           else [role])]
    assert list(services) == ["init", "nats", "postgres", "db-init", *nodes, "cli", "prometheus", "grafana"]
    version = compose.project_version()
    assert version == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for role in ROLES:
        svc = services[role]
        assert svc["image"] == "ccmsec/%s:${CCMSEC_IMAGE_TAG:-%s}" % (role, version)
        assert svc["build"]["dockerfile"] == compose.DOCKERFILE and svc["build"]["target"] == role
        assert svc["build"]["args"] == {"PYTHON_IMAGE": "${CCMSEC_PYTHON_IMAGE:-%s}" % compose.PYTHON_IMAGE}
        assert svc["volumes"][0] == f"data-{role}:/data"  # its own data volume
        assert f"identity-{role}:{compose.IDENTITY_DIR}:ro" in svc["volumes"]
        others = [v for v in svc["volumes"] if v.startswith(("identity-", compose.CA_VOLUME))
                  and not v.startswith(f"identity-{role}:")]
        assert others == []
        # its own private keys (server key, CAPF / manufacturer CA key): a volume no one else mounts
        assert f"keys-{role}:{compose.KEY_DIR}" in svc["volumes"]
        assert svc["environment"]["CCMSEC_KEY_DIR"] == compose.KEY_DIR
        assert [name for name, other in _doc()["services"].items()
                if any(str(v).startswith(f"keys-{role}:") for v in other.get("volumes", []))] == [role]
        assert svc["cap_drop"] == ["ALL"] and "cap_add" not in svc
        assert svc["security_opt"] == ["no-new-privileges:true"]
        assert svc["mem_limit"] and svc["cpus"] and svc["pids_limit"]
        assert svc["restart"] == "unless-stopped" and svc["stop_grace_period"] == "10s"
        assert svc["healthcheck"]["test"][-2:] == ["-m", "ccmsec.runtime.healthcheck"]
        assert svc["healthcheck"]["interval"] == "10s" and svc["healthcheck"]["retries"] == 6
        assert svc["depends_on"]["init"] == {"condition": "service_completed_successfully"}
        assert svc["depends_on"]["nats"] == {"condition": "service_healthy"}
        if uses_database(role):  # its own PostgreSQL role, made by db-init
            assert svc["depends_on"]["postgres"] == {"condition": "service_healthy"}
            assert svc["depends_on"]["db-init"] == {"condition": "service_completed_successfully"}
        else:  # no database credential: it does not even wait for PostgreSQL
            assert "postgres" not in svc["depends_on"] and "db-init" not in svc["depends_on"]
    init = services["init"]
    assert f"{compose.CA_VOLUME}:/ca" in init["volumes"] and init["restart"] == "no"
    assert [s for s, svc in services.items() if any(str(v).startswith(compose.CA_VOLUME + ":")
                                                     for v in svc.get("volumes", []))] == ["init"]


def test_service_environment_loads_as_settings_for_every_role(monkeypatch, tmp_path):
    """The compose environment is accepted by the same settings loader the services use; the
    database password comes from its file (DEPLOY-2)."""
    secret = tmp_path / "password"
    secret.write_text("s3cret-from-file\n")
    services = _doc()["services"]
    for s in SERVICES:
        env = services[s.role]["environment"]
        assert all(isinstance(v, str) for v in env.values())
        with monkeypatch.context() as m:
            for key in [k for k in os.environ if k.startswith("CCMSEC_")]:
                m.delenv(key)
            for key, value in env.items():
                m.setenv(key, compose._defaults(value))  # what compose gives without an env file
            m.setenv("CCMSEC_DATABASE_PASSWORD_FILE", str(secret))
            settings = load_settings()
        assert settings.service == s.role and settings.node_name == s.role and settings.host == "0.0.0.0"
        assert settings.call_control_nodes == ["callmanager", "callmanager-sub1"]
        assert str(settings.data_dir) == "/data" and settings.nats_url == "nats://nats:4222"
        assert not any("PASSWORD" in k and not k.endswith("_FILE") for k in env)
        if uses_database(s.role):  # its own PostgreSQL role (issue 9 §5)
            assert env["CCMSEC_DATABASE_PASSWORD_FILE"] == compose.DB_PASSWORD_FILE
            user = "ccmsec_" + s.role.replace("-", "_")
            assert settings.db_url == f"postgresql://{user}:s3cret-from-file@postgres:5432/ccmsec"
        else:  # no credential at all: its bus bookkeeping in its own key volume
            assert "CCMSEC_DATABASE_PASSWORD_FILE" not in env
            assert env["CCMSEC_DATABASE_URL"] == f"sqlite:///{compose.KEY_DIR}/bus.db"
        assert str(settings.identity_folder) == compose.IDENTITY_DIR
        assert settings.peers == {r: r for r in ROLES}
        assert settings.peer_host("callmanager") == "callmanager"
        for spec in SERVICES:  # every protocol port of the topology, so clients know them too
            for p in spec.ports:
                assert env[f"CCMSEC_{p.name.upper()}"] == str(p.number)


# --- call-control subscribers (LATER-7) -----------------------------------------------------

@pytest.mark.parametrize("count", [0, 1, 2, 4])
def test_subscribers_are_callmanager_nodes_with_their_own_identity_keys_and_published_phone_ports(count):
    """`render --subscribers N`: N callmanager nodes beside the publisher, each the callmanager
    image with its own identity and key volume (mounted by it alone; its identity issued by init),
    not the publisher (no administration API, no admin secret); its SCCP, SCCP-TLS and gRPC ports
    published from env-file variables of its own, the roles' defaults unmoved; every role gets
    the group, publisher first, at most three."""
    doc = compose.compose_model(subscribers=count)
    assert compose.validate_compose(compose.render_compose(count)) == []
    services = doc["services"]
    nodes = [f"callmanager-sub{n}" for n in range(1, count + 1)]
    assert [s for s in services if s.startswith("callmanager")] == ["callmanager", *nodes]
    group = ["callmanager", *nodes][:3]
    version = compose.project_version()
    for role in ROLES:
        assert json.loads(services[role]["environment"]["CCMSEC_CALL_CONTROL_NODES"]) == group
    assert services["callmanager"]["environment"]["CCMSEC_CALLMANAGER_PUBLISHER"] == "true"
    for node in nodes:
        svc = services[node]
        env = svc["environment"]
        assert svc["image"] == "ccmsec/callmanager:${CCMSEC_IMAGE_TAG:-%s}" % version and svc["build"]["target"] == "callmanager"
        assert env["CCMSEC_SERVICE"] == "callmanager" and env["CCMSEC_NODE"] == node
        assert env["CCMSEC_CALLMANAGER_PUBLISHER"] == "false"
        assert json.loads(env["CCMSEC_CALL_CONTROL_NODES"]) == group
        assert "CCMSEC_ADMIN_PASSWORD_FILE" not in env
        # published like the publisher's phone ports, on host ports of its own (env file), never
        # the administration API (the bad case: the publisher's admin port on a subscriber)
        n = int(node.removeprefix("callmanager-sub"))
        var = node.upper().replace("-", "_")
        bind = "${CCMSEC_BIND_ADDRESS:-127.0.0.1}"
        assert svc["ports"] == [
            f"{bind}:${{CCMSEC_PUBLISH_{var}_SCCP:-{2000 + (n + 1) * 10000}}}:2000/tcp",
            f"{bind}:${{CCMSEC_PUBLISH_{var}_SCCP_TLS:-{2443 + (n + 1) * 10000}}}:2443/tcp",
            f"{bind}:${{CCMSEC_PUBLISH_{var}_GRPC:-{compose.GRPC_HOST_PORT_BASE + len(ROLES) + n - 1}}}:50051/tcp"]
        assert not any(":8443/" in p for p in svc["ports"])
        for name, *_ in compose.host_ports(subscribers=count)[node]:
            assert name in services["cli"]["environment"]  # compose client-bundle hands them out
        assert not any(v.startswith("admin-secret:") for v in svc["volumes"])
        assert f"identity-{node}:{compose.IDENTITY_DIR}:ro" in svc["volumes"]
        assert f"keys-{node}:{compose.KEY_DIR}" in svc["volumes"]
        for volume in (f"identity-{node}", f"keys-{node}"):
            assert volume in doc["volumes"]
            holders = [n for n, other in services.items()
                       if any(str(v).startswith(volume + ":") for v in other.get("volumes", []))]
            assert sorted(holders) == sorted([node, "init"] if volume.startswith("identity-") else [node])
        assert f"--subscriber={node}" in services["init"]["command"]
        assert svc["cap_drop"] == ["ALL"] and svc["healthcheck"] == services["callmanager"]["healthcheck"]
        assert svc["depends_on"] == services["callmanager"]["depends_on"]
    # the roles' own defaults do not move with the number of subscribers
    roles_only = {r: e for r, e in compose.host_ports(subscribers=count).items() if r in ROLES}
    assert roles_only == {r: e for r, e in compose.host_ports(subscribers=0).items()}


def test_subscriber_environment_loads_as_a_subscriber_node(monkeypatch, tmp_path):
    env = compose.compose_model(subscribers=2)["services"]["callmanager-sub2"]["environment"]
    secret = tmp_path / "password"
    secret.write_text("pw\n")
    with monkeypatch.context() as m:
        for key in [k for k in os.environ if k.startswith("CCMSEC_")]:
            m.delenv(key)
        for key, value in env.items():
            m.setenv(key, compose._defaults(value))
        m.setenv("CCMSEC_DATABASE_PASSWORD_FILE", str(secret))
        settings = load_settings()
    assert settings.service == "callmanager" and settings.node_name == "callmanager-sub2"
    assert settings.callmanager_publisher is False and settings.admin_password_file is None
    assert settings.call_control_nodes == ["callmanager", "callmanager-sub1", "callmanager-sub2"]
    # RST-9: every call-control node the cluster runs, by name, so a reset on a server naming
    # another (callmanager-sub3) is refused — compose had no endpoints file to say it
    assert settings.cluster_nodes == {"callmanager", "callmanager-sub1", "callmanager-sub2"}


@pytest.mark.parametrize("count", [0, 1, 4])
def test_rst9_every_callmanager_node_is_told_every_call_control_node_of_the_cluster(count):
    """RST-9: CCMSEC_CLUSTER_CALL_CONTROL_NODES on the publisher and each subscriber names every
    call-control node compose runs — all of them (4 subscribers: five names), unlike the phones'
    group CCMSEC_CALL_CONTROL_NODES (at most three); other roles do not check a reset on a server
    and get none. The committed file (one subscriber) lists callmanager and callmanager-sub1."""
    services = compose.compose_model(subscribers=count)["services"]
    nodes = ["callmanager", *(f"callmanager-sub{n}" for n in range(1, count + 1))]
    for node in nodes:
        env = services[node]["environment"]
        assert json.loads(env["CCMSEC_CLUSTER_CALL_CONTROL_NODES"]) == nodes
        assert json.loads(env["CCMSEC_CALL_CONTROL_NODES"]) == nodes[:3]
    for role in ROLES:
        if role != "callmanager":
            assert "CCMSEC_CLUSTER_CALL_CONTROL_NODES" not in services[role]["environment"], role
    committed = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert json.loads(committed["callmanager"]["environment"]["CCMSEC_CLUSTER_CALL_CONTROL_NODES"]) == [
        "callmanager", "callmanager-sub1"]


@pytest.mark.parametrize("count", [-1, 5])
def test_subscriber_count_out_of_range_is_refused_clearly(count):
    with pytest.raises(compose.ComposeError, match="0 to 4 call-control subscribers"):
        compose.compose_model(subscribers=count)
    with pytest.raises(CliError, match="0 to 4 call-control subscribers"):
        _run_cli(["--subscribers", str(count), "--output", "-"])


def test_cli_renders_another_subscriber_count_and_check_tells_it_apart(tmp_path, capsys):
    (tmp_path / "services").mkdir()
    assert _run_cli(["--root", str(tmp_path), "--subscribers", "2"]) == 0
    assert "callmanager-sub2:" in (tmp_path / "docker-compose.yml").read_text()
    assert _run_cli(["--check", "--root", str(tmp_path), "--subscribers", "2"]) == 0
    with pytest.raises(CliError, match="out of date.*docker-compose.yml"):
        _run_cli(["--check", "--root", str(tmp_path)])  # the committed default has one
    capsys.readouterr()
    assert _run_cli(["--output", "-", "--subscribers", "0"]) == 0
    assert "callmanager-sub" not in capsys.readouterr().out


def test_failover_timing_is_a_variable_of_the_env_file_with_the_services_defaults():
    """Keepalive, stable period, probes and standby keepalive: env-file variables whose defaults
    are the services' own (so an empty env file changes nothing), given to the roles that read them."""
    from ccmsec.runtime.settings import ServiceSettings
    from ccmsec_phone_sim.main import PhoneSimSettings

    fields = {**ServiceSettings.model_fields, **PhoneSimSettings.model_fields}
    example = compose.env_example().splitlines()
    services = compose.compose_model()["services"]
    for name, (default, roles) in compose.FAILOVER_VARIABLES.items():
        field = name.removeprefix("CCMSEC_").lower()
        assert float(default) == float(fields[field].default), name
        assert f"{name}={default}" in example
        for node, svc in services.items():
            role = (svc.get("environment") or {}).get("CCMSEC_SERVICE")
            if role in roles:
                assert svc["environment"][name] == "${%s:-%s}" % (name, default), (node, name)
            elif role is not None:
                assert name not in svc["environment"], (node, name)


def test_init_issues_each_subscriber_its_own_callmanager_identity(tmp_path):
    """`compose init --subscriber NODE`: a callmanager identity for the node (its own folder, in
    the NATS configuration); the cli container's endpoints list it; a bad name is refused."""
    from ccmsec.cli.main import build_parser
    from ccmsec.runtime.identity import load_identity

    def init(*extra):
        args = build_parser().parse_args([
            "compose", "init", "--ca", str(tmp_path / "ca"), "--identities", str(tmp_path / "ids"),
            "--secrets", str(tmp_path / "secrets"), "--cli", str(tmp_path / "cli"),
            "--nats-config", str(tmp_path / "nats.conf"), *extra])
        return args.func(args)

    assert init("--role=callmanager", "--role=phone-sim", "--subscriber=callmanager-sub1") == 0
    held = load_identity(tmp_path / "ids" / "callmanager-sub1")
    assert held.identity.uri == "spiffe://ccmsec/callmanager/callmanager-sub1"
    assert load_identity(tmp_path / "ids" / "callmanager").identity.uri == "spiffe://ccmsec/callmanager/callmanager"
    # The administration API runs on the publisher alone: only it holds the admin-api credential.
    assert load_identity(tmp_path / "ids" / "callmanager" / "admin-api").identity.role == "admin-api"
    assert not (tmp_path / "ids" / "callmanager-sub1" / "admin-api").exists()
    endpoints = json.loads((tmp_path / "cli" / "run" / "endpoints.json").read_text())
    assert endpoints["services"]["callmanager-sub1"]["host"] == "callmanager-sub1"
    assert "admin_port" not in endpoints["services"]["callmanager-sub1"]
    assert (tmp_path / "nats.conf").read_text().count("nkey") >= 3
    with pytest.raises(CliError, match="callmanager-subN"):
        init("--role=callmanager", "--subscriber=evil/../x")
    with pytest.raises(CliError, match="need the callmanager role"):
        init("--role=phone-sim", "--subscriber=callmanager-sub1")


def test_each_database_secret_is_mounted_only_by_its_role_and_the_bootstrap_one_only_by_postgres():
    """Issue 9 §5: one database password per stateful role, in a volume only that role's
    containers (call-control subscribers: callmanager's) mount; PostgreSQL's bootstrap password
    only in postgres and db-init (and init, which makes it); the roles without tables mount none."""
    services = _doc()["services"]

    def mounters(volume):
        return sorted(name for name, svc in services.items()
                      if any(str(v).split(":", 1)[0] == volume for v in svc.get("volumes", [])))

    subs = compose.call_control_nodes()[1:]
    assert subs, "the committed file has a subscriber"
    for role in ROLES:
        if uses_database(role):
            owners = ["callmanager", *subs] if role == "callmanager" else [role]
            assert mounters(compose.db_secret_volume(role)) == sorted(["init", *owners]), role
            assert f"{compose.db_secret_volume(role)}:{compose.DB_PASSWORD_DIR}:ro" in services[role]["volumes"]
        else:
            assert not any("db-secret" in str(v) or "postgres" in str(v) for v in services[role]["volumes"]), role
            assert "CCMSEC_DATABASE_PASSWORD_FILE" not in services[role]["environment"]
    assert mounters(compose.PG_SECRET_VOLUME) == ["db-init", "init", "postgres"]
    assert not any(name.startswith("db-secret") and not name.startswith("db-secret-") for name in _doc()["volumes"])
    assert {r for r in ROLES if uses_database(r)} == {"ctl-provider", "callmanager", "capf", "tftp-signer"}
    db_init = services["db-init"]
    assert db_init["user"] == f"{compose.POSTGRES_UID}:{compose.POSTGRES_UID}" and db_init["restart"] == "no"
    assert db_init["depends_on"] == {"postgres": {"condition": "service_healthy"}}


def test_compose_init_writes_one_secret_per_stateful_role_and_only_verifiers_for_postgres(tmp_path, capsys):
    """`compose init`: each stateful role's password in its own folder (0600, 0700), the bootstrap
    password apart, and for db-init only SCRAM verifiers of the roles' passwords."""
    import json

    from ccmsec.cli.main import main

    secrets = tmp_path / "secrets"
    for sub in ("postgres", *(f"db/{r}" for r in ROLES if uses_database(r))):
        (secrets / sub).mkdir(parents=True)
    args = ["compose", "init", "--ca", str(tmp_path / "ca"), "--identities", str(tmp_path / "ids"),
            "--secrets", str(secrets), *(f"--role={r}" for r in ROLES)]
    assert main(args) == 0
    passwords = {r: (secrets / "db" / r / "password").read_text().strip() for r in ROLES if uses_database(r)}
    assert len(set(passwords.values())) == len(passwords) and all(len(p) >= 24 for p in passwords.values())
    for role in passwords:
        assert (secrets / "db" / role / "password").stat().st_mode & 0o777 == 0o600
        assert (secrets / "db" / role).stat().st_mode & 0o777 == 0o700
    assert not (secrets / "db" / "phone-sim").exists() and not (secrets / "db" / "password").exists()
    bootstrap = (secrets / "postgres" / "password").read_text().strip()
    assert bootstrap not in passwords.values()
    roles_file = secrets / "postgres" / compose.PG_ROLES_FILE
    verifiers = json.loads(roles_file.read_text())
    assert roles_file.stat().st_mode & 0o777 == 0o600 and set(verifiers) == set(passwords)
    text = roles_file.read_text()
    assert all(v.startswith("SCRAM-SHA-256$4096:") for v in verifiers.values())
    assert not any(p in text for p in passwords.values())
    assert main(args) == 0  # a second start keeps every password
    assert {r: (secrets / "db" / r / "password").read_text().strip() for r in passwords} == passwords
    assert "one password per stateful role" in capsys.readouterr().out


def test_compose_db_init_bad_input_is_a_clear_error(tmp_path, capsys):
    from ccmsec.cli.main import main

    (tmp_path / "password").write_text("pw\n")
    assert main(["compose", "db-init", "--url", "postgresql://ccmsec@127.0.0.1:1/ccmsec",
                 "--secrets", str(tmp_path)]) != 0
    assert "roles.json" in capsys.readouterr().err
    (tmp_path / compose.PG_ROLES_FILE).write_text('{"capf": "plain-password"}')
    assert main(["compose", "db-init", "--url", "postgresql://ccmsec@127.0.0.1:1/ccmsec",
                 "--secrets", str(tmp_path), "--wait", "0"]) != 0
    assert "not a SCRAM-SHA-256 verifier" in capsys.readouterr().err


def test_database_password_file_missing_or_empty_is_a_clear_error(monkeypatch, tmp_path):
    """DEPLOY-2, bad case: no password file, or an empty one, is refused by name, never a traceback."""
    from ccmsec.runtime.settings import SettingsError

    for content in (None, "\n"):
        path = tmp_path / "pw"
        if content is not None:
            path.write_text(content)
        settings = load_settings(service="capf", data_dir=tmp_path, database_url=compose.DATABASE_URL,
                                 database_password_file=path)
        with pytest.raises(SettingsError, match="CCMSEC_DATABASE_PASSWORD_FILE"):
            settings.db_url


def test_every_service_is_limited_drops_capabilities_and_runs_a_pinned_or_versioned_image():
    """Issue 16 / DEPLOY-4 for every service of the file, not only the roles: init, cli, NATS,
    PostgreSQL, Prometheus and Grafana too have memory, CPU and process limits, drop every
    capability (adding back only what their start needs), gain no privileges, and run either our
    image tagged with the project version or a pinned official one (never `latest`, never untagged)."""
    version = compose.project_version()
    services = _doc()["services"]
    for name, svc in services.items():
        assert svc["mem_limit"] and svc["cpus"] and svc["pids_limit"], name
        assert svc["cap_drop"] == ["ALL"], name
        assert svc["security_opt"] == ["no-new-privileges:true"], name
        assert set(svc.get("cap_add", [])) <= {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"}, name
        image = svc["image"]
        if image.startswith("ccmsec/"):
            assert image.endswith(":${CCMSEC_IMAGE_TAG:-%s}" % version), (name, image)
        else:  # ${VARIABLE:-repository:tag}
            default = image.removeprefix("${").removesuffix("}").split(":-", 1)[1]
            repository, _, tag = default.rpartition(":")
            assert repository and tag and tag != "latest" and any(c.isdigit() for c in tag), (name, image)
    assert {"init", "cli"} <= {n for n, svc in services.items() if svc["image"].startswith("ccmsec/tools:")}


def test_nats_and_postgres_pinned_images_are_variables_and_have_healthchecks():
    doc = _doc()
    nats, pg = doc["services"]["nats"], doc["services"]["postgres"]
    assert nats["image"] == "${CCMSEC_NATS_IMAGE:-nats:2.10.24-alpine}"
    assert nats["command"] == ["-c", "/etc/ccmsec-nats/nats.conf", "-m", "8222"]  # BUS-1: init's users
    assert "nats-config:/etc/ccmsec-nats:ro" in nats["volumes"]
    assert "--nats-config" in doc["services"]["init"]["command"]
    assert "http://localhost:8222/healthz" in nats["healthcheck"]["test"]
    assert pg["image"] == "${CCMSEC_POSTGRES_IMAGE:-postgres:16.6-bookworm}"
    assert pg["environment"] == {"POSTGRES_USER": "ccmsec", "POSTGRES_DB": "ccmsec",
                                 "POSTGRES_PASSWORD_FILE": "/run/secrets/postgres/password"}
    assert pg["healthcheck"]["test"][1:4] == ["pg_isready", "-U", "ccmsec"]
    for name in ("CCMSEC_PYTHON_IMAGE", "CCMSEC_NATS_IMAGE", "CCMSEC_POSTGRES_IMAGE"):
        default = compose.IMAGE_VARIABLES[name]  # pinned: a version, never `latest`
        assert ":" in default and not default.endswith((":latest", ":16", ":2.10-alpine"))
        assert "${%s:-%s}" % (name, default) in compose.render_compose()
    assert {"nats-data", "postgres-data", "data-capf", compose.PKI_VOLUME, compose.CA_VOLUME} <= set(doc["volumes"])
    assert "ccmsec-data" not in doc["volumes"]  # no volume every container writes (issue 9 §1)


def test_published_ports_on_loopback_from_the_env_file_never_collide_by_default():
    """DEPLOY-3: ADDRESS:HOST:CONTAINER, address and host port variables (loopback by default)."""
    services = _doc()["services"]
    assert services["tftp-signer"]["ports"] == [
        "${CCMSEC_BIND_ADDRESS:-127.0.0.1}:${CCMSEC_PUBLISH_TFTP_SIGNER_TFTP:-69}:69/udp",
        "${CCMSEC_BIND_ADDRESS:-127.0.0.1}:${CCMSEC_PUBLISH_TFTP_SIGNER_GRPC:-15053}:50051/tcp"]
    assert services["tftp-signer"]["sysctls"] == {"net.ipv4.ip_unprivileged_port_start": "0"}
    srst = {(target, host) for _n, host, target, _p in compose.host_ports()["srst"] if target != GRPC_PORT}
    assert srst == {(2000, 12000), (2443, 12443), (2445, 2445)}  # callmanager holds 2000/2443
    seen = set()
    for entries in compose.host_ports().values():
        for name, host, _target, proto in entries:
            assert (host, proto) not in seen
            seen.add((host, proto))
            assert f"{name}={host}" in compose.env_example().splitlines()
    # nothing phone-facing: only the gRPC port, which is mutual TLS (the CLI on the host, issue 13)
    assert services["keymanager"]["ports"] == [
        "${CCMSEC_BIND_ADDRESS:-127.0.0.1}:${CCMSEC_PUBLISH_KEYMANAGER_GRPC:-15055}:50051/tcp"]
    grpc = {role: [e for e in entries if e[2] == GRPC_PORT] for role, entries in compose.host_ports().items()}
    assert all(len(v) == 1 for v in grpc.values())
    assert set(grpc) == {s.role for s in SERVICES} | set(compose.call_control_nodes()[1:])
    # the `cli` container knows the host side of every published port (compose client-bundle)
    cli_env = services["cli"]["environment"]
    assert all(name in cli_env for entries in compose.host_ports().values() for name, *_ in entries)
    assert "CCMSEC_BIND_ADDRESS=127.0.0.1" in compose.env_example().splitlines()
    # the event bus for the CLI on the host: on the bind address, its host port a variable
    assert services["nats"]["ports"] == ["${CCMSEC_BIND_ADDRESS:-127.0.0.1}:${CCMSEC_PUBLISH_NATS:-14222}:4222/tcp"]
    assert f"{compose.NATS_PUBLISH_VARIABLE}=14222" in compose.env_example().splitlines()
    assert cli_env[compose.NATS_PUBLISH_VARIABLE] == "${CCMSEC_PUBLISH_NATS:-14222}"


def test_non_persistent_role_keeps_its_own_folder_on_tmpfs():
    services = _doc()["services"]
    assert services["phone-sim"]["tmpfs"] == ["/data/phone-sim:uid=10001,gid=10001,mode=0700"]
    assert all("tmpfs" not in services[s.role] for s in SERVICES if s.persistent)


def test_start_order_drops_only_edges_between_roles_that_call_each_other():
    waits = compose.start_dependencies()
    # callmanager <-> ctl-provider call each other: neither waits for the other
    assert "ctl-provider" not in waits["callmanager"] and "callmanager" not in waits["ctl-provider"]
    # srtp-gateway asks callmanager for the cluster mode (GW-4) and callmanager drives the gateway
    assert "srtp-gateway" not in waits["callmanager"] and "callmanager" not in waits["srtp-gateway"]
    # capf looks devices up at call control and asks the CTL Provider; both call capf back
    assert waits["capf"] == [] and "capf" not in waits["callmanager"] and "capf" not in waits["ctl-provider"]
    assert waits["callmanager"] == ["keymanager"]
    # the TFTP server asks call control, CAPF and the CTL Provider (issue 9 §5), which all reach it
    # back (ctl-provider publishes the CTL to it): nobody waits for the other
    assert waits["ctl-provider"] == [] and waits["tftp-signer"] == [] and waits["srst"] == ["callmanager"]
    services = _doc()["services"]
    for role, peers in waits.items():
        extra = [d for d in services[role]["depends_on"] if d not in ("init", "nats", "postgres", "db-init")]
        assert extra == peers
        assert all(services[role]["depends_on"][p] == {"condition": "service_started"} for p in peers)


def test_start_order_rule_on_a_small_topology():
    mk = lambda role, peers: ServiceSpec(role, role, 2, role, (), peers)  # noqa: E731
    waits = compose.start_dependencies((mk("a", ("b",)), mk("b", ("a", "c")), mk("c", ()), mk("d", ("a",))))
    assert waits == {"a": [], "b": ["c"], "c": [], "d": ["a"]}


def test_port_name_with_two_numbers_is_refused():
    bad = (ServiceSpec("x", "x", 2, "x", (Port("sccp_port", 2000, "tcp", "a"),)),
           ServiceSpec("y", "y", 3, "y", (Port("sccp_port", 2001, "tcp", "b"),)))
    with pytest.raises(compose.ComposeError, match="CCMSEC_SCCP_PORT has two numbers"):
        compose.protocol_port_env(bad)


# --- validate_compose ---------------------------------------------------------------------

def test_validate_finds_no_problem_in_the_rendered_file():
    assert compose.validate_compose(compose.render_compose()) == []


def test_validate_reports_depends_on_a_missing_service():
    doc = _doc()
    doc["services"]["capf"]["depends_on"]["nosuch"] = {"condition": "service_started"}
    assert compose.validate_compose(_dump(doc)) == ["service capf: depends_on unknown service 'nosuch'"]


def test_validate_reports_a_service_without_healthcheck():
    doc = _doc()
    del doc["services"]["keymanager"]["healthcheck"]
    assert compose.validate_compose(_dump(doc)) == ["service keymanager: no healthcheck"]


def test_validate_reports_waiting_for_health_of_a_service_that_has_none():
    doc = _doc()
    doc["services"]["nats"]["healthcheck"] = {"disable": True}
    problems = compose.validate_compose(_dump(doc))
    assert "service nats: no healthcheck" in problems
    assert "service capf: waits for 'nats' to be healthy but it has no healthcheck" in problems


def test_validate_reports_an_undeclared_volume():
    doc = _doc()
    del doc["volumes"]["pki-capf"]
    problems = compose.validate_compose(_dump(doc))
    assert len(problems) == len(ROLES) + compose.COMPOSE_SUBSCRIBERS  # every node mounts it
    assert "service ctl-provider: volume 'pki-capf' is not declared under top-level volumes" in problems


def test_no_role_can_write_a_file_another_role_trusts():
    """Issue 9 §1 in compose: every volume a node writes is its own (no other container mounts it
    read-write); what others read of it they mount read-only; nothing is shared by all. The CAPF
    certificate, the manufacturer CA and the server certificates are each written by their owner
    alone; phone-sim and the gateway write nothing call control trusts."""
    doc = _doc()
    mounts: dict[str, dict[str, list[str]]] = {}  # volume -> {"rw": [...], "ro": [...]}
    for name, svc in doc["services"].items():
        if name == "init":  # the one-shot issuer, before any service runs
            continue
        for entry in svc.get("volumes", []):
            parts = str(entry).split(":")
            if parts[0] in doc["volumes"]:
                mode = "ro" if parts[-1] == "ro" else "rw"
                mounts.setdefault(parts[0], {"rw": [], "ro": []})[mode].append(name)
    for volume, by in mounts.items():
        assert len(by["rw"]) <= 1, f"{volume} is writable in {by['rw']}"
    owners = {v: by["rw"] for v, by in mounts.items()}
    assert owners["pki-capf"] == ["capf"] and owners["manufacturer-ca"] == ["phone-sim"]
    nodes = compose.call_control_nodes()
    for node in nodes:
        assert owners[f"servers-{node}"] == [node] and mounts[f"servers-{node}"]["ro"] == ["ctl-provider"]
        cm = doc["services"][node]
        assert "pki-capf:/data/pki:ro" in cm["volumes"]
        assert "manufacturer-ca:/data/manufacturer:ro" in cm["volumes"]
        assert cm["environment"]["CCMSEC_MANUFACTURER_CA_DIR"] == compose.MANUFACTURER_DIR
    everyone = [n for n in doc["services"] if n in (*ROLES, *nodes)]
    assert sorted(mounts["pki-capf"]["ro"]) == sorted(n for n in everyone if n != "capf")
    assert sorted(mounts["manufacturer-ca"]["ro"]) == sorted(n for n in everyone if n != "phone-sim")
    # call control's trust inputs are writable by their owner only: phone-sim and the gateway
    # (and every other role) write nothing of capf's or call control's
    for role in ("phone-sim", "srtp-gateway", "keymanager", "srst", "tftp-signer", "ctl-provider"):
        writable = [v for v, by in mounts.items() if role in by["rw"]]
        assert "pki-capf" not in writable and not any(v.startswith("servers-callmanager") for v in writable)
        assert role == "phone-sim" or "manufacturer-ca" not in writable, (role, writable)
        assert all(v == "manufacturer-ca" or v.endswith(f"-{role}") for v in writable), (role, writable)
    # the Dockerfile makes each writable mount point, owned by the app user
    dockerfile = compose.render_dockerfile()
    for path in ("/data/pki", "/data/manufacturer", "/data/servers/callmanager", "/data/servers/tftp-signer"):
        assert path in dockerfile


def test_validate_reports_a_host_port_published_twice():
    doc = _doc()
    doc["services"]["srst"]["ports"][0] = "127.0.0.1:2000:2000/tcp"
    assert compose.validate_compose(_dump(doc)) == [
        "service srst: host port 2000/tcp already published by callmanager"]


def test_validate_reports_a_depends_on_cycle():
    doc = _doc()
    doc["services"]["tftp-signer"]["depends_on"]["phone-sim"] = {"condition": "service_started"}
    problems = compose.validate_compose(_dump(doc))
    assert len(problems) == 1 and problems[0] in (
        "depends_on cycle: phone-sim -> tftp-signer -> phone-sim",
        "depends_on cycle: tftp-signer -> phone-sim -> tftp-signer")


def test_validate_reports_schema_violations():
    doc = _doc()
    doc["services"]["capf"]["restart"] = "sometimes"
    doc["services"]["capf"]["stop_grace_period"] = "ten seconds"
    doc["services"]["capf"]["cap_drop"] = "ALL"
    doc["services"]["capf"]["privileged"] = True
    problems = compose.validate_compose(_dump(doc))
    assert len(problems) == 4 and all(p.startswith("schema: services/capf") for p in problems)
    assert any("'privileged' was unexpected" in p for p in problems)


def test_validate_reads_short_port_syntax_too():
    doc = _doc()
    doc["services"]["keymanager"]["ports"] = ["69:69/udp", "9999"]  # 9999: container-only, no host port
    doc["services"]["srtp-gateway"]["ports"] = ["127.0.0.1:2427:2427/udp"]
    assert compose.validate_compose(_dump(doc)) == [
        "service keymanager: host port 69/udp already published by tftp-signer"]


@pytest.mark.parametrize("text, expected", [
    ("services: [unclosed", "not YAML"),
    ("- a\n- b\n", "no `services` mapping"),
    ("version: '3'\n", "no `services` mapping"),
])
def test_validate_reports_unreadable_documents(text, expected):
    problems = compose.validate_compose(text)
    assert len(problems) == 1 and problems[0].startswith(expected)


# --- docker-compose itself ----------------------------------------------------------------

def _compose_config(tmp_path: Path, text: str) -> subprocess.CompletedProcess:
    path = tmp_path / "docker-compose.yml"
    path.write_text(text)
    return subprocess.run([DOCKER_COMPOSE, "-f", str(path), "config", "-q"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)


@pytest.mark.interop
@pytest.mark.skipif(DOCKER_COMPOSE is None, reason="docker-compose binary not installed")
def test_docker_compose_config_accepts_the_rendered_file(tmp_path):
    # `config` parses, validates against its own compose schema and interpolates; no engine needed.
    result = _compose_config(tmp_path, compose.render_compose())
    assert result.returncode == 0, result.stderr


@pytest.mark.interop
@pytest.mark.skipif(DOCKER_COMPOSE is None, reason="docker-compose binary not installed")
def test_docker_compose_config_refuses_what_validate_refuses(tmp_path):
    doc = _doc()
    del doc["volumes"]["pki-capf"]
    result = _compose_config(tmp_path, _dump(doc))
    assert result.returncode != 0 and "pki-capf" in result.stderr
    doc = _doc()
    doc["services"]["capf"]["depends_on"]["nosuch"] = {"condition": "service_started"}
    result = _compose_config(tmp_path, _dump(doc))
    assert result.returncode != 0 and "nosuch" in result.stderr


# --- Dockerfiles --------------------------------------------------------------------------

def _copies(dockerfile: str) -> list[str]:
    out = []
    for line in dockerfile.splitlines():
        if line.startswith("COPY ") and not line.startswith("COPY --from"):
            out.extend(line.split()[1:-1])
    return out


def _ignored(path: str, patterns) -> bool:
    path = path.rstrip("/")
    return any(fnmatch.fnmatch(path, p) or path.startswith(p + "/") for p in patterns)


def _stage(text: str, name: str) -> str:
    """The lines of one build stage, from its FROM line to the next stage's."""
    stages: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("FROM "):
            current = line.split()[-1]
            stages[current] = []
        if current is not None:
            stages[current].append(line)
    return "\n".join(stages[name]) + "\n"


def test_dockerfile_is_multi_stage_with_one_shared_runtime_and_a_target_per_role():
    """DEPLOY-4: build tools only in the build stage; every image is the shared runtime plus
    metadata; an unprivileged user; a health check; the base image a build argument."""
    text = compose.render_dockerfile()
    assert text.startswith(compose.HEADER)
    assert f"ARG PYTHON_IMAGE={compose.PYTHON_IMAGE}" in text
    assert "FROM ${PYTHON_IMAGE} AS build" in text and "FROM ${PYTHON_IMAGE} AS runtime" in text
    runtime = _stage(text, "runtime")
    assert "uv" not in runtime.replace("/app/.venv", "") and "COPY --from=build /app/.venv /app/.venv" in runtime
    assert "\nUSER ccmsec\n" in runtime
    for src in _copies(text):
        assert (ROOT / src).exists(), f"COPY {src} names a missing file"
        assert not _ignored(src, compose.DOCKERIGNORE_PATTERNS), f"COPY {src} is excluded by .dockerignore"
    for s in SERVICES:
        stage = _stage(text, s.role)
        assert stage.startswith(f"FROM runtime AS {s.role}")
        scripts = tomllib.loads((ROOT / "services" / s.role / "pyproject.toml").read_text())["project"]["scripts"]
        assert s.executable in scripts
        assert f'CMD ["/app/.venv/bin/{s.executable}"]' in stage
        assert "HEALTHCHECK" in stage and "ccmsec.runtime.healthcheck" in stage
        expose = next(line for line in stage.splitlines() if line.startswith("EXPOSE "))
        for p in s.ports:
            assert f"{p.number}/{p.protocol}" in expose.split()
        assert "RUN " not in stage  # nothing but metadata on top of the shared layers
    assert "FROM runtime AS tools" in text


def test_dockerignore_keeps_the_build_inputs_and_drops_the_rest():
    patterns = compose.DOCKERIGNORE_PATTERNS
    for needed in ("pyproject.toml", "uv.lock", "README.md", "ccmsec/runtime/service.py", "proto/ccmsec_proto"):
        assert not _ignored(needed, patterns)
    for dropped in (".git", ".venv", "tests/unit/x.py", "ccmsec/__pycache__/x.pyc"):
        assert _ignored(dropped, patterns)


@pytest.mark.interop
@pytest.mark.skipif(shutil.which("uv") is None, reason="uv binary not installed")
def test_dockerfile_copy_set_is_enough_for_uv_to_install_the_role(tmp_path):
    """Replays the image's COPY and `uv sync` steps for one role in a scratch folder (no Docker here)."""
    text = compose.render_dockerfile()
    app = tmp_path / "app"
    for line in text.splitlines():
        if not line.startswith("COPY ") or line.startswith("COPY --from"):
            continue
        *sources, target = line.split()[1:]
        for src in sources:
            origin = ROOT / src
            dest = app / src.rstrip("/") if origin.is_dir() else (app / target) / origin.name
            if origin.is_dir():
                shutil.copytree(origin, dest, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(origin, dest)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")}
    env.update(UV_PYTHON_DOWNLOADS="never", UV_PROJECT_ENVIRONMENT=str(app / ".venv"))
    for line in text.splitlines():
        if line.startswith("RUN /opt/uv/bin/uv sync"):
            result = subprocess.run(["uv", *line.split()[2:]], cwd=app, env=env,
                                    capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, result.stderr[-2000:]
    python = app / ".venv" / "bin" / "python"
    # light imports only: the heavy ones would spend seconds compiling byte code in a fresh venv
    check = subprocess.run([str(python), "-c", "import ccmsec, ccmsec_proto, ccmsec_keymanager, "
                            "ccmsec.runtime.healthcheck; print(ccmsec.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    installed = Path(check.stdout.strip()).parent
    assert installed.is_relative_to(app / ".venv")  # a real install, not the source tree
    assert (installed / "db" / "migrations" / "script.py.mako").exists()  # alembic needs it at start
    for s in SERVICES:  # the one shared environment runs every role
        assert (app / ".venv" / "bin" / s.executable).exists()


# --- the command --------------------------------------------------------------------------

def _run_cli(argv):
    import argparse

    parser = argparse.ArgumentParser()
    compose_cli.register(parser.add_subparsers())
    args = parser.parse_args(["compose", "render", *argv])
    return args.func(args)


def test_cli_check_passes_on_this_checkout(capsys):
    assert _run_cli(["--check", "--root", str(ROOT)]) == 0
    assert "up to date" in capsys.readouterr().out


def test_cli_renders_into_a_root_and_check_catches_a_hand_edit(tmp_path, capsys):
    (tmp_path / "services").mkdir()
    assert _run_cli(["--root", str(tmp_path)]) == 0
    assert (tmp_path / "docker-compose.yml").read_text() == compose.render_compose()
    assert (tmp_path / compose.DOCKERFILE).read_text() == compose.render_dockerfile()
    assert _run_cli(["--check", "--root", str(tmp_path)]) == 0
    (tmp_path / "docker-compose.yml").write_text(compose.render_compose().replace("5s", "50s"))
    with pytest.raises(CliError, match="out of date.*docker-compose.yml"):
        _run_cli(["--check", "--root", str(tmp_path)])
    capsys.readouterr()
    assert _run_cli(["--output", "-", "--root", str(tmp_path)]) == 0
    assert capsys.readouterr().out == compose.render_compose()


def test_cli_output_file_is_written_and_checked(tmp_path):
    out = tmp_path / "elsewhere.yml"
    (tmp_path / "services").mkdir()
    assert _run_cli(["--root", str(tmp_path), "--output", str(out)]) == 0
    assert out.read_text() == compose.render_compose()
    assert not (tmp_path / "docker-compose.yml").exists()
    assert _run_cli(["--check", "--root", str(tmp_path), "--output", str(out)]) == 0


def _relative_sources(doc: dict) -> list[str]:
    """Every path of a compose document docker-compose resolves against the file's folder."""
    out = []
    for svc in doc["services"].values():
        if "build" in svc:
            out.append(svc["build"]["context"])
        for entry in svc.get("volumes", []):
            source = entry.split(":", 1)[0]
            if source.startswith("."):
                out.append(source)
    return out


def test_cli_output_elsewhere_refers_to_the_files_render_wrote(tmp_path, capsys):
    """`--output FILE` outside the root: every relative path of FILE (build context, Prometheus
    targets and the other monitoring mounts), resolved against FILE's folder as docker-compose
    does, is the root or a file render wrote there — a targets file for N subscribers written
    under the root while FILE looked for it beside itself was the bug. `--check` agrees, and a
    file rendered for another folder is stale where it now lies."""
    root, out = tmp_path / "project", tmp_path / "deploy" / "site" / "compose.3subs.yml"
    (root / "services").mkdir(parents=True)
    shutil.copytree(ROOT / compose.MONITORING_DIR, root / compose.MONITORING_DIR,
                    ignore=shutil.ignore_patterns("targets"))
    assert _run_cli(["--root", str(root), "--subscribers", "3", "--output", str(out)]) == 0
    doc = yaml.safe_load(out.read_text())
    sources = _relative_sources(doc)
    assert len(sources) >= 10 and all(s.startswith("../../project") for s in sources), sources
    for source in sources:
        resolved = (out.parent / source).resolve()
        assert resolved == root or root in resolved.parents, source
        assert resolved.exists(), f"{source} -> {resolved}: FILE refers to what render did not write"
    assert doc["services"]["capf"]["build"]["context"] == "../../project"
    assert (root / compose.DOCKERFILE).is_file() and (root / ".dockerignore").is_file()
    targets = next(s for s in doc["services"]["prometheus"]["volumes"] if s.endswith(":/etc/prometheus/targets:ro"))
    written = (out.parent / targets.split(":")[0]).resolve() / "ccmsec.yml"
    assert written == root / compose.prometheus_targets_path(3)
    assert "callmanager-sub3:9100" in written.read_text()
    assert not (out.parent / compose.MONITORING_DIR).exists()  # nothing beside FILE but FILE
    assert f"names the project root {root} as ../../project" in capsys.readouterr().out
    assert _run_cli(["--check", "--root", str(root), "--subscribers", "3", "--output", str(out)]) == 0
    moved = tmp_path / "compose.3subs.yml"  # another folder: its paths would not lead to the root
    moved.write_text(out.read_text())
    with pytest.raises(CliError, match="out of date.*compose.3subs.yml"):
        _run_cli(["--check", "--root", str(root), "--subscribers", "3", "--output", str(moved)])
    # in the root itself, the paths stay `./` (the committed file's form)
    assert compose.project_dir_for(root, root / "x.yml") == "."
    assert compose.render_compose(3, ".") == compose.render_compose(3)


@pytest.mark.interop
@pytest.mark.skipif(DOCKER_COMPOSE is None, reason="docker-compose binary not installed")
def test_docker_compose_resolves_an_output_elsewhere_into_the_root(tmp_path):
    """What docker-compose itself makes of a file rendered outside the root: its build context
    and the Prometheus targets mount are the root's (`config` resolves them; no engine needed)."""
    root, out = tmp_path / "project", tmp_path / "elsewhere" / "c.yml"
    (root / "services").mkdir(parents=True)
    assert _run_cli(["--root", str(root), "--subscribers", "2", "--output", str(out)]) == 0
    result = subprocess.run([DOCKER_COMPOSE, "-f", str(out), "--profile", "monitoring", "config"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert services["capf"]["build"]["context"] == str(root)
    mounts = services["prometheus"]["volumes"]
    sources = [m["source"] if isinstance(m, dict) else m.split(":")[0] for m in mounts]
    assert str(root / compose.prometheus_targets_dir(2)) in sources, sources
    assert (root / compose.prometheus_targets_path(2)).is_file()


# --- the monitoring profile ---------------------------------------------------------------

def test_monitoring_profile_loads_the_projects_rules_and_dashboard_from_pinned_official_images():
    """Prometheus + Grafana only with `--profile monitoring`; they mount the shipped files (which
    exist), Grafana's admin password is a generated file (DEPLOY-2), both pinned (DEPLOY-4)."""
    services = _doc()["services"]
    prom, graf = services["prometheus"], services["grafana"]
    assert prom["profiles"] == graf["profiles"] == ["monitoring"]
    assert prom["image"] == "${CCMSEC_PROMETHEUS_IMAGE:-%s}" % compose.PROMETHEUS_IMAGE
    assert graf["image"] == "${CCMSEC_GRAFANA_IMAGE:-%s}" % compose.GRAFANA_IMAGE
    for image in (compose.PROMETHEUS_IMAGE, compose.GRAFANA_IMAGE):
        assert image.rsplit(":", 1)[1][0] in "v0123456789" and not image.endswith(":latest")
    for name, files in compose.MONITORING_FILES.items():
        for src, dst in files.items():
            assert (ROOT / src).exists(), src
            assert f"./{src}:{dst}:ro" in services[name]["volumes"]
    rules = yaml.safe_load((ROOT / "deploy/monitoring/prometheus/prometheus.yml").read_text())["rule_files"]
    assert rules == ["/etc/prometheus/rules/ccmsec-rules.yml"]
    assert graf["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana/admin-password"
    assert not any("PASSWORD" in k and not k.endswith("__FILE") for k in graf["environment"])
    assert "grafana-secret:/secrets/grafana" in services["init"]["volumes"]
    for svc in services.values():  # everything published on the bind address, loopback by default
        for entry in svc.get("ports", []):
            assert entry.startswith("${CCMSEC_BIND_ADDRESS:-127.0.0.1}:")


@pytest.mark.interop
@pytest.mark.skipif(DOCKER_COMPOSE is None, reason="docker-compose binary not installed")
def test_docker_compose_config_accepts_the_monitoring_and_tools_profiles():
    result = subprocess.run([DOCKER_COMPOSE, "-f", str(ROOT / "docker-compose.yml"), "--profile", "monitoring",
                             "--profile", "tools", "config", "--services"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert {"prometheus", "grafana", "cli", "init", *ROLES} <= set(result.stdout.split())

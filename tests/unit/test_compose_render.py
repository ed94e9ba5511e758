"""docker-compose.yml, Dockerfiles and .dockerignore come from the topology and are valid."""

from __future__ import annotations

import fnmatch
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
from ccmsec.cluster.topology import ROLES, SERVICES, Port, ServiceSpec
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


@pytest.mark.parametrize("role", ROLES)
def test_committed_dockerfile_is_the_rendered_one(role):
    committed = (ROOT / "services" / role / "Dockerfile").read_text()
    assert committed == compose.render_dockerfile(next(s for s in SERVICES if s.role == role))


def test_committed_dockerignore_is_the_rendered_one():
    assert (ROOT / ".dockerignore").read_text() == compose.render_dockerignore()


def test_stale_files_names_a_changed_file(tmp_path):
    for rel, text in compose.rendered_files().items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert compose.stale_files(tmp_path) == []
    (tmp_path / "services/capf/Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "docker-compose.yml").unlink()
    assert sorted(compose.stale_files(tmp_path)) == sorted(
        [str(tmp_path / "docker-compose.yml"), str(tmp_path / "services/capf/Dockerfile")])


# --- the compose model --------------------------------------------------------------------

def test_every_role_is_a_service_with_image_build_and_shared_data_volume():
    services = _doc()["services"]
    assert list(services) == ["nats", "postgres", *ROLES]
    for role in ROLES:
        svc = services[role]
        assert svc["image"] == f"ccmsec/{role}:latest"
        assert svc["build"] == {"context": ".", "dockerfile": f"services/{role}/Dockerfile"}
        assert "ccmsec-data:/data" in svc["volumes"]
        assert svc["restart"] == "unless-stopped" and svc["stop_grace_period"] == "10s"
        assert svc["healthcheck"]["test"][-2:] == ["-m", "ccmsec.runtime.healthcheck"]
        assert svc["healthcheck"]["interval"] == "5s" and svc["healthcheck"]["retries"] == 12
        assert svc["depends_on"]["nats"] == {"condition": "service_healthy"}
        assert svc["depends_on"]["postgres"] == {"condition": "service_healthy"}


def test_service_environment_loads_as_settings_for_every_role(monkeypatch):
    """The compose environment is accepted by the same settings loader the services use."""
    services = _doc()["services"]
    for s in SERVICES:
        env = services[s.role]["environment"]
        assert all(isinstance(v, str) for v in env.values())
        with monkeypatch.context() as m:
            for key in [k for k in os.environ if k.startswith("CCMSEC_")]:
                m.delenv(key)
            for key, value in env.items():
                m.setenv(key, value)
            settings = load_settings()
        assert settings.service == s.role and settings.node_name == s.role and settings.host == "0.0.0.0"
        assert str(settings.data_dir) == "/data" and settings.nats_url == "nats://nats:4222"
        assert settings.db_url == "postgresql://postgres:${CCMSEC_POSTGRES_PASSWORD:-ccmsec}@postgres:5432/ccmsec"
        assert settings.peers == {r: r for r in ROLES}
        assert settings.peer_host("callmanager") == "callmanager"
        for spec in SERVICES:  # every protocol port of the topology, so clients know them too
            for p in spec.ports:
                assert env[f"CCMSEC_{p.name.upper()}"] == str(p.number)


def test_nats_and_postgres_have_healthchecks_and_volumes():
    doc = _doc()
    nats, pg = doc["services"]["nats"], doc["services"]["postgres"]
    assert nats["image"] == "nats:2.10-alpine" and nats["command"] == ["-js", "-sd", "/data", "-m", "8222"]
    assert "http://localhost:8222/healthz" in nats["healthcheck"]["test"]
    assert pg["image"] == "postgres:16" and pg["environment"]["POSTGRES_DB"] == "ccmsec"
    assert pg["healthcheck"]["test"][1:4] == ["pg_isready", "-U", "postgres"]
    assert set(doc["volumes"]) == {"nats-data", "postgres-data", "ccmsec-data"}


def test_published_ports_keep_protocol_and_never_collide_on_the_host():
    services = _doc()["services"]
    assert services["tftp-signer"]["ports"] == [{"target": 69, "published": 69, "protocol": "udp"}]
    assert services["tftp-signer"]["sysctls"] == {"net.ipv4.ip_unprivileged_port_start": "0"}
    srst = {(p["target"], p["published"]) for p in services["srst"]["ports"]}
    assert srst == {(2000, 12000), (2443, 12443), (2445, 2445)}  # callmanager holds 2000/2443
    seen = set()
    for svc in services.values():
        for p in svc.get("ports", []):
            key = (p["published"], p["protocol"])
            assert key not in seen
            seen.add(key)
    assert "ports" not in services["keymanager"]  # nothing phone-facing: nothing published


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
    assert waits["callmanager"] == ["keymanager", "tftp-signer", "capf"]
    assert waits["capf"] == ["tftp-signer"]
    services = _doc()["services"]
    for role, peers in waits.items():
        extra = [d for d in services[role]["depends_on"] if d not in ("nats", "postgres")]
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
    del doc["volumes"]["ccmsec-data"]
    problems = compose.validate_compose(_dump(doc))
    assert len(problems) == len(ROLES)
    assert "service srst: volume 'ccmsec-data' is not declared under top-level volumes" in problems


def test_validate_reports_a_host_port_published_twice():
    doc = _doc()
    doc["services"]["srst"]["ports"][0]["published"] = 2000
    assert compose.validate_compose(_dump(doc)) == [
        "service srst: host port 2000/tcp already published by callmanager"]


def test_validate_reports_a_depends_on_cycle():
    doc = _doc()
    doc["services"]["tftp-signer"]["depends_on"]["capf"] = {"condition": "service_started"}
    problems = compose.validate_compose(_dump(doc))
    assert len(problems) == 1 and problems[0] in ("depends_on cycle: capf -> tftp-signer -> capf",
                                                  "depends_on cycle: tftp-signer -> capf -> tftp-signer")


def test_validate_reports_schema_violations():
    doc = _doc()
    doc["services"]["capf"]["restart"] = "sometimes"
    doc["services"]["capf"]["stop_grace_period"] = "ten seconds"
    doc["services"]["capf"]["ports"][0]["protocol"] = "sctp"
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
    del doc["volumes"]["ccmsec-data"]
    result = _compose_config(tmp_path, _dump(doc))
    assert result.returncode != 0 and "ccmsec-data" in result.stderr
    doc = _doc()
    doc["services"]["capf"]["depends_on"]["nosuch"] = {"condition": "service_started"}
    result = _compose_config(tmp_path, _dump(doc))
    assert result.returncode != 0 and "nosuch" in result.stderr


# --- Dockerfiles --------------------------------------------------------------------------

def _copies(dockerfile: str) -> list[str]:
    out = []
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            out.extend(line.split()[1:-1])
    return out


def _ignored(path: str, patterns) -> bool:
    path = path.rstrip("/")
    return any(fnmatch.fnmatch(path, p) or path.startswith(p + "/") for p in patterns)


@pytest.mark.parametrize("role", ROLES)
def test_dockerfile_copies_only_what_its_role_needs_and_runs_its_entry_point(role):
    s = next(s for s in SERVICES if s.role == role)
    text = compose.render_dockerfile(s)
    assert text.startswith(compose.HEADER) and "\nFROM python:3.11-slim\n" in text
    copies = _copies(text)
    patterns = compose.DOCKERIGNORE_PATTERNS
    for src in copies:
        assert (ROOT / src).exists(), f"{role}: COPY {src} names a missing file"
        assert not _ignored(src, patterns), f"{role}: COPY {src} is excluded by .dockerignore"
    service_dirs = {c for c in copies if c.startswith("services/") and c.endswith("/")}
    assert service_dirs == {f"services/{role}/"}  # no other role's code
    assert f"uv sync --frozen --no-dev --no-editable --package ccmsec-{role}" in text
    scripts = tomllib.loads((ROOT / "services" / role / "pyproject.toml").read_text())["project"]["scripts"]
    assert s.executable in scripts
    assert text.rstrip().endswith(f'CMD ["/app/.venv/bin/{s.executable}"]')
    assert "ENV CCMSEC_DATA_DIR=/data" in text and "\nUSER ccmsec\n" in text
    expose = next(line for line in text.splitlines() if line.startswith("EXPOSE "))
    for p in s.ports:
        assert f"{p.number}/{p.protocol}" in expose.split()


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
    text = compose.render_dockerfile(next(s for s in SERVICES if s.role == "keymanager"))
    app = tmp_path / "app"
    for line in text.splitlines():
        if not line.startswith("COPY "):
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
        if line.startswith("RUN uv sync"):
            result = subprocess.run(line.removeprefix("RUN ").split(), cwd=app, env=env,
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
    assert (app / ".venv" / "bin" / "ccmsec-keymanager").exists()
    assert not (app / ".venv" / "bin" / "ccmsec-callmanager").exists()  # only what this role needs


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
    assert (tmp_path / "services/srst/Dockerfile").read_text() == compose.render_dockerfile(SERVICES[6])
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

"""`pip install .` and the built wheel work in a fresh virtual environment (issue 16).

Slow (downloads and installs every dependency), so it runs as its own CI step:
`bash scripts/test-install` runs it once per supported Python found on the machine
(CCMSEC_INSTALL_TEST=1, CCMSEC_INSTALL_PYTHONS="python3.11 python3.13 ..."); the default suite does
not collect it (tests/conftest.py).

For each interpreter: a fresh venv gets `pip install .`, another one the wheel `pip wheel .`
built; in both the command runs and every service package imports; from the `pip install .` venv a
whole cluster starts (`ccmsec up -d`), every service serves, and stops; with one service package
removed from the wheel venv, `ccmsec up` refuses at once naming it, and writes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["ccmsec", "ccmsec_proto", "ccmsec_callmanager", "ccmsec_capf", "ccmsec_ctl_provider",
            "ccmsec_keymanager", "ccmsec_phone_sim", "ccmsec_srst", "ccmsec_srtp_gateway",
            "ccmsec_tftp_signer"]
PYTHONS = os.environ.get("CCMSEC_INSTALL_PYTHONS", sys.executable).split()
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

pytestmark = pytest.mark.timeout(1800)


def run(argv, timeout=900, **kwargs):
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "CCMSEC_DATA_DIR", "UV_PROJECT_ENVIRONMENT")}
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout,
                          env=env, stdin=subprocess.DEVNULL, **kwargs)


def ok(argv, timeout=900, **kwargs):
    done = run(argv, timeout, **kwargs)
    assert done.returncode == 0, f"{argv}: {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def fresh_venv(python: str, where: Path) -> Path:
    ok([python, "-m", "venv", where], timeout=120)
    return where / "bin"


def check_installed(bin_dir: Path) -> None:
    assert ok([bin_dir / "ccmsec", "--version"]).stdout.strip() == f"ccmsec {VERSION}"
    probe = ("import importlib, importlib.metadata as m, json; "
             f"[importlib.import_module(p) for p in {PACKAGES!r}]; "
             "md = m.metadata('ccmsec'); "
             "print(json.dumps({'license': md['License-Expression'], "
             "'files': [str(f) for f in m.files('ccmsec') if 'LICENSE' in str(f)], "
             "'requires_python': md['Requires-Python']}))")
    facts = json.loads(ok([bin_dir / "python", "-c", probe]).stdout)
    assert facts["license"] == "Apache-2.0" and facts["files"], facts
    assert facts["requires_python"] == ">=3.11"
    # the database migrations and other data files travel in the wheel too
    mako = ("import importlib.resources as r; "
            "print(r.files('ccmsec.db.migrations').joinpath('script.py.mako').is_file())")
    assert ok([bin_dir / "python", "-c", mako]).stdout.strip() == "True"


@pytest.fixture(scope="module", params=PYTHONS)
def installed(request, tmp_path_factory):
    python = request.param
    if shutil.which(python) is None and not Path(python).exists():
        pytest.fail(f"{python} not found (scripts/test-install only passes interpreters it found)")
    tmp = tmp_path_factory.mktemp("install")
    source = fresh_venv(python, tmp / "from-source")
    ok([source / "python", "-m", "pip", "install", "--disable-pip-version-check", "--quiet", ROOT])
    wheel_dir = tmp / "wheels"
    ok([source / "python", "-m", "pip", "wheel", "--disable-pip-version-check", "--quiet", "--no-deps",
        "-w", wheel_dir, ROOT])
    (wheel,) = wheel_dir.glob("ccmsec-*.whl")
    from_wheel = fresh_venv(python, tmp / "from-wheel")
    ok([from_wheel / "python", "-m", "pip", "install", "--disable-pip-version-check", "--quiet", wheel])
    return python, source, from_wheel, tmp


def test_pip_install_dot_gives_a_working_command(installed):
    python, source, _, _ = installed
    check_installed(source)
    version = ok([source / "python", "-c", "import sys; print(sys.version.split()[0])"]).stdout.strip()
    print(f"{python}: Python {version}")


def test_the_built_wheel_installs_alone(installed):
    check_installed(installed[2])


def test_a_cluster_runs_from_the_installed_package(installed):
    _, source, _, tmp = installed
    # A short path: the cluster's unix sockets and loopback base derive from it.
    data = Path(tempfile.mkdtemp(prefix="ccmsec-inst-"))
    try:
        up = run([source / "ccmsec", "up", "-d", "--data", data], timeout=300)
        assert up.returncode == 0, up.stderr[-3000:] + "".join(
            f"\n--- {p.name}\n{p.read_text()[-1500:]}" for p in (data / "logs").glob("*.log"))
        status = run([source / "ccmsec", "status", "--json", "--data", data], timeout=60)
        rows = {r["service"]: r["state"] for r in json.loads(status.stdout)}
        assert status.returncode == 0 and all(s in ("SERVING", "RUNNING") for s in rows.values()), rows
        assert {"callmanager", "capf", "tftp-signer", "nats"} <= set(rows)
    finally:
        down = run([source / "ccmsec", "down", "--data", data], timeout=120)
        shutil.rmtree(data, ignore_errors=True)
    assert down.returncode == 0, down.stderr


def test_up_fails_fast_naming_a_missing_service_package(installed):
    _, _, from_wheel, tmp = installed
    site = Path(ok([from_wheel / "python", "-c", "import ccmsec_srst, os; "
                    "print(os.path.dirname(ccmsec_srst.__file__))"]).stdout.strip())
    shutil.rmtree(site)
    data = tmp / "missing"
    started = time.monotonic()
    done = run([from_wheel / "ccmsec", "up", "-d", "--data", data], timeout=120)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "missing: Python package ccmsec_srst (role srst)" in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 60
    assert not (data / "run" / "endpoints.json").exists()  # nothing written, nothing started
    as_json = run([from_wheel / "ccmsec", "--json", "up", "-d", "--data", data], timeout=120)
    assert json.loads(as_json.stderr)["exit_code"] == 1

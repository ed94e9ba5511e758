"""One local cluster per test session (starting eight services costs seconds, not minutes)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from ccmsec.cluster.runner import cluster_pids
from ccmsec.cluster.state import cluster_processes
from tests.conftest import run_cli


@pytest.fixture(scope="session")
def cluster():
    data = Path(tempfile.mkdtemp(prefix="ccmsec-e2e-"))
    result = run_cli("up", "-d", "--data", str(data), timeout=240)
    if result.returncode != 0:
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in (data / "logs").glob("*.log"))
        run_cli("down", "--data", str(data))
        pytest.fail(f"ccmsec up failed: {result.stderr}\n{logs}")
    endpoints = json.loads((data / "run" / "endpoints.json").read_text())
    yield {"data": data, "endpoints": endpoints}
    res = run_cli("down", "--data", str(data))
    left = cluster_pids(data)
    strays = cluster_processes(data)  # anything started for this cluster, pool workers included
    shutil.rmtree(data, ignore_errors=True)
    assert res.returncode == 0, res.stderr
    assert left == [] and strays == [], f"processes left after ccmsec down: {left} {strays}"

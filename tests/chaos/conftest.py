"""The chaos suite: a local cluster with a call-control subscriber, short keepalives and a short
stable period, a load of phones, one fault per test, and a report of convergence.

Run with `CCMSEC_CHAOS=1 uv run pytest tests/chaos` (`.ci/run` does, after the default suite).
Each test records a `Report` (time to converge: median and worst; calls dropped; events lost),
printed at the end of the run and written to `chaos-report.json` in the session's temp folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

from ccmsec.cluster.runner import cluster_pids
from ccmsec.runtime.grpcio import secure_channel
from ccmsec.runtime.identity import client_identity
from ccmsec_proto import phone_sim_pb2, phone_sim_pb2_grpc
from tests.conftest import run_cli

# Short intervals so the whole suite stays within minutes (docs/survivability.md gives the
# defaults and the measured figures).
CHAOS_ENV = {
    "CCMSEC_SCCP_KEEPALIVE": "1",            # a hung node is noticed in ~3 s
    "CCMSEC_PHONE_FAILBACK_STABLE": "4",     # seconds before the phones return to a node
    "CCMSEC_PHONE_PROBE_INTERVAL": "1",
    "CCMSEC_PHONE_STANDBY_INTERVAL": "1",
    "CCMSEC_PHONE_BOOT_RETRY_MAX": "3",
    "CCMSEC_SRST_DIRECTORY_REFRESH": "3",
}
REPORTS: list["Report"] = []


@dataclass
class Report:
    scenario: str
    phones: int
    converge_s: list[float] = field(default_factory=list)
    calls: int = 0
    calls_dropped: int = 0
    events_lost: int = 0
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.converge_s) if self.converge_s else float("nan")

    @property
    def worst(self) -> float:
        return max(self.converge_s) if self.converge_s else float("nan")

    def line(self) -> str:
        return (f"{self.scenario:<44} phones {self.phones:>3}  converge median {self.median:6.2f} s  "
                f"worst {self.worst:6.2f} s  calls {self.calls} dropped {self.calls_dropped}  "
                f"events lost {self.events_lost}" + (f"  ({self.note})" if self.note else ""))


def record(report: Report) -> Report:
    REPORTS.append(report)
    print("\nCHAOS " + report.line())
    return report


def pytest_terminal_summary(terminalreporter):
    if not REPORTS:
        return
    terminalreporter.section("chaos report (time to converge, calls dropped, events lost)")
    for r in REPORTS:
        terminalreporter.write_line(r.line())
    out = Path(tempfile.gettempdir()) / "chaos-report.json"
    out.write_text(json.dumps([{**asdict(r), "median": r.median, "worst": r.worst} for r in REPORTS], indent=2))
    terminalreporter.write_line(f"written to {out}")


class Cluster:
    def __init__(self, data: Path, endpoints: dict):
        self.data = data
        self.endpoints = endpoints

    def host(self, node: str) -> str:
        return self.endpoints["services"][node]["host"]

    def port(self, node: str, name: str) -> int:
        return self.endpoints["services"][node][name]

    def pid(self, node: str) -> int:
        state = json.loads((self.data / "run" / "state.json").read_text())
        return int(state["children"][node]["pid"])

    def signal(self, node: str, sig: int) -> int:
        pid = self.pid(node)
        os.kill(pid, sig)
        return pid

    def cli(self, *args, timeout=120):
        return run_cli(*args, "--data", str(self.data), timeout=timeout)

    async def phones(self) -> list[phone_sim_pb2.PhoneState]:
        svc = self.endpoints["services"]["phone-sim"]
        async with secure_channel(client_identity(self.data), svc["host"], svc["grpc_port"], "phone-sim") as ch:
            stub = phone_sim_pb2_grpc.PhoneSimStub(ch)
            reply = await stub.ListPhones(phone_sim_pb2.PhoneSelector(all=True), timeout=10)
        return list(reply.phones)


def start_cluster(prefix: str, subscribers: int = 1) -> Cluster:
    data = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ.update(CHAOS_ENV)   # inherited by the supervisor and every service it starts
    res = run_cli("up", "-d", "--data", str(data), "--subscribers", str(subscribers), timeout=300)
    if res.returncode != 0:
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in (data / "logs").glob("*.log"))
        run_cli("down", "--data", str(data))
        pytest.fail(f"ccmsec up failed: {res.stderr}\n{logs}")
    return Cluster(data, json.loads((data / "run" / "endpoints.json").read_text()))


def stop_cluster(cluster: Cluster) -> None:
    for node in cluster.endpoints["services"]:
        try:
            os.kill(cluster.pid(node), signal.SIGCONT)   # nothing left stopped behind
        except (OSError, KeyError, ValueError):
            pass
    res = cluster.cli("down")
    left = cluster_pids(cluster.data)
    shutil.rmtree(cluster.data, ignore_errors=True)
    assert res.returncode == 0, res.stderr
    assert left == [], f"processes left after ccmsec down: {left}"


async def until(predicate, what: str, timeout: float) -> float:
    """Poll an async or sync predicate; returns the seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return loop.time() - start
        assert loop.time() - start < timeout, f"no {what} within {timeout} s"
        await asyncio.sleep(0.2)


def now() -> float:
    return time.monotonic()

"""Every benchmark of `bench/` still runs to its figures (a smoke run of each, small and bounded).

The benchmarks drive the real services as phones reach them, so a change to a service's set-up
(who owns the cluster mode, the typed vocabulary, a new required argument) can stop one without
any test noticing — three did, and were found only when someone tried to measure. `.ci/run` runs
this module as its own step (`CCMSEC_BENCH=1`): each benchmark in its quick form must exit 0,
print no traceback, and print the line that carries its result. The figures themselves are not
checked here (a shared CI machine makes them noise); docs/performance.md records measured ones.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# benchmark -> (arguments for a small run, a line its result must print, time bound in seconds)
BENCHES: dict[str, tuple[tuple[str, ...], str, int]] = {
    "ctl_sign": (("--quick",), r"\.sgn config .* \d+\.\d+$", 180),
    "grpc_runtime": (("--quick",), r"ratio runtime/bare", 240),
    "keymanager_keys": (("--quick",), r"^ratio: \d", 180),
    "bus_events": (("--events", "100", "--rounds", "1"), r"ratio|median", 240),
    "memory_per_phone": (("--quick",), r"ours: +registered encrypted phone .* kB per phone", 240),
    "registration_storm": (("--quick",), r"reset-all: Reset sent to 200 phones; every phone back", 300),
    "resign_storm": (("--quick",), r"ratio ours/raw: \d", 180),
    "tftp_storm": (("--quick",), r"ratio ccmsec/tftpd-hpa: \d", 240),
    "tftp_service": (("--quick",), r"all \d+ devices: change committed", 300),
    "call_setup": (("--quick",), r"held: +100 calls at once", 240),
    "reset_latency": (("--quick",), r'"after"', 300),
    "failover": (("--quick",), r'"note"', 420),
    "capf_issue": (("--quick",), r"run 1 capf +: 200/200", 420),
    "srtp_gateway": (("--quick",), r"G\.711 calls per core: \d", 300),
}


def test_every_benchmark_is_listed():
    """A new benchmark gets its smoke run too (tftp_owners.py is tftp_service's helper process)."""
    scripts = {p.stem for p in (ROOT / "bench").glob("*.py")} - {"tftp_owners"}
    assert scripts == set(BENCHES), f"bench/ and this list differ: {sorted(scripts ^ set(BENCHES))}"


@pytest.mark.parametrize("name", sorted(BENCHES))
def test_benchmark_runs(name):
    args, result_line, bound = BENCHES[name]
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / f"{name}.py"), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=bound)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the bench and what it started in its session
        try:
            stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # something it started elsewhere still holds the pipes
            stdout, stderr = "", ""
        pytest.fail(f"bench/{name}.py {' '.join(args)} ran over {bound} s; its output:\n"
                    f"{(stdout + stderr)[-3000:]}")
    output = stdout + stderr
    assert proc.returncode == 0, f"bench/{name}.py exited {proc.returncode}:\n{output[-4000:]}"
    assert "Traceback (most recent call last)" not in output, output[-4000:]
    assert re.search(result_line, stdout, re.MULTILINE), \
        f"bench/{name}.py printed no line matching {result_line!r}:\n{stdout[-3000:]}"

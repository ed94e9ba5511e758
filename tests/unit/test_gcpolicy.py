"""runtime/gcpolicy.py: what a service process holding thousands of connections does to the
garbage collector after set-up, and that only a service owning its process does it."""

from __future__ import annotations

import json
import subprocess
import sys


# In a child interpreter: freezing the test run's own process would change the collector of every
# later test in it.
CHILD = """
import gc, json
from ccmsec.runtime import gcpolicy
young, middle, _ = gc.get_threshold()
alive = [object() for _ in range(10)], {"kept": [1, 2, 3]}
frozen = gcpolicy.tune_for_long_lived_connections(full_every=77)
cycle = []
cycle.append(cycle)
del cycle
print(json.dumps({"frozen": frozen, "count": gc.get_freeze_count(), "threshold": gc.get_threshold(),
                  "before": [young, middle], "collected": gc.collect(), "alive": bool(alive)}))
"""


def test_freezes_what_is_alive_and_spaces_only_full_collections_out():
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["frozen"] == got["count"] > 0
    assert got["threshold"] == [*got["before"], 77]   # young generations as before
    assert got["collected"] >= 1 and got["alive"]     # what is created afterwards is still collected


def test_only_a_service_owning_its_process_and_holding_connections_tunes_it():
    from ccmsec.runtime.service import Service
    from ccmsec_callmanager.main import CallManagerService

    assert CallManagerService.long_lived_connections and not Service.long_lived_connections
    # in-process hosts (tests) never: run_service alone marks the process as the service's
    # (tests/integration/test_callmanager_service.py runs the service both ways)
    assert CallManagerService.owns_process is False

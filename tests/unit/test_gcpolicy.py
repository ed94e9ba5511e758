"""runtime/gcpolicy.py: what a service process holding thousands of connections does to the
garbage collector after set-up, and that only a service owning its process does it."""

from __future__ import annotations

import gc

import pytest

from ccmsec.runtime import gcpolicy


@pytest.fixture
def restored_gc():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_freezes_what_is_alive_and_spaces_only_full_collections_out(restored_gc):
    young, middle, _ = gc.get_threshold()
    alive = [object() for _ in range(10)], {"kept": [1, 2, 3]}
    frozen = gcpolicy.tune_for_long_lived_connections(full_every=77)
    assert frozen == gc.get_freeze_count() > 0
    assert gc.get_threshold() == (young, middle, 77)   # young generations as before
    # what is created afterwards is still collected, cycles included
    cycle = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1
    assert alive


def test_only_a_service_owning_its_process_and_holding_connections_tunes_it():
    from ccmsec.runtime.service import Service
    from ccmsec_callmanager.main import CallManagerService

    assert CallManagerService.long_lived_connections and not Service.long_lived_connections
    # in-process hosts (tests) never: run_service alone marks the process as the service's
    # (tests/integration/test_callmanager_service.py runs the service both ways)
    assert CallManagerService.owns_process is False

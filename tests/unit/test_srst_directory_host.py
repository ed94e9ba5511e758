"""SRST-1 in compose: the SRST router asks call control for the phones whose SRST reference names
it. In a container it listens on every address (CCMSEC_HOST=0.0.0.0); asked with that wildcard,
call control matched no reference, so phones of a pool whose reference names `srst` (the compose
name) were unknown to the router and none could fall back to it (found by tests/compose/
test_faults.py, every call-control node killed). It asks with its node name there."""

from __future__ import annotations

import pytest

from ccmsec_srst.main import directory_host


@pytest.mark.parametrize("host", ["0.0.0.0", "::", ""])
def test_a_router_listening_everywhere_is_named_by_its_node(host):
    assert directory_host(host, "srst") == "srst"


def test_a_router_on_its_own_address_is_named_by_that_address():
    # the local runner: each node on a loopback address of its own, which references name
    assert directory_host("127.0.0.9", "srst") == "127.0.0.9"

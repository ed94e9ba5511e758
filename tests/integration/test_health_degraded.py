"""BUS-5: a DEGRADED service says so over gRPC health, whatever its reason is written in."""

from __future__ import annotations

import pytest

from ccmsec.cluster.pki import issue_client_identity, issue_service_identity
from ccmsec.runtime.grpcio import GrpcServer, health_detail
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(60)


async def test_a_reason_outside_ascii_still_reads_degraded_with_its_reason_BUS_5(tmp_path):
    """The reason rides a metadata trailer, which gRPC allows only in printable ASCII: a reason
    with an em dash or an accent (an owner's error text) failed the whole health answer with
    INTERNAL 'Invalid metadata', so `ccmsec status` and the healthcheck saw UNREACHABLE."""
    ident = issue_service_identity(tmp_path, "keymanager", "keymanager", "127.0.0.1")
    cli = issue_client_identity(tmp_path, "cli")
    port = free_port("127.0.0.1")
    server = GrpcServer(ident, "127.0.0.1", port, metrics=False)
    await server.start()
    try:
        await server.set_degraded("device files unavailable: callmanager did not answer — “réseau” …")
        state, why = await health_detail(cli, "127.0.0.1", port, "keymanager")
    finally:
        await server.stop(0)
    assert state == "DEGRADED"
    assert why == 'device files unavailable: callmanager did not answer - "r?seau" ...'

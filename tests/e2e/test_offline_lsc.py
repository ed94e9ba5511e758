"""Offline CA on the running cluster: the callmanager process trusts a third-party CA for SCCP/TLS
(2443) once `ccmsec capf set-ca` gave it to CAPF — CAPF's `lsc-ca.changed`, then call control asks
`Capf/GetThirdPartyCa` — no restart (same process id before and after).

Only the TLS handshake is checked here: whether the Register is then accepted depends on the mode
the shared cluster is in (proved in process in tests/integration/test_offline_lsc_flow.py)."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ccmsec.cluster.state import read_state
from ccmsec.pki.ca import Issued, create_ca, issue, name, new_key
from ccmsec.pki.tls import peer_is_one_of, sccp_phone_context
from tests.conftest import run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


async def _handshake(host: str, port: int, ctx: ssl.SSLContext, ccm: x509.Certificate) -> bool:
    """True when mutual TLS completes and call control answers a Register-sized write."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx, server_hostname=""), 10)
    except (OSError, ssl.SSLError, asyncio.TimeoutError):
        return False
    try:
        assert peer_is_one_of(writer.get_extra_info("ssl_object"), [ccm])
        return True
    finally:
        writer.close()


async def _handshake_within(host: str, port: int, ctx: ssl.SSLContext, ccm: x509.Certificate, *,
                            expect: bool, timeout: float = 15.0) -> bool:
    """The handshake's outcome once it is `expect` (CAPF's event and call control's question take
    a moment), or the last outcome after `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        outcome = await _handshake(host, port, ctx, ccm)
        if outcome == expect or asyncio.get_running_loop().time() > deadline:
            return outcome
        await asyncio.sleep(0.3)


def _pid(data) -> int:
    return int(read_state(data)["children"]["callmanager"]["pid"])


async def test_cert2_callmanager_trusts_set_ca_without_restart(cluster, tmp_path):
    data = cluster["data"]
    svc = cluster["endpoints"]["services"]["callmanager"]
    host, port = svc["host"], svc["sccp_tls_port"]
    ccm = x509.load_der_x509_certificate((data / "servers" / "callmanager" / "ccmserver.cer").read_bytes())
    outside = create_ca(name("E2E Offline Phone CA", org="Example"))
    key = new_key("ec256")
    lsc = Issued(issue(outside, name("SEP00E2E0FF001"), key.public_key(), client=True, server=True), key)
    ctx = sccp_phone_context("authenticated", [ccm], lsc=lsc)
    pid = _pid(data)

    assert not await _handshake(host, port, ctx, ccm), "an LSC of an unconfigured CA got through TLS"
    (tmp_path / "ca.crt").write_bytes(outside.pem)
    res = run_cli("capf", "set-ca", str(tmp_path / "ca.crt"), "--data", str(data), timeout=60)
    assert res.returncode == 0, res.stderr
    assert await _handshake_within(host, port, ctx, ccm, expect=True), "set-ca not picked up by callmanager"
    assert _pid(data) == pid  # no restart

    # Another CA replaces it: this LSC is refused again.
    other = create_ca(name("E2E Offline Phone CA 2", org="Example"))
    (tmp_path / "other.crt").write_bytes(other.cert.public_bytes(serialization.Encoding.PEM))
    res = run_cli("capf", "set-ca", str(tmp_path / "other.crt"), "--data", str(data), timeout=60)
    assert res.returncode == 0, res.stderr
    assert not await _handshake_within(host, port, ctx, ccm, expect=False)

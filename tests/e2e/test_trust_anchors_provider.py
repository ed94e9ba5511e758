"""CTL Provider on the shared session cluster — read-only checks that change no cluster state."""

from __future__ import annotations

import hashlib

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.e2e


def test_cert5_provider_answers_with_the_servers_own_certificates(cluster):
    """CERT-5: the CallManager and TFTP certificates the CTL would list are the ccmserver.cer
    files those services created at first start (CAPF: its certificate, CERT-3)."""
    res = run_cli("ctl", "provider", "certificates", "--data", str(cluster["data"]))
    assert res.returncode == 0, res.stderr
    lines = {line.split()[0]: line for line in res.stdout.splitlines()}
    assert set(lines) == {"CCM", "TFTP", "CAPF"}
    for role, folder in (("CCM", "callmanager"), ("TFTP", "tftp-signer")):
        der = (cluster["data"] / "servers" / folder / "ccmserver.cer").read_bytes()
        assert f"sha256={hashlib.sha256(der).hexdigest()[:16]}" in lines[role]
        assert cluster["endpoints"]["services"][folder]["host"] in lines[role]


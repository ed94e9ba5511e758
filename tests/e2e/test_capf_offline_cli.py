"""Offline-CA CLI on the running cluster: `ccmsec capf set-ca`, `export-csrs`, `import-certs`.

The whole offline flow (CSR over the CAPF port, outside openssl CA, import, delivery) is proved in
tests/integration/test_capf_offline_service.py; switching the shared cluster to issuer=offline
would reset every device (RST-6) under the other e2e tests, so here the CLI wiring and its
refusals are exercised without changing the issuer."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization

from ccmsec.pki.ca import create_ca, issue, name, new_key
from tests.conftest import run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


def _cli(data, *args):
    return run_cli("capf", *args, "--data", str(data), timeout=60)


def test_offline_cli_set_ca_export_and_import_refusals(cluster, tmp_path):
    data = cluster["data"]
    ca = create_ca(name("E2E Third-Party CA", org="Example"))
    leaf = issue(ca, name("SEP0000000EE001"), new_key("ec256").public_key(), client=True)
    (tmp_path / "ca.crt").write_bytes(ca.pem)
    (tmp_path / "garbage.crt").write_bytes(b"garbage")
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))

    bad = _cli(data, "set-ca", str(tmp_path / "leaf.pem"))
    assert bad.returncode != 0 and "not a CA" in bad.stderr, bad
    ok = _cli(data, "set-ca", str(tmp_path / "ca.crt"))
    assert ok.returncode == 0, ok.stderr
    assert "E2E Third-Party CA" in ok.stdout
    assert (data / "capf" / "lsc-third-party-ca.crt").read_bytes() == ca.pem  # CAPF's own folder

    out = tmp_path / "csrs"
    exported = _cli(data, "export-csrs", str(out))
    assert exported.returncode == 0, exported.stderr
    assert "CSR(s) awaiting the third-party CA" in exported.stdout

    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "garbage.crt").write_bytes(b"garbage")
    (certs / "stranger.pem").write_bytes((tmp_path / "leaf.pem").read_bytes())
    imported = _cli(data, "import-certs", str(certs))
    assert imported.returncode == 5, imported
    assert "REFUSED  garbage.crt: " in imported.stdout and "not an X.509 certificate" in imported.stdout
    assert "REFUSED  stranger.pem: " in imported.stdout and "matches no CSR" in imported.stdout
    assert "0 imported, 2 refused" in imported.stdout

    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = _cli(data, "import-certs", str(empty))
    assert nothing.returncode != 0 and "no certificate files" in nothing.stderr

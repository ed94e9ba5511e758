"""Named CLI contexts (issue 13): the command line reaches a cluster by name — its administration
API address, the cluster CA and credentials kept 0600 (DEPLOY-2) — instead of the local runner's."""

from __future__ import annotations

import os
import stat

import pytest

from ccmsec import contexts
from ccmsec.adminclient import AdminConfigError, discover
from ccmsec.cli.main import main

PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.setenv("CCMSEC_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("CCMSEC_CONTEXT", raising=False)
    ca = tmp_path / "ca.crt"
    ca.write_bytes(PEM)
    pw = tmp_path / "pw"
    pw.write_text("the-admin-password\n")
    return tmp_path


def _add(config, name="compose", *extra):
    return main(["context", "add", name, "--url", "https://127.0.0.1:18443", "--ca-file",
                 str(config / "ca.crt"), "--password-file", str(config / "pw"), *extra])


def test_add_use_and_discover_take_the_context(config, capsys):
    assert _add(config, "compose", "--use") == 0
    ctx = contexts.load("compose")
    assert stat.S_IMODE(os.stat(ctx.password_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(ctx.folder).st_mode) == 0o700
    assert "the-admin-password" not in capsys.readouterr().out
    endpoint = discover(config / "no-local-cluster")
    assert endpoint.url == "https://127.0.0.1:18443" and endpoint.password == "the-admin-password"
    assert endpoint.cafile == ctx.cafile and endpoint.username == "admin"
    # an explicit --url still wins; CCMSEC_CONTEXT= (empty) means the local cluster
    os.environ["CCMSEC_CONTEXT"] = ""
    try:
        with pytest.raises(AdminConfigError, match="no administration API address"):
            discover(config / "no-local-cluster")
    finally:
        del os.environ["CCMSEC_CONTEXT"]
    assert main(["context", "list"]) == 0
    assert "* compose" in capsys.readouterr().out
    assert main(["context", "show", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"url": "https://127.0.0.1:18443"' in out and "the-admin-password" not in out
    assert main(["context", "use", "--none"]) == 0
    assert contexts.active() is None


def test_bad_contexts_are_refused_with_a_reason(config, capsys):
    assert main(["context", "add", "../evil", "--url", "https://x", "--ca-file", str(config / "ca.crt"),
                 "--password-file", str(config / "pw")]) == 1
    assert "bad context name" in capsys.readouterr().err
    assert main(["context", "add", "c", "--url", "http://127.0.0.1:8443", "--ca-file",
                 str(config / "ca.crt"), "--password-file", str(config / "pw")]) == 1
    assert "must be https://" in capsys.readouterr().err
    (config / "bad.crt").write_text("not a certificate")
    assert main(["context", "add", "c", "--url", "https://127.0.0.1:8443", "--ca-file",
                 str(config / "bad.crt"), "--password-file", str(config / "pw")]) == 1
    assert "no PEM certificate" in capsys.readouterr().err
    assert main(["context", "use", "nosuch"]) == 1
    assert "no context named 'nosuch'" in capsys.readouterr().err
    assert contexts.names() == []
    # a password file loosened by hand is refused, not used
    assert _add(config, "loose", "--use") == 0
    os.chmod(contexts.load("loose").password_file, 0o644)
    with pytest.raises(AdminConfigError, match="must be 0600"):
        discover(config)
    os.environ["CCMSEC_CONTEXT"] = "gone"
    try:
        with pytest.raises(AdminConfigError, match="no context named 'gone'"):
            discover(config)
    finally:
        del os.environ["CCMSEC_CONTEXT"]


def test_remove_forgets_the_credentials(config):
    assert _add(config, "tmp", "--use") == 0
    folder = contexts.load("tmp").folder
    assert main(["context", "remove", "tmp"]) == 0
    assert not folder.exists() and contexts.current_name() is None

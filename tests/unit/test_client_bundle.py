"""Issue 13 item 4: the CLI on the host reaches a compose cluster's services, not only its
administration API. `ccmsec compose client-bundle` (in the `cli` container) hands out the cli
identity, the CA, the admin password and the host side of the published ports;
`ccmsec context add NAME --client-bundle -` keeps them 0600 in the context, and the gRPC commands
then use the context's `cluster/` folder (mutual TLS with that identity — tests/compose proves it
against the running cluster)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from ccmsec import contexts
from ccmsec.cli.common import data_dir
from ccmsec.cli.main import main
from ccmsec.cluster import compose, pki
from ccmsec.cluster.state import read_endpoints
from ccmsec.runtime.identity import client_identity


@pytest.fixture
def cli_container(tmp_path, monkeypatch):
    """What the `cli` container holds: its identity, the CA certificate, the admin password, and
    the host ports of the env file in its environment."""
    ca_home = tmp_path / "ca"
    cli = tmp_path / "cli"
    pki.issue_client_identity(ca_home, "cli", out_dir=cli / "identities" / "clients" / "cli")
    (cli / "pki").mkdir(parents=True)
    (cli / "pki" / "cluster-ca.crt").write_bytes((ca_home / "pki" / pki.CA_CERT).read_bytes())
    admin = tmp_path / "admin"
    admin.mkdir()
    (admin / "admin-password").write_text("generated-admin-pw\n")
    monkeypatch.setattr(compose, "ADMIN_SECRET_DIR", str(admin))
    monkeypatch.setenv("CCMSEC_DATA_DIR", str(cli))
    monkeypatch.setenv(compose.BIND_VARIABLE, "0.0.0.0")
    monkeypatch.setenv(compose.publish_variable("phone-sim", "grpc_port"), "31055")
    monkeypatch.setenv(compose.publish_variable("callmanager", "admin_port"), "31443")
    monkeypatch.setenv("CCMSEC_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("CCMSEC_CONTEXT", raising=False)
    return tmp_path


def _other_ca_identity(root) -> dict:
    out = root / "intruder"
    pki.issue_client_identity(root / "other-ca", "cli", out_dir=out)
    return {p.name: p.read_text() for p in out.iterdir() if p.is_file()}


def _bundle(capsys) -> str:
    assert main(["compose", "client-bundle"]) == 0
    return capsys.readouterr().out


def test_bundle_to_context_gives_the_grpc_commands_the_cli_identity_and_host_ports(cli_container, capsys,
                                                                                  monkeypatch):
    raw = _bundle(capsys)
    doc = json.loads(raw)
    assert doc["admin_url"] == "https://127.0.0.1:31443"  # 0.0.0.0 is reached on loopback
    assert doc["services"]["phone-sim"] == {"host": "127.0.0.1", "grpc_port": 31055}
    assert doc["services"]["capf"]["grpc_port"] == compose.GRPC_HOST_PORT_BASE + 1  # the default
    # the event bus's published port (the default here) and the cli identity's nkey seed for it
    assert doc["nats_url"] == "nats://127.0.0.1:14222" and "nats" not in doc["services"]
    assert doc["identity"]["nats.nk"].startswith("SU")
    bundle = cli_container / "bundle.json"
    bundle.write_text(raw)
    monkeypatch.delenv("CCMSEC_DATA_DIR")
    assert main(["context", "add", "compose", "--client-bundle", str(bundle), "--use"]) == 0
    assert "generated-admin-pw" not in capsys.readouterr().out
    ctx = contexts.load("compose")
    assert ctx.reaches_grpc and ctx.password() == "generated-admin-pw"
    key = ctx.cluster_dir / "identities" / "clients" / "cli" / "tls.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(key.parent / "nats.nk").st_mode) == 0o600   # the bus credential too
    for folder in (ctx.folder, ctx.cluster_dir, key.parent):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    # the gRPC commands' data folder is the context's; its identity loads without any CA key
    import argparse

    d = data_dir(argparse.Namespace())
    assert d == ctx.cluster_dir
    assert read_endpoints(d)["services"]["phone-sim"]["grpc_port"] == 31055
    assert read_endpoints(d)["nats_url"] == "nats://127.0.0.1:14222"  # the bus commands' (demo's) address
    ident = client_identity(d)
    assert ident.identity.uri == "spiffe://ccmsec/cli/cli"
    assert not (d / "pki" / "cluster-ca.key").exists()
    # the local runner's own commands never take a context's folder; --data and the variable win
    assert data_dir(argparse.Namespace(), local=True) != ctx.cluster_dir
    assert data_dir(argparse.Namespace(data=cli_container / "x")) == (cli_container / "x").resolve()
    # removing the context removes the identity with it
    assert main(["context", "remove", "compose"]) == 0
    assert not ctx.folder.exists()


def test_bad_bundles_are_refused_with_a_reason(cli_container, capsys, monkeypatch):
    raw = json.loads(_bundle(capsys))
    cases = {
        "not-json": ("{not json", "not JSON"),
        "other-format": (json.dumps({**raw, "format": "something/2"}), "not a client bundle"),
        "no-key": (json.dumps({**raw, "identity": {k: v for k, v in raw["identity"].items() if k != "tls.key"}}),
                   "tls.key"),
        "path-escape": (json.dumps({**raw, "identity": {**raw["identity"], "../../evil": "x"}}),
                        "bad identity file name"),
        "other-ca": (json.dumps({**raw, "identity": _other_ca_identity(cli_container)}),
                     "not the bundle's CA"),
        "bad-nats-url": (json.dumps({**raw, "nats_url": "tls://elsewhere"}), "nats_url must be nats://HOST:PORT"),
        "nats-without-seed": (json.dumps({**raw, "identity": {k: v for k, v in raw["identity"].items()
                                                              if k != "nats.nk"}}), "needs the identity's nkey seed"),
        "forged-cert": (json.dumps({**raw, "identity": {**_other_ca_identity(cli_container),
                                                         "ca.crt": raw["ca"]}}),
                        "not issued by the bundle's CA"),
    }
    for name, (text, reason) in cases.items():
        path = cli_container / f"{name}.json"
        path.write_text(text)
        assert main(["context", "add", name, "--client-bundle", str(path)]) != 0
        assert reason in capsys.readouterr().err, name
        assert not (cli_container / "evil").exists()
        assert name not in contexts.names()  # nothing half-made
    # the bundle carries the CA and the password: giving them again is refused
    path = cli_container / "ok.json"
    path.write_text(json.dumps(raw))
    assert main(["context", "add", "x", "--client-bundle", str(path), "--password-file", str(path)]) != 0
    assert "carries the CA and the password" in capsys.readouterr().err
    # and the administration-only form still needs its URL and CA
    assert main(["context", "add", "y"]) != 0
    assert "--url and --ca-file" in capsys.readouterr().err


def test_bundle_names_every_call_control_subscriber_the_compose_file_rendered(cli_container, capsys,
                                                                              monkeypatch):
    """Issue 12: subscribers' SCCP and gRPC ports are published too; the bundle carries those the
    `cli` container's environment names (the compose file's subscribers), and no other."""
    for node, base in (("callmanager-sub1", 32000), ("callmanager-sub2", 33000)):
        monkeypatch.setenv(compose.publish_variable(node, "sccp_port"), str(base))
        monkeypatch.setenv(compose.publish_variable(node, "grpc_port"), str(base + 1))
    services = json.loads(_bundle(capsys))["services"]
    assert services["callmanager-sub1"] == {"host": "127.0.0.1", "sccp_port": 32000, "grpc_port": 32001,
                                            "sccp_tls_port": 22443}  # a default the env left
    assert services["callmanager-sub2"]["grpc_port"] == 33001
    assert "admin_port" not in services["callmanager-sub1"]  # the publisher's alone
    assert "callmanager-sub3" not in services  # not rendered: nothing of it in the environment


def test_bundle_hands_out_the_published_nats_port_of_the_env_file(cli_container, capsys, monkeypatch):
    monkeypatch.setenv(compose.NATS_PUBLISH_VARIABLE, "31422")
    assert json.loads(_bundle(capsys))["nats_url"] == "nats://127.0.0.1:31422"


def test_bundle_without_the_cli_nkey_is_refused_with_a_reason(cli_container, capsys):
    (cli_container / "cli" / "identities" / "clients" / "cli" / "nats.nk").unlink()
    assert main(["compose", "client-bundle"]) != 0
    assert "has no nats.nk" in capsys.readouterr().err

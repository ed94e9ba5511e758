"""Identities (issue 9 §1): a certificate states one role/node in its URI, parsed in one place;
the issuer alone opens the CA key; each folder holds one key, 0600, in a 0700 folder."""

from __future__ import annotations

import os
import stat

import pytest
from cryptography import x509

from ccmsec.cli.main import main as cli_main
from ccmsec.cluster import pki as issuer
from ccmsec.pki import ca as ca_mod
from ccmsec.runtime.identity import (
    Identity, IdentityCache, IdentityError, identity_of, load_identity, make_identity,
    parse_identity_uri,
)


def _cert(ca, *, uris=(), server=True, client=True, dns=("x",)) -> x509.Certificate:
    key = ca_mod.new_key("ec256")
    return ca_mod.issue(ca, ca_mod.name("t"), key.public_key(), dns_names=dns, uris=uris,
                        server=server, client=client)


@pytest.fixture(scope="module")
def ca():
    return ca_mod.create_ca(ca_mod.name("test CA"), ca_mod.new_key("ec256"))


def test_the_uri_names_role_and_node(ca):
    ident = identity_of(_cert(ca, uris=["spiffe://ccmsec/keymanager/km-2"]))
    assert ident == Identity("keymanager", "km-2") and str(ident) == "keymanager/km-2"
    assert ident.uri == "spiffe://ccmsec/keymanager/km-2"
    assert identity_of(_cert(ca, uris=["spiffe://ccmsec/cli/ops"]), purpose="client").role == "cli"
    assert identity_of(_cert(ca, uris=["spiffe://ccmsec/admin-api/callmanager"])).role == "admin-api"


@pytest.mark.parametrize("uris, why", [
    ((), "no identity URI"),
    (("spiffe://ccmsec/keymanager/a", "spiffe://ccmsec/callmanager/a"), "exactly one"),
    (("spiffe://ccmsec/callmanager/a", "https://example.invalid/"), "exactly one"),
    (("spiffe://other/callmanager/a",), "trust domain"),
    (("SPIFFE://ccmsec/callmanager/a",), "trust domain"),
    (("spiffe://ccmsec/pbx/a",), "unknown role"),
    (("spiffe://ccmsec/callmanager",), "<role>/<node>"),
    (("spiffe://ccmsec/callmanager/a/b",), "<role>/<node>"),
    (("spiffe://ccmsec/callmanager/",), "bad node"),
    (("spiffe://ccmsec/callmanager/A%2F",), "bad node"),
    (("spiffe://ccmsec/callmanager/" + "a" * 300,), "too long"),
])
def test_a_certificate_without_exactly_one_valid_identity_states_none(ca, uris, why):
    """Forged, missing, duplicate or foreign role URIs never pass for any role."""
    with pytest.raises(IdentityError, match=why):
        identity_of(_cert(ca, uris=list(uris)))


def test_dns_names_and_common_name_never_stand_in_for_the_uri(ca):
    cert = _cert(ca, dns=("callmanager", "keymanager"))
    with pytest.raises(IdentityError, match="no identity URI"):
        identity_of(cert)


def test_purpose_requires_the_matching_key_usage(ca):
    server_only = _cert(ca, uris=["spiffe://ccmsec/capf/capf"], client=False)
    client_only = _cert(ca, uris=["spiffe://ccmsec/cli/cli"], server=False)
    with pytest.raises(IdentityError, match="client authentication"):
        identity_of(server_only, purpose="client")
    with pytest.raises(IdentityError, match="server authentication"):
        identity_of(client_only, purpose="server")


def test_make_identity_validates_both_parts():
    assert make_identity("srst", "branch.1") == Identity("srst", "branch.1")
    for role, node in (("root", "x"), ("capf", ""), ("capf", "-x"), ("capf", "x y"), ("capf", "X")):
        with pytest.raises(IdentityError):
            make_identity(role, node)
    with pytest.raises(IdentityError):
        parse_identity_uri("spiffe://ccmsec//x")


def test_cache_parses_each_certificate_once_and_remembers_refusals(ca, monkeypatch):
    from ccmsec.runtime import identity as mod

    good = _cert(ca, uris=["spiffe://ccmsec/callmanager/cm"]).public_bytes(ca_mod.serialization.Encoding.PEM)
    bad = _cert(ca).public_bytes(ca_mod.serialization.Encoding.PEM)
    calls = []
    real = mod.identity_of
    monkeypatch.setattr(mod, "identity_of", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = IdentityCache(limit=8)
    for _ in range(5):
        assert cache.get(good) == Identity("callmanager", "cm")
        with pytest.raises(IdentityError):
            cache.get(bad)
    with pytest.raises(IdentityError, match="unreadable"):
        cache.get(b"not a certificate")
    assert len(calls) == 2


def test_the_fast_path_remembers_names_only_with_the_identity_uri_among_them():
    """The per-call look-up by the peer's verified names (authz fast path) holds only names that
    contain the identity's own URI: a name list without it can never stand for an identity."""
    cache = IdentityCache(limit=2)
    cm = Identity("callmanager", "cm")
    cache.remember_names([b"cm", b"localhost"], cm)          # no URI: not remembered
    cache.remember_names([b"cm", b"spiffe://ccmsec/capf/cm"], cm)   # another identity's URI
    assert cache.by_names == {}
    cache.remember_names([b"cm", b"spiffe://ccmsec/callmanager/cm"], cm)
    assert cache.by_names == {(b"cm", b"spiffe://ccmsec/callmanager/cm"): cm}
    for n in range(3):   # bounded
        cache.remember_names([b"spiffe://ccmsec/callmanager/n%d" % n], Identity("callmanager", f"n{n}"))
    assert len(cache.by_names) <= 2


def test_issuing_writes_one_private_folder_per_identity_and_keeps_it(tmp_path):
    held = issuer.issue_service_identity(tmp_path, "capf", "capf", "127.0.0.3")
    folder = tmp_path / "identities" / "services" / "capf"
    assert held.folder == folder and str(held.identity) == "capf/capf"
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(folder / "tls.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "pki").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "pki" / "cluster-ca.key").st_mode) == 0o600
    # the certificate, its key, the CA certificate and the bus credentials (BUS-1), nothing else
    assert sorted(p.name for p in folder.iterdir()) == ["ca.crt", "nats.nk", "tls.crt", "tls.key"]
    assert stat.S_IMODE(os.stat(folder / "nats.nk").st_mode) == 0o600
    assert (folder / "ca.crt").read_bytes() == (tmp_path / "pki" / "cluster-ca.crt").read_bytes()
    # Kept as it is — without even opening the CA key — while nothing changed.
    key_before = (folder / "tls.key").read_bytes()
    ca_key = tmp_path / "pki" / "cluster-ca.key"
    ca_key.rename(tmp_path / "offline-ca.key")
    again = issuer.issue_service_identity(tmp_path, "capf", "capf", "127.0.0.3")
    assert again.key_pem == key_before and not ca_key.exists()  # no new CA either
    with pytest.raises(IdentityError, match="cluster-ca.crt exists but .*cluster-ca.key does not"):
        issuer.issue_service_identity(tmp_path, "capf", "capf", "127.0.0.9")  # needs the key
    (tmp_path / "offline-ca.key").rename(ca_key)
    # A new address is re-issued with a new key.
    moved = issuer.issue_service_identity(tmp_path, "capf", "capf", "127.0.0.4")
    assert moved.key_pem != key_before
    cert = x509.load_pem_x509_certificate(moved.cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.4"]
    assert set(san.get_values_for_type(x509.DNSName)) == {"capf", "localhost"}


def test_an_identity_near_its_end_is_issued_again(tmp_path):
    """Identity certificates last 825 days; a folder whose certificate had expired (or was about
    to) was kept as 'current' for ever, so `ccmsec up` never renewed it and every mutual-TLS call
    of that node failed."""
    import datetime as dt

    from ccmsec.fsutil import atomic_write
    from ccmsec.runtime.identity import CERT_FILE

    held = issuer.issue_service_identity(tmp_path, "keymanager", "keymanager", "127.0.0.6")
    folder = held.folder
    cert = x509.load_pem_x509_certificate(held.cert_pem)
    cluster_ca = issuer.ensure_cluster_ca(tmp_path)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    short = ca_mod.issue(cluster_ca, cert.subject, cert.public_key(), days=10,
                         dns_names=san.get_values_for_type(x509.DNSName),
                         ip_addresses=[str(a) for a in san.get_values_for_type(x509.IPAddress)],
                         uris=san.get_values_for_type(x509.UniformResourceIdentifier))
    from cryptography.hazmat.primitives import serialization

    atomic_write(folder / CERT_FILE, short.public_bytes(serialization.Encoding.PEM))
    again = issuer.issue_service_identity(tmp_path, "keymanager", "keymanager", "127.0.0.6")
    renewed = x509.load_pem_x509_certificate(again.cert_pem)
    assert renewed.not_valid_after_utc - dt.datetime.now(dt.timezone.utc) > dt.timedelta(days=800)
    # one far from its end is kept as it is
    assert issuer.issue_service_identity(tmp_path, "keymanager", "keymanager", "127.0.0.6").cert_pem == again.cert_pem


def test_callmanager_folder_also_holds_the_admin_api_identity(tmp_path):
    issuer.issue_service_identity(tmp_path, "callmanager", "cm1", "127.0.0.5")
    admin = load_identity(tmp_path / "identities" / "services" / "cm1" / "admin-api")
    assert str(admin.identity) == "admin-api/cm1"
    assert identity_of(x509.load_pem_x509_certificate(admin.cert_pem), purpose="server")
    assert identity_of(x509.load_pem_x509_certificate(admin.cert_pem), purpose="client")


def test_client_identity_is_client_only(tmp_path):
    held = issuer.issue_client_identity(tmp_path, "bench")
    cert = x509.load_pem_x509_certificate(held.cert_pem)
    assert str(identity_of(cert, purpose="client")) == "cli/bench"
    with pytest.raises(IdentityError):
        identity_of(cert, purpose="server")


def test_a_certificate_of_another_ca_is_replaced(tmp_path):
    first = issuer.issue_service_identity(tmp_path, "srst", "srst", "127.0.0.8")
    for name in ("cluster-ca.crt", "cluster-ca.key"):
        (tmp_path / "pki" / name).unlink()
    second = issuer.issue_service_identity(tmp_path, "srst", "srst", "127.0.0.8")
    assert second.ca_pem != first.ca_pem
    x509.load_pem_x509_certificate(second.cert_pem).verify_directly_issued_by(
        x509.load_pem_x509_certificate(second.ca_pem))


def test_load_identity_refuses_missing_files_and_a_key_others_can_read(tmp_path):
    with pytest.raises(IdentityError, match="no identity in .*missing ca.crt, tls.crt, tls.key|missing tls.crt"):
        load_identity(tmp_path / "nothing")
    held = issuer.issue_client_identity(tmp_path, "cli")
    os.chmod(held.key_path, 0o644)
    with pytest.raises(IdentityError, match="readable by others"):
        load_identity(held.folder)


def test_pki_issue_command_gives_one_folder_and_refuses_bad_input(tmp_path, capsys):
    out = tmp_path / "out" / "keymanager"
    assert cli_main(["pki", "issue", "--data", str(tmp_path / "ca"), "--role", "keymanager",
                     "--out", str(out), "--dns", "keymanager.internal", "--ip", "10.1.2.3"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"spiffe://ccmsec/keymanager/keymanager -> {out}")
    assert str(load_identity(out).identity) == "keymanager/keymanager"
    assert not (out / "cluster-ca.key").exists() and (tmp_path / "ca" / "pki" / "cluster-ca.key").exists()
    assert cli_main(["pki", "show", str(out)]) == 0
    assert "keymanager.internal" in capsys.readouterr().out
    for bad in (["--role", "root"], ["--role", "capf", "--node", "a/b"], ["--role", "capf", "--ip", "x"]):
        assert cli_main(["pki", "issue", "--data", str(tmp_path / "ca"), "--out", str(tmp_path / "z"), *bad]) == 1
        err = capsys.readouterr().err
        assert err.startswith("ccmsec: error: ") and err.count("\n") == 1
    assert cli_main(["pki", "show", str(tmp_path / "none")]) == 1

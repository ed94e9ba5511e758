"""DEPLOY-1: with a key folder of its own (CCMSEC_KEY_DIR; compose mounts a volume only that
container has), a service keeps its private keys there and puts only certificates on the shared
data folder — the server keys of callmanager, tftp-signer and srst (CERT-5), the CAPF CA key and the
simulated manufacturer CA key. Without one, nothing changes (the local runner)."""

from __future__ import annotations

import stat
import threading
import time

import pytest
from cryptography import x509

from ccmsec.pki.lsc import CAPF_CERT, CAPF_KEY, LscError, capf_key_path, ensure_capf_ca
from ccmsec.pki.servercert import CERT_FILE, KEY_FILE, ServerCertificateError, ensure_server_certificate
from ccmsec.pki.tokens import TokenError, ensure_manufacturer_ca
from ccmsec_callmanager.callcontrol import load_pki, wait_for_certificate


def _no_private_key_under(folder):
    for path in folder.rglob("*"):
        if path.is_file():
            assert b"PRIVATE KEY" not in path.read_bytes(), path
            assert not path.name.endswith(".key"), path


def test_server_key_kept_in_the_key_folder_certificate_shared(tmp_path):
    shared, keys = tmp_path / "data" / "servers" / "tftp-signer", tmp_path / "keys"
    first = ensure_server_certificate(shared, "tftp-signer", ip="127.0.0.1", key_dir=keys)
    assert (shared / CERT_FILE).exists() and (keys / KEY_FILE).exists()
    assert stat.S_IMODE((keys / KEY_FILE).stat().st_mode) == 0o600
    _no_private_key_under(tmp_path / "data")
    again = ensure_server_certificate(shared, "tftp-signer", ip="127.0.0.1", key_dir=keys)
    assert again.cert == first.cert  # CERT-5: never re-issued
    # the bad case: the key folder lost (another container, a wiped volume) is an error, not a re-issue
    with pytest.raises(ServerCertificateError, match="never re-issued"):
        ensure_server_certificate(shared, "tftp-signer", ip="127.0.0.1", key_dir=tmp_path / "other")


def test_capf_ca_key_kept_apart(tmp_path):
    pki, keys = tmp_path / "data" / "pki", tmp_path / "capf-keys"
    capf = ensure_capf_ca(pki, key_dir=keys)
    assert (pki / CAPF_CERT).exists() and not (pki / CAPF_KEY).exists()
    assert capf_key_path(pki, keys) == keys / CAPF_KEY and (keys / CAPF_KEY).exists()
    _no_private_key_under(tmp_path / "data")
    assert ensure_capf_ca(pki, key_dir=keys).cert == capf.cert
    # someone without the key (another container) gets a clear error, never a second CAPF CA
    with pytest.raises(LscError, match="half a CAPF pair"):
        ensure_capf_ca(pki, key_dir=tmp_path / "not-capf")


def test_manufacturer_ca_key_kept_apart(tmp_path):
    pki, keys = tmp_path / "data" / "pki", tmp_path / "phone-sim-keys"
    ca = ensure_manufacturer_ca(pki, keys)
    assert (pki / "manufacturer-ca.crt").exists() and (keys / "manufacturer-ca.key").exists()
    _no_private_key_under(tmp_path / "data")
    assert ensure_manufacturer_ca(pki, keys).cert == ca.cert
    with pytest.raises(TokenError, match="half of the manufacturer CA"):
        ensure_manufacturer_ca(pki, tmp_path / "callmanager-keys")


def test_call_control_waits_for_the_ca_certificates_and_never_makes_them(tmp_path):
    """callmanager with a key folder of its own: its server key goes there; the CAPF and manufacturer
    CAs are their owners' — it waits for the certificates and creates neither."""
    data = tmp_path / "data"
    made = threading.Event()

    def owners():
        time.sleep(0.5)
        ensure_capf_ca(data / "pki", key_dir=tmp_path / "capf-keys")
        ensure_manufacturer_ca(data / "pki", tmp_path / "phone-sim-keys")
        made.set()

    t = threading.Thread(target=owners)
    t.start()
    server, trust = load_pki(data, "callmanager", "127.0.0.1", key_dir=tmp_path / "cm-keys")
    t.join()
    assert made.is_set()
    assert trust.capf == x509.load_pem_x509_certificate((data / "pki" / CAPF_CERT).read_bytes())
    assert trust.manufacturer is not None
    assert (tmp_path / "cm-keys" / KEY_FILE).exists()
    _no_private_key_under(data)
    assert not list((tmp_path / "cm-keys").glob("capf*")) and not list((tmp_path / "cm-keys").glob("manuf*"))


def test_waiting_for_a_certificate_that_never_comes_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="did not appear within 1 s: capf creates it"):
        wait_for_certificate(tmp_path / "capf.crt", "capf", timeout=1)

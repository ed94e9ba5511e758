"""ccmserver.cer: self-signed, server name + GUID, never re-issued (CERT-5)."""

import ipaddress
import stat
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import padding

from ccmsec.pki.servercert import (
    ServerCertificateError,
    ensure_server_certificate,
    server_guid,
)


def test_cert5_created_self_signed_with_server_name_and_guid(tmp_path):
    issued = ensure_server_certificate(tmp_path, "cm1", ip="127.0.0.1")
    cert = issued.cert
    assert (tmp_path / "ccmserver.cer").read_bytes() == issued.der  # DER on disk
    assert stat.S_IMODE((tmp_path / "ccmserver.key").stat().st_mode) == 0o600
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "cm1"
    uuid.UUID(server_guid(cert))  # the OU is a GUID
    assert cert.issuer == cert.subject
    cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(),
                             cert.signature_hash_algorithm)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["cm1"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]


def test_cert5_not_reissued_when_it_already_exists(tmp_path):
    """CERT-5: restart or upgrade returns the same certificate bytes, whatever the arguments."""
    first = ensure_server_certificate(tmp_path, "cm1")
    before = (tmp_path / "ccmserver.cer").stat().st_mtime_ns
    second = ensure_server_certificate(tmp_path, "cm1")
    renamed = ensure_server_certificate(tmp_path, "cm1-renamed", ip="127.0.0.9")
    assert second.der == first.der == renamed.der
    assert server_guid(second.cert) == server_guid(first.cert)
    assert (tmp_path / "ccmserver.cer").stat().st_mtime_ns == before


def test_cert5_missing_key_is_an_error_not_a_reissue(tmp_path):
    first = ensure_server_certificate(tmp_path, "cm1")
    (tmp_path / "ccmserver.key").unlink()
    with pytest.raises(ServerCertificateError, match="never re-issued"):
        ensure_server_certificate(tmp_path, "cm1")
    assert (tmp_path / "ccmserver.cer").read_bytes() == first.der


def test_cert5_damaged_certificate_is_an_error_not_a_reissue(tmp_path):
    ensure_server_certificate(tmp_path, "cm1")
    (tmp_path / "ccmserver.cer").write_bytes(b"garbage")
    with pytest.raises(ServerCertificateError, match="damaged"):
        ensure_server_certificate(tmp_path, "cm1")


def test_interrupted_install_reuses_the_written_key(tmp_path):
    first = ensure_server_certificate(tmp_path, "cm1")
    (tmp_path / "ccmserver.cer").unlink()
    again = ensure_server_certificate(tmp_path, "cm1")
    assert again.cert.public_key().public_numbers() == first.cert.public_key().public_numbers()


def test_two_servers_get_different_guids(tmp_path):
    a = ensure_server_certificate(tmp_path / "a", "cm1")
    b = ensure_server_certificate(tmp_path / "b", "cm2")
    assert server_guid(a.cert) != server_guid(b.cert)


def test_bad_server_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="server name"):
        ensure_server_certificate(tmp_path, "")

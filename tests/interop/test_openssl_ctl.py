"""OpenSSL reads what we write: CTL/.sgn signatures verify with `openssl dgst -verify`, record
certificates and PKCS#1 public keys parse with `openssl x509` / `openssl rsa`."""

import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from ccmsec.formats.ctl import Digest, Role, build_ctl, parse_ctl, record_from_certificate
from ccmsec.formats.sgn import parse_sgn, sign_file
from ccmsec.pki.ca import create_ca, issue_with_new_key, name
from ccmsec.pki.tokens import FileSigner

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl binary not installed"),
]
TS = 1_700_000_000
OPENSSL_DIGEST = {Digest.SHA1: "-sha1", Digest.SHA256: "-sha256", Digest.SHA512: "-sha512"}


def openssl(*args, cwd):
    return subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def material():
    ca = create_ca(name("Interop CA"))
    token = FileSigner.from_issued(issue_with_new_key(ca, name("SAST-interop")))
    cm = issue_with_new_key(ca, name("cm1")).cert
    records = [record_from_certificate(token.certificate, Role.TOKEN),
               record_from_certificate(cm, Role.CCM_TFTP, "cm1", "127.0.0.1")]
    return token, records


def _write_and_verify(tmp_path, signed_bytes, signature, cert_pem, digest):
    (tmp_path / "data.bin").write_bytes(signed_bytes)
    (tmp_path / "sig.bin").write_bytes(signature)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    pub = openssl("x509", "-pubkey", "-noout", "-in", "cert.pem", cwd=tmp_path)
    assert pub.returncode == 0, pub.stderr
    (tmp_path / "pub.pem").write_text(pub.stdout)
    return openssl("dgst", OPENSSL_DIGEST[digest], "-verify", "pub.pem", "-signature", "sig.bin",
                   "data.bin", cwd=tmp_path)


@pytest.mark.parametrize("digest", list(Digest))
def test_openssl_verifies_the_ctl_signature_and_refuses_a_flipped_byte(tmp_path, material, digest):
    token, records = material
    ctl = parse_ctl(build_ctl(records, token, TS, digest))
    start, end = ctl.signature_span
    signature = ctl.raw[start + 3:end]
    cert_pem = ctl.signer_record().certificate.public_bytes(Encoding.PEM)
    ok = _write_and_verify(tmp_path, ctl.signed_bytes(), signature, cert_pem, digest)
    assert ok.returncode == 0 and "Verified OK" in ok.stdout
    flipped = bytearray(ctl.signed_bytes())
    flipped[len(flipped) // 2] ^= 0x01
    bad = _write_and_verify(tmp_path, bytes(flipped), signature, cert_pem, digest)
    assert bad.returncode != 0 and "Verification failure" in bad.stdout + bad.stderr


def test_openssl_verifies_a_signed_config_file(tmp_path, material):
    token, _ = material
    signed = parse_sgn(sign_file(b"<device/>\n", "SEP0011223344AA.cnf.xml.sgn", token, TS))
    start, end = signed.signature_span
    ok = _write_and_verify(tmp_path, signed.signed_bytes(), signed.raw[start + 3:end],
                           token.certificate.public_bytes(Encoding.PEM), Digest.SHA1)
    assert "Verified OK" in ok.stdout


def test_openssl_reads_record_certificates_and_pkcs1_public_keys(tmp_path, material):
    token, records = material
    ctl = parse_ctl(build_ctl(records, token, TS))
    for number, record in enumerate(ctl.records):
        (tmp_path / f"cert{number}.der").write_bytes(record.certificate_der)
        (tmp_path / f"key{number}.der").write_bytes(record.public_key)
        fp = openssl("x509", "-inform", "DER", "-in", f"cert{number}.der", "-noout",
                     "-fingerprint", "-sha256", cwd=tmp_path)
        assert fp.returncode == 0, fp.stderr
        expected = record.certificate.fingerprint(hashes.SHA256()).hex().upper()
        assert fp.stdout.strip().split("=", 1)[1].replace(":", "") == expected
        # Tag 7 is a DER PKCS#1 RSAPublicKey: OpenSSL converts it to the same SPKI as the cert.
        from_record = openssl("rsa", "-RSAPublicKey_in", "-inform", "DER", "-in",
                              f"key{number}.der", "-pubout", cwd=tmp_path)
        from_cert = openssl("x509", "-inform", "DER", "-in", f"cert{number}.der", "-pubkey",
                            "-noout", cwd=tmp_path)
        assert from_record.returncode == 0, from_record.stderr
        assert from_record.stdout == from_cert.stdout

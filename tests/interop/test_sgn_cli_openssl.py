"""`ccmsec sgn show|verify` reads .sgn files made by another path: the header is packed here with
`struct` (not with ccmsec's TLV code), the key and certificate come from `openssl req` and the
signature from `openssl dgst -sign` — the layout other tools write (version 1.2 as well as 1.0).
Bad files (tampered, wrong signer, wrong name, truncated, encrypted, garbage) get one clear error
line and exit code 1, never a traceback (AUTH-5)."""

from __future__ import annotations

import shutil
import struct
import subprocess

import pytest
from cryptography import x509

from ccmsec.cli.main import main
from ccmsec.formats.ctl import Role, build_ctl, record_from_certificate
from ccmsec.pki.ca import create_ca, issue_with_new_key, key_to_pem, name
from ccmsec.pki.tokens import FileSigner

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl binary not installed"),
]
PAYLOAD = b'<?xml version="1.0"?>\n<device><deviceSecurityMode>2</deviceSecurityMode></device>\n'
NAME = "SEP001122334455.cnf.xml.sgn"


def _openssl(*args, cwd):
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def _tlv(tag: int, value: bytes) -> bytes:
    return struct.pack(">BH", tag, len(value)) + value


def _dn(cert: x509.Certificate, which: str) -> bytes:
    name_ = getattr(cert, which)
    return (";".join(f"{a.rfc4514_attribute_name}={a.value}" for a in name_).encode() + b"\0")


def build_sgn_with_openssl(tmp, key: str, cert: x509.Certificate, payload: bytes, file_name: str,
                           version=(1, 2), digest="sha1") -> bytes:
    """The .sgn layout, packed by hand; signed by `openssl dgst` over everything but the
    signature TLV (which goes where the file-name TLV starts)."""
    serial = cert.serial_number.to_bytes((cert.serial_number.bit_length() + 7) // 8, "big")
    signer = _tlv(4, _dn(cert, "subject")) + _tlv(5, serial) + _tlv(6, _dn(cert, "issuer"))
    sig_info = _tlv(8, bytes([{"sha1": 1, "sha256": 2}[digest]])) + _tlv(
        9, _tlv(10, b"\0") + _tlv(11, b"\x02"))  # RSA, 2048-bit
    before = _tlv(1, bytes(version)) + _tlv(2, b"\0\0") + _tlv(3, signer) + _tlv(7, sig_info)
    after = _tlv(14, file_name.encode() + b"\0") + _tlv(15, struct.pack(">I", 1_700_000_000))
    unpadded = len(before) + 3 + 256 + len(after)
    after += b"\x0d" * (-unpadded % 4)
    header_length = unpadded + (-unpadded % 4)
    before = before[:8] + struct.pack(">H", header_length) + before[10:]
    (tmp / "tbs.bin").write_bytes(before + after + payload)
    signature = _openssl("dgst", f"-{digest}", "-sign", key, "tbs.bin", cwd=tmp)
    assert len(signature) == 256
    return before + _tlv(12, signature) + after + payload


@pytest.fixture(scope="module")
def tftp_key(tmp_path_factory):
    """A TFTP signing key and certificate made by openssl, PEM and DER."""
    tmp = tmp_path_factory.mktemp("openssl")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out",
             "cert.pem", "-days", "30", "-subj", "/O=interop/OU=tftp/CN=tftp1", cwd=tmp)
    _openssl("x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der", cwd=tmp)
    cert = x509.load_pem_x509_certificate((tmp / "cert.pem").read_bytes())
    return tmp, cert


def _run(capsys, *argv):
    code = main(["sgn", *map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.mark.parametrize("version", [(1, 2), (1, 0)])
@pytest.mark.parametrize("digest", ["sha1", "sha256"])
def test_auth5_sgn_made_by_openssl_shows_and_verifies(tmp_path, tftp_key, capsys, version, digest):
    keydir, cert = tftp_key
    sgn = tmp_path / NAME
    sgn.write_bytes(build_sgn_with_openssl(keydir, "key.pem", cert, PAYLOAD, NAME, version, digest))
    code, out, _ = _run(capsys, "show", sgn, "--payload", "--cert", keydir / "cert.pem")
    assert code == 0
    assert f"File Name:         {NAME}" in out and f"Version:           {version[0]}.{version[1]}" in out
    assert "Signer Name:       O=interop;OU=tftp;CN=tftp1" in out
    assert f"Payload:           {len(PAYLOAD)} bytes" in out and "<deviceSecurityMode>2" in out
    assert "Signature:         valid (signed by CN=tftp1;OU=tftp;O=interop" in out
    code, out, _ = _run(capsys, "verify", sgn, "--cert", keydir / "cert.der", "--name", NAME)
    assert code == 0 and "valid" in out
    code, out, _ = _run(capsys, "show", sgn, "--extract", tmp_path / "payload.xml")
    assert code == 0 and (tmp_path / "payload.xml").read_bytes() == PAYLOAD
    assert "not checked" in out


def test_auth5_tampered_payload_fails_verification(tmp_path, tftp_key, capsys):
    keydir, cert = tftp_key
    data = bytearray(build_sgn_with_openssl(keydir, "key.pem", cert, PAYLOAD, NAME))
    data[-10] ^= 0x01
    (tmp_path / NAME).write_bytes(bytes(data))
    code, _, err = _run(capsys, "verify", tmp_path / NAME, "--cert", keydir / "cert.pem")
    assert code == 1 and "signature verification FAILED" in err and "altered" in err


def test_auth5_signed_for_another_name_is_refused(tmp_path, tftp_key, capsys):
    keydir, cert = tftp_key
    (tmp_path / "f.sgn").write_bytes(
        build_sgn_with_openssl(keydir, "key.pem", cert, PAYLOAD, "SEP00AA00000009.cnf.xml.sgn"))
    code, _, err = _run(capsys, "verify", tmp_path / "f.sgn", "--cert", keydir / "cert.pem",
                        "--name", NAME)
    assert code == 1 and "signed under the name 'SEP00AA00000009.cnf.xml.sgn'" in err


def test_auth5_wrong_certificate_and_non_tftp_ctl_entry_are_refused(tmp_path, tftp_key, capsys):
    """A file signed by a token: refused with the given certificate (other serial) and with a CTL
    that lists that signer only as a token, not as a TFTP server."""
    keydir, tftp_cert = tftp_key
    ca = create_ca(name("Interop CA"))
    issued = issue_with_new_key(ca, name("SAST-1"))
    token = FileSigner.from_issued(issued)
    token_dir = tmp_path / "token"
    token_dir.mkdir()
    (token_dir / "key.pem").write_bytes(key_to_pem(issued.key))
    sgn = tmp_path / NAME
    sgn.write_bytes(build_sgn_with_openssl(token_dir, "key.pem", token.certificate, PAYLOAD, NAME))
    code, _, err = _run(capsys, "verify", sgn, "--cert", keydir / "cert.pem")
    assert code == 1 and "none of the given certificates has that serial" in err
    ctl = build_ctl([record_from_certificate(token.certificate, Role.TOKEN),
                     record_from_certificate(tftp_cert, Role.TFTP, "tftp1", "127.0.0.1")],
                    token, 1_700_000_000)
    (tmp_path / "CTLFile.tlv").write_bytes(ctl)
    code, _, err = _run(capsys, "verify", sgn, "--ctl", tmp_path / "CTLFile.tlv")
    assert code == 1 and "which the CTL lists as SAST, not as a TFTP server" in err
    # The same CTL does vouch for the openssl-made TFTP signer.
    good = tmp_path / "good.sgn"
    good.write_bytes(build_sgn_with_openssl(keydir, "key.pem", tftp_cert, PAYLOAD, NAME))
    code, out, _ = _run(capsys, "verify", good, "--ctl", tmp_path / "CTLFile.tlv")
    assert code == 0 and "TFTP record" in out


@pytest.mark.parametrize("mangle,expected", [
    (lambda d: d[:40], "not a valid signed (.sgn) file"),
    (lambda d: b"", "not a valid signed (.sgn) file"),
    (lambda d: b"\x00" * 64, "not a valid signed (.sgn) file"),
    (lambda d: d[:3] + b"\x02\x00" + d[5:], "version 2.0 is not a signed file"),
    (lambda d: d[:8] + b"\xff\xff" + d[10:], "header length 65535 is outside the file"),
])
def test_bad_files_get_one_clear_error(tmp_path, tftp_key, capsys, mangle, expected):
    keydir, cert = tftp_key
    bad = tmp_path / "bad.sgn"
    bad.write_bytes(mangle(build_sgn_with_openssl(keydir, "key.pem", cert, PAYLOAD, NAME)))
    code, _, err = _run(capsys, "show", bad, "--cert", keydir / "cert.pem")
    assert code == 1 and expected in err and err.count("\n") == 1


def test_bad_arguments_get_clear_errors(tmp_path, tftp_key, capsys):
    keydir, cert = tftp_key
    sgn = tmp_path / NAME
    sgn.write_bytes(build_sgn_with_openssl(keydir, "key.pem", cert, PAYLOAD, NAME))
    code, _, err = _run(capsys, "verify", sgn)
    assert code == 1 and "--cert FILE" in err
    (tmp_path / "junk.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    code, _, err = _run(capsys, "verify", sgn, "--cert", tmp_path / "junk.pem")
    assert code == 1 and "not a PEM or DER certificate" in err
    code, _, err = _run(capsys, "show", tmp_path / "missing.sgn")
    assert code == 1 and "cannot read" in err
    code, _, err = _run(capsys, "show", tmp_path)
    assert code == 1 and "is a directory" in err

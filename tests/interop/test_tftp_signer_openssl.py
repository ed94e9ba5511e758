"""Outside tools against the tftp-signer service: curl and tftp-hpa download a signed config and a
firmware image, and `openssl dgst -verify` checks the signature with the TFTP certificate
(AUTH-3, AUTH-1, CERT-5)."""

from __future__ import annotations

import asyncio
import shutil

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ccmsec import firmware
from ccmsec.formats.ctl import Digest
from ccmsec.formats.sgn import parse_sgn
from tests.integration.test_tftp_signer_service import DEVICE, HOST, running_service

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]
OPENSSL_DIGEST = {Digest.SHA1: "-sha1", Digest.SHA256: "-sha256", Digest.SHA512: "-sha512"}


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} binary not installed")


async def run(*args: str, cwd=None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*args, cwd=cwd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, out.decode(errors="replace")


async def openssl_verify(tmp_path, data: bytes, cert) -> str:
    """Verify a .sgn with openssl: the signed bytes are the whole file minus the signature TLV."""
    signed = parse_sgn(data)
    (tmp_path / "signed.bin").write_bytes(signed.signed_bytes())
    (tmp_path / "sig.bin").write_bytes(signed.header.signature)
    (tmp_path / "tftp.pub").write_bytes(cert.public_key().public_bytes(Encoding.PEM,
                                                                      PublicFormat.SubjectPublicKeyInfo))
    code, out = await run("openssl", "dgst", OPENSSL_DIGEST[signed.header.digest], "-verify", "tftp.pub",
                          "-signature", "sig.bin", "signed.bin", cwd=tmp_path)
    assert code == 0, out
    return out


async def test_auth3_curl_and_tftp_hpa_fetch_a_signed_config_that_openssl_verifies(tmp_path, nats_server):
    """AUTH-3/AUTH-5: the served SEP<MAC>.cnf.xml.sgn verifies with openssl against the TFTP
    certificate; a byte changed in the payload makes openssl refuse it."""
    need("openssl"), need("curl"), need("tftp")
    data_dir = tmp_path / "data"
    async with running_service(data_dir, nats_server) as r:
        await r.add_device(mode="authenticated", web_access=False)
        await r.set_mode("mixed")
        name = f"{DEVICE}.cnf.xml.sgn"
        code, out = await run("curl", "-sS", "--tftp-blksize", "1024", "-o", str(tmp_path / "curl.sgn"),
                              f"tftp://{HOST}:{r.port}/{name}")
        assert code == 0, out
        code, out = await run("tftp", HOST, str(r.port), "-m", "binary", "-c", "get", name,
                              str(tmp_path / "hpa.sgn"))
        assert code == 0, out
        via_curl = (tmp_path / "curl.sgn").read_bytes()
        assert via_curl == (tmp_path / "hpa.sgn").read_bytes() == await r.get(name)
        assert "Verified OK" in await openssl_verify(tmp_path, via_curl, r.cert)
        tampered = bytearray(via_curl)
        tampered[tampered.index(b"<webAccess>1") + len(b"<webAccess>")] = ord("0")
        signed = parse_sgn(bytes(tampered))
        (tmp_path / "signed.bin").write_bytes(signed.signed_bytes())
        code, out = await run("openssl", "dgst", OPENSSL_DIGEST[signed.header.digest], "-verify", "tftp.pub",
                              "-signature", "sig.bin", "signed.bin", cwd=tmp_path)
        assert code != 0 and "Verification failure" in out


async def test_auth1_firmware_image_from_curl_verifies_with_openssl_in_non_secure_mode(tmp_path, nats_server):
    """AUTH-1: the image is signed even in non-secure mode, and openssl agrees."""
    need("openssl"), need("curl")
    async with running_service(tmp_path / "data", nats_server) as r:
        name = firmware.image_filename(firmware.load_name("7970"))
        code, out = await run("curl", "-sS", "--tftp-blksize", "1428", "-o", str(tmp_path / "image.sbn"),
                              f"tftp://{HOST}:{r.port}/{name}")
        assert code == 0, out
        image = (tmp_path / "image.sbn").read_bytes()
        assert "Verified OK" in await openssl_verify(tmp_path, image, r.cert)

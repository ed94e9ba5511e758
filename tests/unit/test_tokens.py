"""Security tokens (SAST), the manufacturer CA, MICs and file signers."""

import json
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from ccmsec.formats.ctl import Digest
from ccmsec.pki.tokens import (
    MAX_PASSWORD_FAILURES,
    FileSigner,
    Pkcs11Token,
    SecurityToken,
    TokenError,
    TokenExistsError,
    TokenLockedError,
    TokenNotFoundError,
    TokenNotSupportedError,
    TokenPasswordError,
    create_software_token,
    ensure_manufacturer_ca,
    issue_mic,
    list_tokens,
    open_token,
    token_info,
)


@pytest.fixture(scope="module")
def manufacturer(tmp_path_factory):
    return ensure_manufacturer_ca(tmp_path_factory.mktemp("data") / "pki")


@pytest.fixture
def store(tmp_path, manufacturer):
    create_software_token(tmp_path, "token1", "right-pw", manufacturer)
    return tmp_path


def test_created_token_is_rsa2048_sast_cert_from_the_manufacturer_ca(store, manufacturer):
    token = open_token(store, "token1", "right-pw")
    assert isinstance(token, SecurityToken)
    cert = token.certificate
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "SAST-token1"
    assert isinstance(cert.public_key(), rsa.RSAPublicKey) and cert.public_key().key_size == 2048
    assert cert.version is x509.Version.v3
    cert.verify_directly_issued_by(manufacturer.cert)
    signature = token.sign(b"data", Digest.SHA1)
    cert.public_key().verify(signature, b"data", padding.PKCS1v15(), hashes.SHA1())


def test_token_is_pkcs12_encrypted_under_its_password(store):
    blob = (store / "token1.p12").read_bytes()
    assert stat.S_IMODE((store / "token1.p12").stat().st_mode) == 0o600
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates(blob, None)
    key, cert, _ = pkcs12.load_key_and_certificates(blob, b"right-pw")
    assert key is not None and cert is not None
    assert b"BEGIN" not in blob  # no PEM key lying around in the token file


def test_wrong_password_is_refused_and_counted(store):
    with pytest.raises(TokenPasswordError, match="14 attempts left") as err:
        open_token(store, "token1", "nope")
    assert err.value.remaining == MAX_PASSWORD_FAILURES - 1
    assert token_info(store, "token1").failures == 1
    assert json.loads((store / "token1.state").read_text()) == {"failures": 1, "locked": False}


def test_fifteen_wrong_passwords_lock_the_token_for_good(store):
    for _ in range(MAX_PASSWORD_FAILURES - 1):
        with pytest.raises(TokenPasswordError):
            open_token(store, "token1", "wrong")
    with pytest.raises(TokenLockedError, match="now locked after 15"):
        open_token(store, "token1", "wrong")
    # Locked: even the right password is refused, and it stays refused.
    for _ in range(2):
        with pytest.raises(TokenLockedError, match="locked"):
            open_token(store, "token1", "right-pw")
    info = token_info(store, "token1")
    assert info.locked and info.failures == MAX_PASSWORD_FAILURES


def test_right_password_resets_the_counter_while_not_locked(store):
    for _ in range(MAX_PASSWORD_FAILURES - 1):
        with pytest.raises(TokenPasswordError):
            open_token(store, "token1", "wrong")
    assert token_info(store, "token1").failures == 14
    open_token(store, "token1", "right-pw")
    assert token_info(store, "token1").failures == 0
    with pytest.raises(TokenPasswordError, match="14 attempts left"):
        open_token(store, "token1", "wrong")


def test_damaged_counter_file_counts_as_locked(store):
    (store / "token1.state").write_text("{not json")
    with pytest.raises(TokenLockedError):
        open_token(store, "token1", "right-pw")


def test_missing_duplicate_and_badly_named_tokens(store, manufacturer):
    with pytest.raises(TokenNotFoundError, match="no token 'other'"):
        open_token(store, "other", "pw")
    with pytest.raises(TokenExistsError):
        create_software_token(store, "token1", "pw", manufacturer)
    for bad in ("../escape", "", "a/b", ".hidden", "x" * 65):
        with pytest.raises(TokenError, match="invalid token name"):
            create_software_token(store, bad, "pw", manufacturer)
    with pytest.raises(TokenError, match="must not be empty"):
        create_software_token(store, "token2", "", manufacturer)


def test_damaged_public_certificate_is_a_token_error_not_a_traceback(store):
    """`token list/show` and the CTL client catch TokenError; a bad .crt once escaped as ValueError."""
    (store / "token1.crt").write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n")
    with pytest.raises(TokenError, match="token1.crt.*not a certificate"):
        token_info(store, "token1")
    with pytest.raises(TokenError, match="token1.crt"):
        list_tokens(store)


def test_list_tokens_shows_certificates_without_passwords(store, manufacturer):
    create_software_token(store, "token2.v2", "pw2", manufacturer)
    infos = list_tokens(store)
    assert [i.name for i in infos] == ["token1", "token2.v2"]
    assert (store / "token2.v2.p12").exists()
    assert open_token(store, "token2.v2", "pw2").name == "token2.v2"
    assert all(not i.locked and i.failures == 0 for i in infos)
    assert list_tokens(store / "absent") == []


def test_pkcs11_seam_refuses_clearly():
    with pytest.raises(TokenNotSupportedError, match="PKCS#11 are not supported yet"):
        Pkcs11Token("/usr/lib/softhsm/libsofthsm2.so", "sast1", "1234")


def test_manufacturer_ca_is_created_once_under_pki(tmp_path):
    first = ensure_manufacturer_ca(tmp_path / "pki")
    assert (tmp_path / "pki" / "manufacturer-ca.crt").exists()
    assert stat.S_IMODE((tmp_path / "pki" / "manufacturer-ca.key").stat().st_mode) == 0o600
    assert not (tmp_path / "pki" / "cluster-ca.crt").exists()
    again = ensure_manufacturer_ca(tmp_path / "pki")
    assert again.cert == first.cert
    assert first.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_half_a_manufacturer_ca_is_an_error_not_a_new_ca(tmp_path):
    ensure_manufacturer_ca(tmp_path)
    (tmp_path / "manufacturer-ca.key").unlink()
    with pytest.raises(TokenError, match="half of the manufacturer CA is missing"):
        ensure_manufacturer_ca(tmp_path)


@pytest.mark.parametrize("kind, key_type", [("rsa2048", rsa.RSAPublicKey),
                                            ("ec256", ec.EllipticCurvePublicKey)])
def test_cert1_mic_is_signed_by_the_manufacturer_ca(manufacturer, kind, key_type):
    """CERT-1: MICs are signed by the manufacturer CA."""
    mic = issue_mic(manufacturer, "SEP0011223344AA", kind)
    mic.cert.verify_directly_issued_by(manufacturer.cert)
    assert isinstance(mic.cert.public_key(), key_type)
    assert mic.cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == \
        "SEP0011223344AA"
    assert mic.cert.issuer == manufacturer.cert.subject


def test_file_signer_signs_and_loads_from_files(tmp_path, manufacturer):
    from ccmsec.pki.ca import issue_with_new_key, name, save_pair
    issued = issue_with_new_key(manufacturer, name("tftp"))
    save_pair(issued, tmp_path / "t.crt", tmp_path / "t.key")
    signer = FileSigner.from_files(tmp_path / "t.crt", tmp_path / "t.key")
    sig = signer.sign(b"x", Digest.SHA256)
    issued.cert.public_key().verify(sig, b"x", padding.PKCS1v15(), hashes.SHA256())
    with pytest.raises(TokenError, match="needs an RSA key"):
        FileSigner(issued.cert, ec.generate_private_key(ec.SECP256R1()))

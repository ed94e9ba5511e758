"""Signed files (.sgn): same header as the CTL (version 1.0), payload unchanged (AUTH-3, AUTH-5)."""

import pickle
from concurrent.futures import ProcessPoolExecutor

import pytest
from cryptography.hazmat.primitives import hashes
from hypothesis import given, settings
from hypothesis import strategies as st
from cryptography.hazmat.primitives.asymmetric import padding

from ccmsec.formats.ctl import CtlFormatError, Digest, Role, build_ctl, record_from_certificate
from ccmsec.formats.sgn import (
    SgnFormatError,
    SignatureError,
    parse_sgn,
    sign_file,
    verify_sgn,
)
from ccmsec.pki.ca import create_ca, issue_with_new_key, name
from ccmsec.pki.tokens import FileSigner

TS = 1_700_000_000
CONFIG = b'<?xml version="1.0"?>\n<device><deviceSecurityMode>3</deviceSecurityMode></device>\n'
NAME = "SEP0011223344AA.cnf.xml.sgn"


def _valid() -> bytes:
    ca = create_ca(name("Fuzz CA"))
    return sign_file(CONFIG, NAME, FileSigner.from_issued(issue_with_new_key(ca, name("tftp-fuzz"))), TS)


VALID = _valid()


@pytest.fixture(scope="module")
def signers():
    ca = create_ca(name("Test CA"))
    tftp = FileSigner.from_issued(issue_with_new_key(ca, name("tftp1", org_unit="guid-t")))
    other = FileSigner.from_issued(issue_with_new_key(ca, name("tftp2")))
    return tftp, other


def test_round_trip_keeps_payload_and_names_the_requested_file(signers):
    tftp, _ = signers
    data = sign_file(CONFIG, NAME, tftp, TS)
    signed = parse_sgn(data)
    assert signed.payload == CONFIG and data.endswith(CONFIG)
    h = signed.header
    assert h.version == (1, 0) and h.file_name == NAME and h.timestamp == TS
    assert h.length % 4 == 0 and data[h.length:] == CONFIG
    assert int.from_bytes(h.signer_serial, "big") == tftp.certificate.serial_number
    assert h.signer_name == "CN=tftp1;OU=guid-t;O=ccmsec"
    verify_sgn(signed, tftp.certificate)


def test_signature_covers_header_and_payload_but_not_itself(signers):
    tftp, _ = signers
    data = sign_file(CONFIG, NAME, tftp, TS, Digest.SHA512)
    signed = parse_sgn(data)
    start, end = signed.signature_span
    assert data[start] == 12 and data[end] == 14
    tftp.certificate.public_key().verify(data[start + 3:end], data[:start] + data[end:],
                                         padding.PKCS1v15(), hashes.SHA512())


def test_empty_payload_and_binary_payload(signers):
    tftp, _ = signers
    for payload in (b"", bytes(range(256)) * 50):
        signed = parse_sgn(sign_file(payload, "ring.raw.sgn", tftp, TS))
        assert signed.payload == payload
        verify_sgn(signed, tftp.certificate)


def test_auth5_altered_payload_is_rejected(signers):
    """AUTH-5: a phone rejects a signed file altered after signing."""
    tftp, _ = signers
    data = bytearray(sign_file(CONFIG, NAME, tftp, TS))
    data[-10] ^= 0x20
    with pytest.raises(SignatureError, match="bad signature"):
        verify_sgn(parse_sgn(bytes(data)), tftp.certificate)
    # Appending bytes (e.g. extra XML) also breaks it.
    with pytest.raises(SignatureError):
        verify_sgn(parse_sgn(sign_file(CONFIG, NAME, tftp, TS) + b"<x/>"), tftp.certificate)


def test_auth5_every_byte_of_a_small_file_is_protected(signers):
    tftp, _ = signers
    data = sign_file(b"<d/>", "a.sgn", tftp, TS)
    for position in range(len(data)):
        tampered = bytearray(data)
        tampered[position] ^= 0x80
        with pytest.raises((CtlFormatError, SignatureError)):
            verify_sgn(parse_sgn(bytes(tampered)), tftp.certificate)


def test_wrong_certificate_is_refused(signers):
    tftp, other = signers
    signed = parse_sgn(sign_file(CONFIG, NAME, tftp, TS))
    with pytest.raises(SignatureError, match="not by the given certificate"):
        verify_sgn(signed, other.certificate)
    # Same serial claimed, but a different key signed it.
    impostor = FileSigner(tftp.certificate, other._key)
    with pytest.raises(SignatureError, match="bad signature"):
        verify_sgn(parse_sgn(sign_file(CONFIG, NAME, impostor, TS)), tftp.certificate)


def test_a_trust_list_is_not_a_signed_file(signers):
    tftp, _ = signers
    ctl = build_ctl([record_from_certificate(tftp.certificate, Role.TOKEN)], tftp, TS)
    with pytest.raises(SgnFormatError, match="CTLFile.tlv is a trust list, not a signed file"):
        parse_sgn(ctl)
    with pytest.raises(SgnFormatError, match="not a signed trust-list or .sgn file"):
        parse_sgn(CONFIG)


def test_signing_is_deterministic(signers):
    tftp, _ = signers
    assert sign_file(CONFIG, NAME, tftp, TS) == sign_file(CONFIG, NAME, tftp, TS)


def test_file_signer_pickles_for_process_pools(signers):
    tftp, _ = signers
    clone = pickle.loads(pickle.dumps(tftp))
    assert clone.certificate == tftp.certificate
    assert sign_file(CONFIG, NAME, clone, TS) == sign_file(CONFIG, NAME, tftp, TS)


def test_sign_in_a_process_pool_matches_in_process(signers):
    tftp, _ = signers
    names = [f"SEP00112233{i:04X}.cnf.xml.sgn" for i in range(6)]
    with ProcessPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(sign_file, CONFIG, n, tftp, TS) for n in names]
        remote = [f.result(timeout=30) for f in futures]
    assert remote == [sign_file(CONFIG, n, tftp, TS) for n in names]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600) | st.builds(lambda cut, junk: VALID[:cut] + junk,
                                            st.integers(0, 400), st.binary(max_size=40)))
def test_parse_sgn_fuzz_any_bytes_give_a_clean_error_or_a_file(data):
    """Any bytes: a SignedFile or an SgnFormatError (a ValueError) naming the problem, nothing else."""
    try:
        signed = parse_sgn(data)
    except SgnFormatError as exc:
        assert str(exc)
    else:
        assert signed.payload == data[signed.header.length:]

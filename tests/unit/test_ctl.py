"""CTLFile.tlv: builder, parser, signature placement and coverage, verification (CTL-1, CTL-3)."""

import ipaddress

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from ccmsec.formats import tlv
from ccmsec.formats.ctl import (
    MAX_CTL_SIZE,
    CtlBuildError,
    CtlFormatError,
    CtlSignatureError,
    Digest,
    Role,
    build_ctl,
    build_signed,
    format_ctl,
    parse_ctl,
    record_from_certificate,
    verify_ctl,
)
from ccmsec.pki.ca import create_ca, issue_with_new_key, name, new_key, self_signed
from ccmsec.pki.tokens import FileSigner, SoftwareToken

TS = 1_700_000_000


def _token(ca, label, kind="rsa2048"):
    issued = issue_with_new_key(ca, name(f"SAST-{label}", org_unit="SAST"), kind,
                                server=False, client=False)
    return SoftwareToken(label, issued.cert, issued.key)


@pytest.fixture(scope="module")
def pki():
    ca = create_ca(name("Test Manufacturing CA"))
    token_a, token_b = _token(ca, "a"), _token(ca, "b")
    server_key = new_key("rsa2048")
    server = self_signed(name("cm1", org_unit="guid-1"), server_key, dns_names=["cm1"])
    capf = issue_with_new_key(ca, name("CAPF-1"), "rsa2048")
    ec_server = issue_with_new_key(ca, name("tftp-ec"), "ec256")
    return dict(ca=ca, a=token_a, b=token_b, server=server, capf=capf.cert, ec=ec_server.cert)


@pytest.fixture(scope="module")
def records(pki):
    return [
        record_from_certificate(pki["a"].certificate, Role.TOKEN),
        record_from_certificate(pki["b"].certificate, Role.TOKEN),
        record_from_certificate(pki["server"], Role.CCM_TFTP, "cm1", "127.0.0.1"),
        record_from_certificate(pki["capf"], Role.CAPF, "cm1", ipaddress.IPv4Address("127.0.0.1")),
        record_from_certificate(pki["ec"], Role.TFTP, "tftp-ec", "127.0.0.2"),
    ]


@pytest.fixture(scope="module")
def ctl_bytes(pki, records):
    return build_ctl(records, pki["a"], TS)


def test_round_trip_header_fields(pki, ctl_bytes):
    ctl = parse_ctl(ctl_bytes)
    h = ctl.header
    cert = pki["a"].certificate
    assert h.version == (1, 2)
    assert h.signer_name == "CN=SAST-a;OU=SAST;O=ccmsec"
    assert h.signer_issuer == "CN=Test Manufacturing CA;OU=ccmsec;O=ccmsec"
    assert int.from_bytes(h.signer_serial, "big") == cert.serial_number
    assert h.digest is Digest.SHA1 and h.modulus.bits == 2048 and len(h.signature) == 256
    assert h.file_name == "CTLFile.tlv" and h.timestamp == TS and h.signer_version is None


def test_ctl3_records_carry_every_field_of_each_server(pki, records, ctl_bytes):
    """CTL-3: certificate, public key, serial, signature, issuer, subject, function, DNS, IP."""
    ctl = parse_ctl(ctl_bytes)
    assert ctl.records == tuple(records)
    server = ctl.records[2]
    cert = pki["server"]
    assert server.role is Role.CCM_TFTP and server.dns_name == "cm1"
    assert server.subject == "CN=cm1;OU=guid-1;O=ccmsec" and server.issuer == server.subject
    assert server.serial == cert.serial_number.to_bytes(len(server.serial), "big")
    assert server.cert_signature == cert.signature
    assert server.certificate_der == cert.public_bytes(serialization.Encoding.DER)
    assert server.ipv4 == ipaddress.IPv4Address("127.0.0.1")
    # RSA public key: DER PKCS#1 RSAPublicKey.
    assert server.public_key == cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    assert serialization.load_der_public_key(
        cert.public_key().public_bytes(serialization.Encoding.DER,
                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    # EC public key: uncompressed point.
    ec_record = ctl.records[4]
    assert ec_record.public_key[0] == 0x04 and len(ec_record.public_key) == 65


def test_token_records_have_no_cert_signature_and_empty_dns(ctl_bytes):
    token = parse_ctl(ctl_bytes).records[0]
    assert token.role is Role.TOKEN and token.cert_signature is None and token.dns_name == ""
    # The DNS-name TLV is present and holds just the NUL.
    start = token_record_offset = parse_ctl(ctl_bytes).header.length
    assert ctl_bytes[token_record_offset + 5:token_record_offset + 9] == b"\x02\x00\x01\x00"
    assert start % 4 == 0


@pytest.mark.parametrize("file_name", [f"CTLFile{'x' * n}.tlv" for n in range(8)])
def test_header_length_is_a_multiple_of_4_padded_with_0x0d(pki, records, file_name):
    data = build_ctl(records[:1], pki["a"], TS, file_name=file_name)
    ctl = parse_ctl(data)
    length = ctl.header.length
    assert length % 4 == 0
    assert int.from_bytes(data[8:10], "big") == length  # tag 2 value
    # Padding: a run of lone 0x0D bytes right before the end of the header, after the timestamp.
    after_timestamp = data.index(b"\x0f\x00\x04" + TS.to_bytes(4, "big")) + 7
    assert data[after_timestamp:length] == b"\x0d" * (length - after_timestamp)
    assert length - after_timestamp < 4
    assert data[length] == 1  # the first record starts right after the header


def test_signature_covers_every_byte_except_the_signature_tlv(pki, ctl_bytes):
    ctl = parse_ctl(ctl_bytes)
    start, end = ctl.signature_span
    # The signature TLV sits where the file-name TLV begins.
    assert ctl_bytes[start] == 12 and int.from_bytes(ctl_bytes[start + 1:start + 3], "big") == 256
    assert ctl_bytes[end] == 14
    signed = ctl_bytes[:start] + ctl_bytes[end:]
    assert ctl.signed_bytes() == signed
    pki["a"].certificate.public_key().verify(ctl_bytes[start + 3:end], signed,
                                             padding.PKCS1v15(), hashes.SHA1())
    # The signature is exactly the signer's signature over those bytes.
    assert ctl_bytes[start + 3:end] == pki["a"].sign(signed, Digest.SHA1)


def test_verify_returns_the_signing_token_record(pki, ctl_bytes):
    signer = verify_ctl(parse_ctl(ctl_bytes))
    assert signer.role is Role.TOKEN and signer.subject == "CN=SAST-a;OU=SAST;O=ccmsec"


@pytest.mark.parametrize("digest", list(Digest))
def test_each_digest_builds_and_verifies(pki, records, digest):
    ctl = parse_ctl(build_ctl(records[:3], pki["b"], TS, digest))
    assert ctl.header.digest is digest
    assert verify_ctl(ctl).subject.startswith("CN=SAST-b")


def test_build_is_deterministic(pki, records, ctl_bytes):
    assert build_ctl(records, pki["a"], TS) == ctl_bytes
    assert build_ctl(records, pki["a"], TS + 1) != ctl_bytes


def test_signer_version_tag_28_round_trips(pki, records):
    data = build_ctl(records[:2], pki["a"], TS, signer_version=(1, 1))
    assert parse_ctl(data).header.signer_version == (1, 1)
    assert verify_ctl(parse_ctl(data))


def test_flipping_any_single_byte_breaks_parse_or_verification(pki):
    """Every byte is protected: header, signature, padding, records."""
    data = build_ctl([record_from_certificate(pki["a"].certificate, Role.TOKEN)], pki["a"], TS)
    assert verify_ctl(parse_ctl(data))
    for position in range(len(data)):
        tampered = bytearray(data)
        tampered[position] ^= 0x01
        with pytest.raises((CtlFormatError, CtlSignatureError)):
            verify_ctl(parse_ctl(bytes(tampered)))


def test_every_truncation_is_refused(pki):
    data = build_ctl([record_from_certificate(pki["a"].certificate, Role.TOKEN)], pki["a"], TS)
    for length in range(len(data)):
        with pytest.raises(CtlFormatError):
            parse_ctl(data[:length])


def test_ctl1_signer_must_be_a_token_listed_in_the_ctl(pki, records):
    """CTL-1: a CTL is signed by one of the tokens listed in it."""
    with pytest.raises(CtlBuildError, match="not one of the token"):
        build_ctl(records[2:], pki["a"], TS)
    # Listed, but as a server rather than a token: still refused.
    as_ccm = record_from_certificate(pki["a"].certificate, Role.CCM, "x")
    with pytest.raises(CtlBuildError, match="CTL-1"):
        build_ctl([as_ccm, records[1]], pki["a"], TS)


def test_ctl1_wrong_signer_key_is_refused(pki, records):
    """A file claiming token A but signed with another key fails with a clear reason."""
    impostor = FileSigner(pki["a"].certificate, new_key("rsa2048"))
    data = build_ctl(records, impostor, TS)
    with pytest.raises(CtlSignatureError, match="bad signature.*SAST-a"):
        verify_ctl(parse_ctl(data))


def test_verify_refuses_a_file_without_the_signers_token_record(pki, records):
    body = b"".join(r.encode() for r in records[1:])
    data = build_signed((1, 2), body, pki["a"], file_name="CTLFile.tlv", timestamp=TS)
    with pytest.raises(CtlSignatureError, match="no token \\(SAST\\) record has the signer's serial"):
        verify_ctl(parse_ctl(data))
    as_ccm = record_from_certificate(pki["a"].certificate, Role.CCM, "cm")
    data = build_signed((1, 2), as_ccm.encode(), pki["a"], file_name="CTLFile.tlv", timestamp=TS)
    with pytest.raises(CtlSignatureError, match="listed only as CCM, not as a token"):
        verify_ctl(parse_ctl(data))


def test_files_of_64kb_or_more_are_refused(pki, records):
    many = [records[0]] + [records[2]] * 60
    with pytest.raises(CtlBuildError, match="over the 65535-byte limit"):
        build_ctl(many, pki["a"], TS)
    with pytest.raises(CtlFormatError, match="must stay under 65536 bytes"):
        parse_ctl(b"\x01\x00\x02\x01\x02" + b"\x00" * MAX_CTL_SIZE)


def test_forty_records_fit(pki, records):
    data = build_ctl([records[0]] + [records[2]] * 39, pki["a"], TS)
    assert len(parse_ctl(data).records) == 40 and len(data) < MAX_CTL_SIZE


def _signed_with_body(pki, body):
    return build_signed((1, 2), body, pki["a"], file_name="CTLFile.tlv", timestamp=TS)


def test_unknown_role_is_refused(pki, records):
    record = bytearray(records[0].encode())
    role_at = record.index(b"\x04\x00\x02\x00\x00")
    record[role_at + 3:role_at + 5] = (9).to_bytes(2, "big")
    with pytest.raises(CtlFormatError, match="record 1: unknown role 9"):
        parse_ctl(_signed_with_body(pki, bytes(record)))


def test_duplicate_and_unknown_record_tags_are_refused(pki, records):
    extra = tlv.encode_text(2, "again")
    record = records[0].encode()
    dup = (len(record) + len(extra)).to_bytes(2, "big")
    with pytest.raises(CtlFormatError, match="tag 2 appears twice"):
        parse_ctl(_signed_with_body(pki, b"\x01\x00\x02" + dup + record[5:] + extra))
    odd = tlv.encode(40, b"?")
    with pytest.raises(CtlFormatError, match="unknown tag 40"):
        parse_ctl(_signed_with_body(pki, b"\x01\x00\x02" + (len(record) + 4).to_bytes(2, "big")
                                    + record[5:] + odd))


def test_record_length_outside_the_file_is_refused(pki, records):
    record = bytearray(records[0].encode())
    record[3:5] = (len(record) + 10).to_bytes(2, "big")
    with pytest.raises(CtlFormatError, match="record 1 .* outside the file"):
        parse_ctl(_signed_with_body(pki, bytes(record)))


def test_record_certificate_must_be_der_x509(pki, records):
    bogus = records[0].encode()
    cert_at = bogus.index(b"\x09" + len(records[0].certificate_der).to_bytes(2, "big"))
    broken = bytearray(bogus)
    broken[cert_at + 3] = 0x00  # no longer a DER SEQUENCE
    with pytest.raises(CtlFormatError, match="not DER X.509"):
        parse_ctl(_signed_with_body(pki, bytes(broken)))


def test_record_certificate_with_a_negative_serial_is_a_clear_format_error(pki, records):
    """RFC 5280 serials are positive; a negative one once escaped parse_ctl as OverflowError."""
    encoded = bytearray(records[0].encode())
    serial = records[0].serial
    cert_at = encoded.index(b"\x09" + len(records[0].certificate_der).to_bytes(2, "big"))
    at = encoded.index(b"\x02" + bytes([len(serial)]) + serial, cert_at) + 2
    assert serial[0] < 0x80  # the DER INTEGER has no leading zero, so setting the top bit negates it
    encoded[at] |= 0x80
    with pytest.raises(CtlFormatError, match="serial .* not positive"):
        parse_ctl(_signed_with_body(pki, bytes(encoded)))


def test_record_serial_must_match_its_certificate(pki, records):
    encoded = bytearray(records[0].encode())
    serial = records[0].serial
    at = encoded.index(b"\x06" + len(serial).to_bytes(2, "big") + serial) + 3
    encoded[at] ^= 0x40
    with pytest.raises(CtlFormatError, match="does not match its certificate's serial"):
        parse_ctl(_signed_with_body(pki, bytes(encoded)))


def test_an_sgn_or_empty_body_is_not_a_ctl(pki):
    with pytest.raises(CtlFormatError, match="does not start with the record-length tag"):
        parse_ctl(_signed_with_body(pki, b"<device/>"))
    with pytest.raises(CtlFormatError, match="no records"):
        parse_ctl(_signed_with_body(pki, b""))


def test_encrypted_header_tags_are_refused_clearly():
    header = (tlv.encode(1, b"\x02\x00") + tlv.encode_u16(2, 12) + tlv.encode(16, b"\x00"))
    header += b"\x0d" * (-len(header) % 4)
    header = header[:8] + len(header).to_bytes(2, "big") + header[10:]
    with pytest.raises(CtlFormatError, match="tag 16 belongs to encrypted"):
        parse_ctl(header)


def test_non_rsa_signer_is_refused(pki, records):
    ec = issue_with_new_key(pki["ca"], name("ec-token"), "ec256")
    signer = FileSigner.__new__(FileSigner)
    signer._certificate, signer._key = ec.cert, ec.key
    with pytest.raises(CtlBuildError, match="must be RSA"):
        build_ctl([record_from_certificate(ec.cert, Role.TOKEN)], signer, TS)


def test_format_ctl_lists_header_and_every_record(pki, ctl_bytes):
    text = format_ctl(parse_ctl(ctl_bytes))
    assert "Signer Name:       CN=SAST-a;OU=SAST;O=ccmsec" in text
    assert "Digest Algorithm:  SHA-1" in text
    for role in ("SAST (0)", "CCM+TFTP (2)", "CAPF (4)", "TFTP (3)"):
        assert role in text
    assert pki["server"].fingerprint(hashes.SHA256()).hex() in text
    assert pki["server"].fingerprint(hashes.SHA1()).hex() in text
    assert "Record 5 of 5" in text and "127.0.0.2" in text and "EC secp256r1" in text

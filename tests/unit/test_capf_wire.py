"""CAPF frame codec, streaming reader and phone-side rules (sans-IO, no sockets)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccmsec.pki.ca import create_ca, issue, issue_with_new_key, name, new_key
from ccmsec.wire.capf import (
    MAX_BODY, MAX_ELEMENTS, AuthType, CapfPhoneSession, CapfProtocolError, CertType, Command, Element,
    Frame, FrameReader, KeySpec, PhoneCredentials, Reason, decode_certificate_element, decode_frame,
    encode_certificate_element, encode_cstring, encode_frame, sign_auth, verify_auth_signature, CapfAuthError,
)
from cryptography.hazmat.primitives import serialization

SID = 0x01020304


def auth_request(auth_type=AuthType.NONE, sid=SID) -> Frame:
    return decode_frame(encode_frame(Command.AUTH_REQUEST, sid, [(Element.VERSION, b"\x03"),
                                                                 (Element.AUTH_TYPE, bytes([auth_type]))]))


def test_encode_decode_roundtrip_with_exact_bytes():
    data = encode_frame(Command.END_SESSION, SID, [(Element.REASON, b"\x01")])
    assert data == bytes.fromhex("55 0f 01020304 0004 01 0001 01")
    frame = decode_frame(data)
    assert frame.command is Command.END_SESSION and frame.session_id == SID
    assert frame.u8(Element.REASON) == 1
    assert frame.encode() == data


def test_certificate_element_nested_layout():
    der = b"\x30\x03\x02\x01\x05"
    value = encode_certificate_element(CertType.LSC, der)
    assert value[:5] == bytes([1]) + struct.pack(">H", len(der) + 2) + b"\x00\x01"
    assert decode_certificate_element(value) == (CertType.LSC, der)
    with pytest.raises(CapfProtocolError, match="nested length"):
        decode_certificate_element(value[:-1])
    with pytest.raises(CapfProtocolError, match="unknown certificate type"):
        decode_certificate_element(value[:4] + b"\x07" + value[5:])


@pytest.mark.parametrize("data, message", [
    (b"\x55\x0f\x00", "truncated CAPF header"),
    (b"\x56\x0f\x00\x00\x00\x01\x00\x00", "protocol id"),
    (b"\x55\x63\x00\x00\x00\x01\x00\x00", "unknown CAPF command 99"),
    (b"\x55\x0f\x00\x00\x00\x01" + struct.pack(">H", MAX_BODY + 1), "exceeds"),
    (b"\x55\x0f\x00\x00\x00\x01\x00\x06\x01\x00\x01\x01\x01", "length mismatch"),
    (b"\x55\x0f\x00\x00\x00\x01\x00\x04\x01\x00\x05\x01", "claims 5 bytes"),
    (b"\x55\x0f\x00\x00\x00\x01\x00\x02\x01\x00", "truncated element header"),
    (b"\x55\x0f\x00\x00\x00\x01\x00\x04\x63\x00\x01\x01", "unknown element tag 99"),
    (b"\x55\x0f\x00\x00\x00\x01\x00\x05\x01\x00\x02\x01\x01", "REASON must be 1 byte"),
    (b"\x55\x0f\x00\x00\x00\x01\x00\x08\x01\x00\x01\x01\x01\x00\x01\x01", "duplicate element REASON"),
    (b"\x55\x0f\x00\x00\x00\x01\x00\x00", "missing required element"),
    (b"\x55\x01\x00\x00\x00\x01\x00\x08\x07\x00\x01\x03\x08\x00\x01\x09", "invalid AUTH_TYPE value 9"),
])
def test_malformed_frames_are_refused_with_reason_7(data, message):
    with pytest.raises(CapfProtocolError, match=message) as info:
        decode_frame(data)
    assert info.value.reason == Reason.INVALID_ELEMENT


def test_element_count_is_capped():
    values = {Element.REASON: b"\x01", Element.CERT_TYPE: b"\x01", Element.VERSION: b"\x03",
              Element.AUTH_TYPE: b"\x00", Element.KEY_SIZE: b"\x08\x00", Element.KEY_TYPE: b"\x00",
              Element.CURVE: b"\x00", Element.DIGEST_TYPE: b"\x00", Element.RETRY_DELAY: b"\x01",
              Element.DEVICE_NAME: b"A\x00", Element.PASSWORD: b"1\x00", Element.REASON_INFO: b"",
              Element.CERT_ID: b"", Element.SIGNED_DATA: b"", Element.PUBLIC_KEY: b"",
              Element.SUDI_DATA: b"", Element.SIGNED_DATA_SHA2: b""}
    assert len(values) > MAX_ELEMENTS
    body = b"".join(struct.pack(">BH", tag, len(v)) + v for tag, v in values.items())
    data = struct.pack(">BBIH", 0x55, Command.STATUS_REQUEST, 1, len(body)) + body
    with pytest.raises(CapfProtocolError, match="more than"):
        decode_frame(data)


@pytest.mark.parametrize("value, message", [
    (b"SEP001122334455", "NUL-terminated"),
    (b"\x00", "1..64 bytes"),
    (b"A" * 65 + b"\x00", "1..64 bytes"),
    (b"SEP\x00X\x00", "embedded NUL"),
    (b"SEP 1\x00", "outside"),
    (b"\xff\xfe\x00", "UTF-8"),
])
def test_device_name_element_is_bounded_and_checked(value, message):
    data = encode_frame(Command.AUTH_RESPONSE, 1, [(Element.VERSION, b"\x03"), (Element.DEVICE_NAME, value)])
    with pytest.raises(CapfProtocolError, match=message):
        decode_frame(data)


def test_frame_reader_handles_arbitrary_chunking():
    frames = [encode_frame(Command.END_SESSION, i, [(Element.REASON, b"\x01")]) for i in range(5)]
    stream = b"".join(frames)
    for size in (1, 2, 3, 7, 100):
        reader = FrameReader()
        got = []
        for i in range(0, len(stream), size):
            got += reader.feed(stream[i:i + size])
        reader.at_eof()
        assert [f.session_id for f in got] == list(range(5))


def test_frame_reader_refuses_truncated_stream_and_oversized_header_early():
    reader = FrameReader()
    assert reader.feed(encode_frame(Command.END_SESSION, 1, [(Element.REASON, b"\x01")])[:-1]) == []
    with pytest.raises(CapfProtocolError, match="stream ended inside"):
        reader.at_eof()
    reader = FrameReader()
    # Refused on the header alone: the reader never waits to buffer a 64 KiB body.
    with pytest.raises(CapfProtocolError, match="exceeds"):
        reader.feed(b"\x55\x0f\x00\x00\x00\x01\xff\xff")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_decode_frame_only_clean_errors(data):
    try:
        frame = decode_frame(data)
    except CapfProtocolError as exc:
        assert str(exc) and exc.reason in (7, 9)
    else:
        assert decode_frame(frame.encode()) == frame


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=20))
def test_fuzz_frame_reader_only_clean_errors(chunks):
    reader = FrameReader()
    try:
        for chunk in chunks:
            for frame in reader.feed(b"\x55" + chunk):
                assert isinstance(frame, Frame)
            assert reader.pending <= 8 + MAX_BODY + 41
    except CapfProtocolError:
        pass


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(list(Command)), st.integers(0, 2**32 - 1),
       st.lists(st.tuples(st.sampled_from([Element.REASON_INFO, Element.SUDI_DATA, Element.PUBLIC_KEY,
                                           Element.SIGNED_DATA]), st.binary(max_size=50)), max_size=4,
                unique_by=lambda t: t[0]),
       st.integers(1, 64))
def test_fuzz_valid_frames_survive_any_chunking(command, sid, elements, chunk):
    extra = {Command.END_SESSION: [(Element.REASON, b"\x00")]}.get(command, [])
    try:
        data = encode_frame(command, sid, extra + elements)
        expected = decode_frame(data)
    except CapfProtocolError:
        return  # required elements missing for this command: refused cleanly, nothing to stream
    reader = FrameReader()
    got = []
    for i in range(0, len(data), chunk):
        got += reader.feed(data[i:i + chunk])
    assert got == [expected]


# ---- phone side ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manufacturer():
    return create_ca(name("Manufacturer CA"), key=new_key("ec256"))


@pytest.fixture
def phone(manufacturer):
    mic = issue_with_new_key(manufacturer, name("SEP001122334455"), "ec256")
    return PhoneCredentials("SEP001122334455", mic_cert=mic.cert, mic_key=mic.key, auth_string="123456")


def _reply(session, frame) -> list[Frame]:
    return [decode_frame(b) for b in session.receive(frame)]


def test_phone_answers_password_only_when_asked(phone):
    s = CapfPhoneSession(phone)
    (resp,) = _reply(s, auth_request(AuthType.NONE))
    assert resp.text(Element.DEVICE_NAME) == "SEP001122334455" and not resp.has(Element.PASSWORD)
    (resp,) = _reply(s, auth_request(AuthType.PASSWORD))
    assert resp.text(Element.PASSWORD) == "123456"


def test_cert2_phone_prefers_lsc_over_mic_for_authentication(phone):
    capf = create_ca(name("CAPF"), key=new_key("ec256"))
    lsc_key = new_key("ec256")
    phone.lsc_cert, phone.lsc_key = issue(capf, name(phone.device_name), lsc_key.public_key()), lsc_key
    (resp,) = _reply(CapfPhoneSession(phone), auth_request(AuthType.LSC))
    cert_type, der = resp.certificate()
    assert cert_type is CertType.LSC and der == phone.lsc_cert.public_bytes(serialization.Encoding.DER)
    verify_auth_signature(phone.lsc_cert, phone.device_name, resp.raw(Element.SIGNED_DATA_SHA2))
    # Explicit MIC auth still uses the MIC; without an LSC, LSC auth falls back to the MIC.
    (resp,) = _reply(CapfPhoneSession(phone), auth_request(AuthType.MIC))
    assert resp.certificate()[0] is CertType.MIC
    phone.lsc_cert = phone.lsc_key = None
    (resp,) = _reply(CapfPhoneSession(phone), auth_request(AuthType.LSC))
    assert resp.certificate()[0] is CertType.MIC


def test_auth_signature_refuses_tampering(phone):
    der = phone.mic_cert.public_bytes(serialization.Encoding.DER)
    sig = sign_auth(phone.mic_key, phone.device_name, der)
    verify_auth_signature(phone.mic_cert, phone.device_name, sig)
    with pytest.raises(CapfAuthError, match="does not verify"):
        verify_auth_signature(phone.mic_cert, "SEP999999999999", sig)
    with pytest.raises(CapfAuthError, match="does not verify"):
        verify_auth_signature(phone.mic_cert, phone.device_name, sig[:-2] + bytes([sig[-2] ^ 1, sig[-1]]))


def test_cert1_phone_refuses_to_overwrite_or_delete_its_mic(phone):
    s = CapfPhoneSession(phone)
    _reply(s, auth_request())
    mic_before = phone.mic_cert
    attacker = issue_with_new_key(create_ca(name("Evil")), name(phone.device_name), "ec256")
    der = attacker.cert.public_bytes(serialization.Encoding.DER)
    store_mic = decode_frame(encode_frame(Command.STORE_CERT_REQUEST, SID, [
        (Element.CERT_TYPE, bytes([CertType.MIC])),
        (Element.CERTIFICATE, encode_certificate_element(CertType.MIC, der))]))
    (resp,) = _reply(s, store_mic)
    assert resp.command is Command.STORE_CERT_RESPONSE and resp.u8(Element.REASON) == Reason.INVALID_ELEMENT
    delete_mic = decode_frame(encode_frame(Command.DELETE_CERT_REQUEST, SID,
                                           [(Element.CERT_TYPE, bytes([CertType.MIC]))]))
    (resp,) = _reply(s, delete_mic)
    assert resp.u8(Element.REASON) == Reason.INVALID_ELEMENT
    assert phone.mic_cert is mic_before and phone.mic_key is not None
    # A plain delete removes only the LSC: the MIC stays.
    (resp,) = _reply(s, decode_frame(encode_frame(Command.DELETE_CERT_REQUEST, SID, [])))
    assert resp.u8(Element.REASON) == Reason.NO_ACTION and phone.mic_cert is mic_before


def test_phone_refuses_lsc_for_a_key_it_did_not_generate_or_not_from_capf(phone):
    capf = create_ca(name("CAPF"), key=new_key("ec256"))
    phone.capf_certificate = capf.cert
    s = CapfPhoneSession(phone)
    _reply(s, auth_request())
    keygen = decode_frame(encode_frame(Command.KEY_GEN_REQUEST, SID, KeySpec.parse("ec256").elements()))
    progress, keyresp = _reply(s, keygen)
    assert progress.command is Command.REQUEST_IN_PROGRESS and keyresp.command is Command.KEY_GEN_RESPONSE
    other = issue(capf, name(phone.device_name), new_key("ec256").public_key())
    forged = issue(create_ca(name("CAPF"), key=new_key("ec256")), name(phone.device_name),
                   phone.pending_key.public_key())
    for cert in (other, forged):
        der = cert.public_bytes(serialization.Encoding.DER)
        (resp,) = _reply(s, decode_frame(encode_frame(Command.STORE_CERT_REQUEST, SID, [
            (Element.CERT_TYPE, b"\x01"), (Element.CERTIFICATE, encode_certificate_element(CertType.LSC, der))])))
        assert resp.u8(Element.REASON) == Reason.INVALID_ELEMENT
    assert phone.lsc_cert is None


def test_keyspec_parse_and_match():
    assert KeySpec.parse("rsa2048").size == 2048
    assert KeySpec.parse("ec256").matches(new_key("ec256").public_key())
    assert not KeySpec.parse("rsa2048").matches(new_key("ec256").public_key())
    with pytest.raises(ValueError, match="unsupported CAPF key type"):
        KeySpec.parse("dsa1024")
    bad = decode_frame(encode_frame(Command.KEY_GEN_REQUEST, 1, [(Element.KEY_TYPE, b"\x00"),
                                                                 (Element.KEY_SIZE, b"\x02\x01")]))
    with pytest.raises(CapfProtocolError, match="unsupported RSA size 513"):
        KeySpec.from_frame(bad)


def test_cstring_encoding():
    assert encode_cstring("SEP1") == b"SEP1\x00"

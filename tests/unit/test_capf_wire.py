"""CAPF frame codec, streaming reader and phone-side rules (sans-IO, no sockets)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccmsec.pki.ca import create_ca, issue, issue_with_new_key, name, new_key
from ccmsec.wire.capf import (
    MAX_BODY, MAX_ELEMENTS, AuthType, CapfAuthError, CapfPhoneSession, CapfProtocolError, CertType, Command, Element,
    Frame, FrameReader, HashAlgorithm, KeyGenerationRequested, KeySpec, PhoneCredentials, Reason,
    decode_certificate_element, decode_frame, decode_signed_data_sha2, encode_certificate_element, encode_cstring,
    encode_frame, encode_signed_data_sha2, sign_auth, verify_auth_signatures,
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
    """What the phone answers to one frame (generating a key when it asks for one)."""
    for event in session.handle_frame(frame):
        if isinstance(event, KeyGenerationRequested):
            session.key_generated(event.spec.generate())
    return FrameReader().feed(session.data_to_send())


def test_phone_sends_what_its_own_configuration_says_whatever_auth_type_the_server_names(phone):
    """Issue 14: the phone decides from its capfAuthMode, not from the server's auth type (some
    servers always send 0); with nothing to prove it still sends an empty password element."""
    phone.auth_mode = "string"
    for asked in (AuthType.NONE, AuthType.PASSWORD, AuthType.MIC):
        (resp,) = _reply(CapfPhoneSession(phone), auth_request(asked))
        assert resp.text(Element.DEVICE_NAME) == "SEP001122334455" and resp.text(Element.PASSWORD) == "123456"
        assert not resp.has(Element.CERTIFICATE)
    phone.auth_mode = "null"
    for asked in (AuthType.NONE, AuthType.PASSWORD):
        (resp,) = _reply(CapfPhoneSession(phone), auth_request(asked))
        assert resp.raw(Element.PASSWORD) == b"\x00" and resp.text(Element.PASSWORD) == ""
        assert not resp.has(Element.CERTIFICATE) and not resp.has(Element.SIGNED_DATA)
    phone.auth_mode = "mic"
    (resp,) = _reply(CapfPhoneSession(phone), auth_request(AuthType.NONE))
    assert resp.certificate()[0] is CertType.MIC and not resp.has(Element.PASSWORD)
    verify_auth_signatures(phone.mic_cert, phone.device_name, resp.raw(Element.SIGNED_DATA), None)
    verify_auth_signatures(phone.mic_cert, phone.device_name, None, resp.raw(Element.SIGNED_DATA_SHA2))


def test_cert2_phone_prefers_lsc_over_mic_for_authentication(phone):
    capf = create_ca(name("CAPF"), key=new_key("ec256"))
    lsc_key = new_key("ec256")
    phone.lsc_cert, phone.lsc_key = issue(capf, name(phone.device_name), lsc_key.public_key()), lsc_key
    phone.auth_mode = "lsc-then-mic"
    (resp,) = _reply(CapfPhoneSession(phone), auth_request(AuthType.NONE))
    cert_type, der = resp.certificate()
    assert cert_type is CertType.LSC and der == phone.lsc_cert.public_bytes(serialization.Encoding.DER)
    verify_auth_signatures(phone.lsc_cert, phone.device_name, resp.raw(Element.SIGNED_DATA),
                           resp.raw(Element.SIGNED_DATA_SHA2))
    # A MIC configuration still uses the MIC; without an LSC, LSC-then-MIC falls back to the MIC.
    phone.auth_mode = "mic"
    (resp,) = _reply(CapfPhoneSession(phone), auth_request(AuthType.LSC))
    assert resp.certificate()[0] is CertType.MIC
    phone.auth_mode = "lsc-then-mic"
    phone.lsc_cert = phone.lsc_key = None
    (resp,) = _reply(CapfPhoneSession(phone), auth_request(AuthType.LSC))
    assert resp.certificate()[0] is CertType.MIC


@pytest.mark.parametrize("kind", ["ec256", "rsa2048"])
def test_auth_signatures_follow_the_real_peer_convention_and_refuse_tampering(phone, manufacturer, kind):
    """Both signatures over `name | 0x00 | cert`: SHA-1 bare in element 6, SHA-512 behind a
    `hash(3) | length` header in element 20; RSA without DigestInfo; any tampering refused."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding
    mic = issue_with_new_key(manufacturer, name("SEP001122334455"), kind)
    der = mic.cert.public_bytes(serialization.Encoding.DER)
    (tag6, sig1), (tag20, sha2) = sign_auth(mic.key, phone.device_name, der)
    assert (tag6, tag20) == (Element.SIGNED_DATA, Element.SIGNED_DATA_SHA2)
    algorithm, sig512 = decode_signed_data_sha2(sha2)
    assert algorithm is HashAlgorithm.SHA512 and sha2[:3] == bytes([3]) + len(sig512).to_bytes(2, "big")
    payload = b"SEP001122334455\x00" + der
    key = mic.cert.public_key()
    for sig, algo in ((sig1, hashes.SHA1()), (sig512, hashes.SHA512())):
        digest = hashes.Hash(algo)
        digest.update(payload)
        if kind.startswith("rsa"):  # bare digest inside PKCS#1 type-1 padding, no DigestInfo
            assert key.recover_data_from_signature(sig, padding.PKCS1v15(), None) == digest.finalize()
        else:
            key.verify(sig, payload, ec.ECDSA(algo))
    verify_auth_signatures(mic.cert, phone.device_name, sig1, sha2)
    with pytest.raises(CapfAuthError, match="does not verify"):
        verify_auth_signatures(mic.cert, "SEP999999999999", sig1, None)
    with pytest.raises(CapfAuthError, match="SHA512.*does not verify"):
        verify_auth_signatures(mic.cert, phone.device_name, sig1,
                               encode_signed_data_sha2(HashAlgorithm.SHA512, sig512[:-1] + bytes([sig512[-1] ^ 1])))
    with pytest.raises(CapfAuthError, match="SHA-1.*does not verify"):  # one good, one bad: refused
        verify_auth_signatures(mic.cert, phone.device_name, sig1[:-1] + bytes([sig1[-1] ^ 1]), sha2)
    with pytest.raises(CapfAuthError, match="without a signature"):
        verify_auth_signatures(mic.cert, phone.device_name, None, None)


def test_signed_data_sha2_element_is_checked_when_decoded():
    good = encode_signed_data_sha2(HashAlgorithm.SHA512, b"\x01" * 64)
    assert decode_signed_data_sha2(good) == (HashAlgorithm.SHA512, b"\x01" * 64)
    for bad, message in ((b"\x03\x00", "too short"), (b"\x09\x00\x01\x00", "unknown hash"),
                         (b"\x03\x00\x05\x00", "does not match"), (b"\x03\x00\x00", "does not match")):
        frame = encode_frame(Command.AUTH_RESPONSE, 1, [(Element.VERSION, b"\x03"), (Element.DEVICE_NAME, b"A\x00"),
                                                       (Element.SIGNED_DATA_SHA2, bad)])
        with pytest.raises(CapfProtocolError, match=message):
            decode_frame(frame)


def test_empty_password_element_is_accepted_but_a_missing_nul_is_not():
    ok = decode_frame(encode_frame(Command.AUTH_RESPONSE, 1, [(Element.VERSION, b"\x03"),
                                                             (Element.DEVICE_NAME, b"SEP1\x00"), (Element.PASSWORD, b"\x00")]))
    assert ok.text(Element.PASSWORD) == ""
    with pytest.raises(CapfProtocolError, match="NUL-terminated"):
        decode_frame(encode_frame(Command.AUTH_RESPONSE, 1, [(Element.VERSION, b"\x03"),
                                                            (Element.DEVICE_NAME, b"SEP1\x00"), (Element.PASSWORD, b"")]))


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
    events = s.handle_frame(keygen)
    assert [type(e) for e in events] == [KeyGenerationRequested] and s.pending is events[0]
    (progress,) = FrameReader().feed(s.data_to_send())  # "in progress" goes out before the key exists
    s.key_generated(events[0].spec.generate())
    (keyresp,) = FrameReader().feed(s.data_to_send())
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

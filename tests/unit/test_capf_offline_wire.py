"""Offline-CA pieces of the CAPF protocol, sans-IO: the sign-certificate (22/23) and retry-later
(16) frames, the CSR checks on both sides, the phone's trust in third-party LSC issuers, and the
LSC trust anchors other servers load. Fuzzes the new elements."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccmsec.pki.ca import create_ca, issue, name, new_key
from ccmsec.pki.lsc import (
    LscError, check_third_party_ca, ensure_capf_ca, load_one_certificate, load_third_party_ca, capf_state_dir,
    save_third_party_ca, third_party_ca_path, verify_lsc_any,
)
from ccmsec.wire.capf import (
    MAX_RETRY_DELAY, CapfPhoneSession, CapfProtocolError, CertType, Command, Element, FrameReader, PhoneCredentials,
    Reason,
    build_csr, decode_csr, decode_frame, decode_retry_delay, encode_certificate_element, encode_cstring,
    encode_frame, encode_retry_delay, spki_der,
)

SID = 0x1234
DEVICE = "SEP0000000AB001"


def _phone_in_session(**kw) -> CapfPhoneSession:
    """A phone session past AUTH_REQUEST and with a generated key (as after KEY_GEN_REQUEST)."""
    phone = PhoneCredentials(DEVICE, pending_key=ec.generate_private_key(ec.SECP256R1()), **kw)
    session = CapfPhoneSession(phone)
    session.handle_frame(decode_frame(encode_frame(Command.AUTH_REQUEST, SID, [
        (Element.VERSION, b"\x03"), (Element.AUTH_TYPE, b"\x02")])))
    session.data_to_send()  # the auth response
    return session


def _answer(session: CapfPhoneSession, data: bytes) -> list[bytes]:
    """The frames the phone sends back for one server frame."""
    session.handle_frame(decode_frame(data))
    return [f.encode() for f in FrameReader().feed(session.data_to_send())]


def _sign_request(device: str = DEVICE) -> bytes:
    return encode_frame(Command.SIGN_CERT_REQUEST, SID, [
        (Element.DEVICE_NAME, encode_cstring(device)), (Element.CERT_TYPE, bytes([CertType.LSC]))])


# --- retry delay ---------------------------------------------------------------------------

def test_retry_delay_round_trips_and_bounds():
    for seconds in (1, 5, 600, MAX_RETRY_DELAY):
        assert decode_retry_delay(encode_retry_delay(seconds)) == seconds
    assert decode_retry_delay(b"\x3c") == 60  # shorter encodings are accepted on input
    for bad in (b"", b"\x00", b"\x00\x00\x00\x00", (MAX_RETRY_DELAY + 1).to_bytes(4, "big"), b"\x01" * 5):
        with pytest.raises(CapfProtocolError, match="RETRY_DELAY"):
            decode_retry_delay(bad)
    with pytest.raises(CapfProtocolError, match="retry delay"):
        encode_retry_delay(0)


def test_retry_later_without_delay_and_sign_request_without_name_are_refused_frames():
    with pytest.raises(CapfProtocolError, match="missing required element.*RETRY_DELAY"):
        decode_frame(encode_frame(Command.RETRY_LATER, SID, []))
    with pytest.raises(CapfProtocolError, match="missing required element.*DEVICE_NAME"):
        decode_frame(encode_frame(Command.SIGN_CERT_REQUEST, SID, []))
    with pytest.raises(CapfProtocolError, match="missing required element.*REASON"):
        decode_frame(encode_frame(Command.SIGN_CERT_RESPONSE, SID, []))


# --- phone side ----------------------------------------------------------------------------

def test_phone_answers_sign_request_with_a_csr_of_its_pending_key():
    session = _phone_in_session()
    (out,) = _answer(session, _sign_request())
    frame = decode_frame(out)
    assert frame.command is Command.SIGN_CERT_RESPONSE and frame.u8(Element.REASON) == Reason.OK
    cert_type, der = frame.certificate()
    assert cert_type is CertType.LSC
    csr = decode_csr(der, DEVICE, spki_der(session.phone.pending_key.public_key()))
    assert csr.is_signature_valid
    assert session.phone.pending_key is not None  # kept for the certificate to come


def test_phone_refuses_to_sign_a_csr_for_another_device_or_without_a_key():
    session = _phone_in_session()
    (out,) = _answer(session, _sign_request("SEP0000000AB999"))
    frame = decode_frame(out)
    assert frame.u8(Element.REASON) == Reason.INVALID_ELEMENT and not frame.has(Element.CERTIFICATE)
    assert any("not this phone" in e for e in session.history)
    session = _phone_in_session()
    session.phone.pending_key = None
    (out,) = _answer(session, _sign_request())
    assert decode_frame(out).u8(Element.REASON) == Reason.INVALID_ELEMENT


def test_phone_retry_later_ends_the_session_and_keeps_the_key():
    session = _phone_in_session()
    key = session.phone.pending_key
    assert _answer(session, encode_frame(Command.RETRY_LATER, SID, [
        (Element.RETRY_DELAY, encode_retry_delay(90))])) == []
    assert session.finished and session.retry_after == 90 and session.end_reason is None
    assert session.phone.pending_key is key and "retry:90" in session.history


def _store_request(der: bytes) -> bytes:
    return encode_frame(Command.STORE_CERT_REQUEST, SID, [
        (Element.CERT_TYPE, bytes([CertType.LSC])), (Element.CERTIFICATE, encode_certificate_element(CertType.LSC, der))])


def test_phone_stores_a_third_party_lsc_only_when_that_issuer_is_trusted():
    capf = create_ca(name("CAPF"))
    third = create_ca(name("Third-Party CA", org="Example"))
    session = _phone_in_session(capf_certificate=capf.cert)
    lsc = issue(third, name(DEVICE), session.phone.pending_key.public_key(), client=True, server=True)
    der = lsc.public_bytes(serialization.Encoding.DER)
    (out,) = _answer(session, _store_request(der))
    assert decode_frame(out).u8(Element.REASON) == Reason.INVALID_ELEMENT  # only CAPF trusted
    assert session.phone.lsc_cert is None
    session = _phone_in_session(capf_certificate=capf.cert, lsc_issuers=[third.cert])
    lsc = issue(third, name(DEVICE), session.phone.pending_key.public_key(), client=True, server=True)
    (out,) = _answer(session, _store_request(lsc.public_bytes(serialization.Encoding.DER)))
    assert decode_frame(out).u8(Element.REASON) == Reason.OK
    assert session.phone.lsc_cert == lsc and session.phone.pending_key is None


# --- CSR checks on the server side ---------------------------------------------------------

def test_decode_csr_refuses_tampered_wrong_cn_wrong_key_and_garbage():
    key = ec.generate_private_key(ec.SECP256R1())
    der = build_csr(DEVICE, key)
    assert decode_csr(der, DEVICE, spki_der(key.public_key())).subject.rfc4514_string() == f"CN={DEVICE}"
    with pytest.raises(CapfProtocolError, match="CN"):
        decode_csr(der, "SEP0000000AB002")
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(CapfProtocolError, match="not for the key"):
        decode_csr(der, DEVICE, spki_der(other.public_key()))
    tampered = bytearray(der)
    tampered[-3] ^= 0x01  # inside the signature
    with pytest.raises(CapfProtocolError):
        decode_csr(bytes(tampered), DEVICE)
    with pytest.raises(CapfProtocolError, match="PKCS#10"):
        decode_csr(b"\x30\x03\x02\x01\x00", DEVICE)
    two_cns = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, DEVICE), x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
    with pytest.raises(CapfProtocolError, match="CN"):
        decode_csr(two_cns, DEVICE)


# --- fuzz ------------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_fuzz_decode_csr_any_bytes_clean_error(data):
    try:
        decode_csr(data, DEVICE)
    except CapfProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([Command.RETRY_LATER, Command.SIGN_CERT_REQUEST, Command.SIGN_CERT_RESPONSE]),
       st.lists(st.tuples(st.sampled_from([Element.RETRY_DELAY, Element.DEVICE_NAME, Element.REASON,
                                           Element.CERTIFICATE, Element.CERT_TYPE]),
                          st.binary(max_size=40)), max_size=5))
def test_fuzz_new_frames_decode_cleanly_and_phone_never_crashes(command, elements):
    try:
        data = encode_frame(command, SID, elements)
        frame = decode_frame(data)
    except CapfProtocolError:
        return
    session = _phone_in_session()
    try:
        session.handle_frame(frame)
    except CapfProtocolError:
        pass


# --- trust anchors for the third-party CA (what callmanager loads) --------------------------

def test_third_party_ca_file_checks_and_anchors(tmp_path):
    capf = ensure_capf_ca(tmp_path / "pki")
    own = capf_state_dir(tmp_path)  # CAPF's own folder, not the pki folder every role reads
    assert load_third_party_ca(own) is None
    third = create_ca(name("Third-Party CA", org="Example"))
    leaf = issue(third, name("not-a-ca"), new_key("ec256").public_key(), client=True)
    with pytest.raises(LscError, match="not a CA"):
        check_third_party_ca(leaf)
    with pytest.raises(LscError, match="not valid now"):
        check_third_party_ca(third.cert, at=dt.datetime(2001, 1, 1, tzinfo=dt.timezone.utc))
    with pytest.raises(LscError, match="not an X.509"):
        load_one_certificate(b"garbage")
    with pytest.raises(LscError, match="2 certificates"):
        load_one_certificate(third.pem + capf.pem)
    path = save_third_party_ca(own, third.cert)
    assert path == third_party_ca_path(own) == tmp_path / "capf" / "lsc-third-party-ca.crt"
    assert load_third_party_ca(own) == third.cert
    anchors = [capf.cert, load_third_party_ca(own)]
    phone_key = new_key("ec256")
    lsc = issue(third, name(DEVICE, org_unit="LSC"), phone_key.public_key(), client=True, server=True)
    assert verify_lsc_any(lsc, anchors, device_name=DEVICE)[0] == lsc
    with pytest.raises(LscError):
        verify_lsc_any(lsc, [capf.cert], device_name=DEVICE)  # CAPF alone does not accept it
    with pytest.raises(LscError, match="CN"):
        verify_lsc_any(lsc, anchors, device_name="SEP0000000AB999")

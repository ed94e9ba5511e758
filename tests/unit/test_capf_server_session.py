"""The CAPF server session as a sans-IO state machine: bytes and time in, events and bytes out,
decisions answered by the caller, timers owned by the session. No sockets, no database."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization

from ccmsec.pki.ca import create_ca, issue, issue_with_new_key, name, new_key
from ccmsec.wire.capf import (
    AuthCheck, AuthenticationRefused, AuthStringCheckRequested, AuthType, CapfServerSession, CertType, Command,
    CompletionReported, CsrReceived, DeviceCertificateCheckRequested, Element, FrameReader, IssuanceRequested,
    KeySpec, OperationFailed, OperationLookup, OperationLookupRequested, Reason, ScheduledOperation, SessionEnded,
    build_csr, encode_certificate_element, encode_cstring, encode_frame, sign_auth, spki_der,
)

SID = 0x00ABCDEF
DEVICE = "SEP001122334455"


def op(operation="install", auth="null", key="ec256", **kw) -> ScheduledOperation:
    return ScheduledOperation(7, DEVICE, operation, auth, key, **kw)


def frames(session) -> list:
    return FrameReader().feed(session.data_to_send())


def send(session, command, elements=(), now=1.0) -> list:
    return session.receive_data(encode_frame(command, SID, elements), now)


def auth_response(*extra, device=DEVICE):
    return [(Element.VERSION, b"\x03"), (Element.DEVICE_NAME, encode_cstring(device)), *extra]


def started(now=0.0, **kw) -> CapfServerSession:
    s = CapfServerSession(SID, now=now, **kw)
    s.start(now)
    (req,) = frames(s)
    assert req.command is Command.AUTH_REQUEST and req.u8(Element.AUTH_TYPE) == AuthType.NONE
    return s


def looked_up(s, operation, *extra, now=1.0) -> list:
    (ask,) = send(s, Command.AUTH_RESPONSE, auth_response(*extra), now)
    assert ask == OperationLookupRequested(DEVICE) and s.pending is ask
    assert s.data_to_send() == b""  # nothing is said to the phone while the look-up runs
    return s.operation_looked_up(OperationLookup("scheduled", operation), now)


def test_install_null_auth_with_empty_password_runs_to_completion_only_after_each_answer():
    """Issue 14: a standard client's empty password is fine for an operation without a string."""
    s = started()
    assert looked_up(s, op(), (Element.PASSWORD, b"\x00")) == []
    (keygen,) = frames(s)
    assert keygen.command is Command.KEY_GEN_REQUEST and keygen.u8(Element.KEY_TYPE) == 1
    key = KeySpec.parse("ec256").generate()
    # "in progress" and the key in one read: both handled, then the issuance is asked for.
    data = (encode_frame(Command.REQUEST_IN_PROGRESS, SID, []) +
            encode_frame(Command.KEY_GEN_RESPONSE, SID, [(Element.PUBLIC_KEY, spki_der(key.public_key()))]))
    (ask,) = s.receive_data(data, 2.0)
    assert isinstance(ask, IssuanceRequested) and ask.public_key_der == spki_der(key.public_key())
    ca = create_ca(name("CAPF"), key=new_key("ec256"))
    der = issue(ca, name(DEVICE), key.public_key()).public_bytes(serialization.Encoding.DER)
    assert s.certificate_issued(der, 3.0) == []
    (store,) = frames(s)
    assert store.command is Command.STORE_CERT_REQUEST and store.certificate() == (CertType.LSC, der)
    (done,) = send(s, Command.STORE_CERT_RESPONSE, [(Element.REASON, b"\x01")], 4.0)
    assert done == CompletionReported(op(), "installed", der)
    assert s.data_to_send() == b""  # "done" only after the record is written
    assert s.completion_recorded(5.0) == [SessionEnded(Reason.OK, None)]
    (end,) = frames(s)
    assert end.command is Command.END_SESSION and end.u8(Element.REASON) == Reason.OK and s.finished


def test_string_auth_empty_password_is_checked_as_a_wrong_string_and_missing_credential_is_asked_once():
    s = started()
    (ask,) = looked_up(s, op(auth="string"), (Element.PASSWORD, b"\x00"))
    assert ask == AuthStringCheckRequested(op(auth="string"), "")
    (ended,) = s.auth_string_checked(AuthCheck.WRONG)
    assert ended.reason == Reason.INVALID_ELEMENT and "auth string refused (wrong)" in ended.error
    # No credential element at all: asked once more, naming the auth type; then refused and counted.
    s = started()
    assert looked_up(s, op(auth="string")) == []
    (again,) = frames(s)
    assert again.command is Command.AUTH_REQUEST and again.u8(Element.AUTH_TYPE) == AuthType.PASSWORD
    refused, ended = send(s, Command.AUTH_RESPONSE, auth_response())
    assert refused == AuthenticationRefused(op(auth="string"), "no credential for auth mode string")
    assert ended.reason == Reason.INVALID_ELEMENT
    s = started()
    assert looked_up(s, op(auth="string")) == []
    frames(s)
    (ask,) = send(s, Command.AUTH_RESPONSE, auth_response((Element.PASSWORD, encode_cstring("2468"))))
    assert ask.auth_string == "2468"
    assert s.auth_string_checked(AuthCheck.OK) == [] and frames(s)[0].command is Command.KEY_GEN_REQUEST


@pytest.fixture(scope="module")
def mic():
    return issue_with_new_key(create_ca(name("Manufacturer CA"), key=new_key("ec256")), name(DEVICE), "rsa2048")


def cert_elements(issued, cert_type=CertType.LSC, device=DEVICE, drop=()):
    der = issued.cert.public_bytes(serialization.Encoding.DER)
    sigs = [e for e in sign_auth(issued.key, device, der) if e[0] not in drop]
    return [(Element.CERTIFICATE, encode_certificate_element(cert_type, der)), *sigs]


def test_certificate_auth_verifies_the_signature_then_asks_for_the_chain_and_judges_the_kind(mic):
    """A standard client labels its MIC "LSC": the caller's chain check decides what it is."""
    operation = op(operation="troubleshoot", auth="mic")
    s = started()
    (ask,) = looked_up(s, operation, *cert_elements(mic, CertType.LSC))
    assert isinstance(ask, DeviceCertificateCheckRequested) and ask.claimed_type is CertType.LSC
    assert ask.certificate == mic.cert
    assert s.certificate_verified(CertType.MIC) == []
    (fetch,) = frames(s)
    assert fetch.command is Command.FETCH_CERT_REQUEST
    # The same certificate classified as an LSC is refused for MIC-only authentication.
    s = started()
    looked_up(s, operation, *cert_elements(mic))
    refused, ended = s.certificate_verified(CertType.LSC)
    assert refused == AuthenticationRefused(operation, "auth mode mic does not accept a LSC")
    assert ended.reason == Reason.INVALID_ELEMENT


@pytest.mark.parametrize("drop", [(Element.SIGNED_DATA,), (Element.SIGNED_DATA_SHA2,)])
def test_either_signature_alone_is_accepted(mic, drop):
    s = started()
    (ask,) = looked_up(s, op(auth="mic"), *cert_elements(mic, CertType.MIC, drop=drop))
    assert isinstance(ask, DeviceCertificateCheckRequested)


def test_bad_signature_wrong_device_or_no_signature_is_refused_before_any_chain_check(mic):
    for elements in (cert_elements(mic, device="SEP999999999999"),
                     cert_elements(mic, drop=(Element.SIGNED_DATA, Element.SIGNED_DATA_SHA2))):
        s = started()
        refused, ended = looked_up(s, op(auth="lsc-then-mic"), *elements)
        assert isinstance(refused, AuthenticationRefused) and ended.reason == Reason.INVALID_ELEMENT
        assert "signature" in refused.reason


def test_troubleshoot_accepts_a_standard_fetch_response_and_a_refusal_fails_the_operation(mic):
    der = mic.cert.public_bytes(serialization.Encoding.DER)
    s = started()
    looked_up(s, op(operation="troubleshoot"))
    frames(s)
    (done,) = send(s, Command.FETCH_CERT_RESPONSE, [(Element.REASON, b"\x01"),
                                                     (Element.CERTIFICATE, encode_certificate_element(CertType.LSC, der))])
    assert done.outcome == "fetched" and done.certificate_der == der
    s = started()
    looked_up(s, op(operation="troubleshoot"))
    frames(s)
    failed, ended = send(s, Command.FETCH_CERT_RESPONSE, [(Element.REASON, b"\x07")])
    assert isinstance(failed, OperationFailed) and "no certificate" in failed.reason
    assert ended.reason == Reason.INVALID_ELEMENT


def test_reconnect_resends_the_tied_certificate_and_a_different_key_fails_the_operation():
    key = KeySpec.parse("ec256").generate()
    ca = create_ca(name("CAPF"), key=new_key("ec256"))
    der = issue(ca, name(DEVICE), key.public_key()).public_bytes(serialization.Encoding.DER)
    s = started()
    looked_up(s, op(issued_der=der))
    frames(s)
    assert send(s, Command.KEY_GEN_RESPONSE, [(Element.PUBLIC_KEY, spki_der(key.public_key()))]) == []
    assert frames(s)[0].certificate() == (CertType.LSC, der)  # no second issuance asked for
    s = started()
    looked_up(s, op(issued_der=der))
    frames(s)
    other = KeySpec.parse("ec256").generate()
    failed, ended = send(s, Command.KEY_GEN_RESPONSE, [(Element.PUBLIC_KEY, spki_der(other.public_key()))])
    assert failed == OperationFailed(op(issued_der=der), "a certificate was already issued to a different key")
    assert ended.reason == Reason.INVALID_ELEMENT


def test_offline_issuer_asks_for_a_csr_and_ends_with_retry_later_once_it_is_kept():
    key = KeySpec.parse("ec256").generate()
    s = started(issuer_mode="offline", retry_delay=90)
    looked_up(s, op())
    frames(s)
    assert send(s, Command.KEY_GEN_RESPONSE, [(Element.PUBLIC_KEY, spki_der(key.public_key()))]) == []
    (sign,) = frames(s)
    assert sign.command is Command.SIGN_CERT_REQUEST and sign.text(Element.DEVICE_NAME) == DEVICE
    csr = build_csr(DEVICE, key)
    (ask,) = send(s, Command.SIGN_CERT_RESPONSE, [(Element.REASON, b"\x01"),
                                                   (Element.CERTIFICATE, encode_certificate_element(CertType.LSC, csr))])
    assert ask == CsrReceived(op(), csr)
    assert s.csr_kept() == [SessionEnded(None, None, 90)]
    (later,) = frames(s)
    assert later.command is Command.RETRY_LATER and s.retry_after == 90


def test_capf_issuer_never_sends_offline_extension_frames_for_any_operation(mic):
    """Issue 14: commands 22/23 and retry-later are used only by an offline-CA install."""
    der = mic.cert.public_bytes(serialization.Encoding.DER)
    key = KeySpec.parse("ec256").generate()
    for operation in ("install", "upgrade", "troubleshoot", "delete"):
        s = started()
        looked_up(s, op(operation=operation), (Element.PASSWORD, b"\x00"))
        sent = frames(s)
        if operation in ("install", "upgrade"):
            (ask,) = send(s, Command.KEY_GEN_RESPONSE, [(Element.PUBLIC_KEY, spki_der(key.public_key()))])
            ca = create_ca(name("CAPF"), key=new_key("ec256"))
            s.certificate_issued(issue(ca, name(DEVICE), key.public_key()).public_bytes(serialization.Encoding.DER))
            sent += frames(s)
            send(s, Command.STORE_CERT_RESPONSE, [(Element.REASON, b"\x01")])
        elif operation == "troubleshoot":
            send(s, Command.FETCH_CERT_RESPONSE, [(Element.CERTIFICATE, encode_certificate_element(CertType.LSC, der))])
        else:
            send(s, Command.DELETE_CERT_RESPONSE, [(Element.REASON, b"\x01")])
        s.completion_recorded()
        sent += frames(s)
        assert {f.command for f in sent}.isdisjoint({Command.SIGN_CERT_REQUEST, Command.RETRY_LATER}), operation
        assert sent[-1].command is Command.END_SESSION and sent[-1].u8(Element.REASON) == Reason.OK


def test_look_up_outcomes_end_with_their_reason_codes():
    for kind, reason in (("unknown", Reason.UNKNOWN_DEVICE), ("none", Reason.NO_ACTION),
                         ("expired", Reason.NO_ACTION), ("locked", Reason.INVALID_ELEMENT)):
        s = started()
        send(s, Command.AUTH_RESPONSE, auth_response())
        (ended,) = s.operation_looked_up(OperationLookup(kind))
        assert ended.reason == reason and frames(s)[0].u8(Element.REASON) == reason


def test_frames_arriving_during_a_decision_wait_and_out_of_order_ones_end_the_session():
    s = started()
    data = encode_frame(Command.AUTH_RESPONSE, SID, auth_response()) + encode_frame(
        Command.STORE_CERT_RESPONSE, SID, [(Element.REASON, b"\x01")])
    (ask,) = s.receive_data(data, 1.0)
    assert isinstance(ask, OperationLookupRequested)
    (ended,) = s.operation_looked_up(OperationLookup("scheduled", op()))
    assert ended.reason == Reason.INVALID_ELEMENT and "out of order" in ended.error
    with pytest.raises(RuntimeError, match="no IssuanceRequested"):
        started().certificate_issued(b"")


def test_decision_failure_ends_with_reason_7_and_nothing_recorded():
    s = started()
    send(s, Command.AUTH_RESPONSE, auth_response())
    (ended,) = s.decision_failed("database is locked")
    assert ended == SessionEnded(Reason.INVALID_ELEMENT, "look-up: database is locked")


def test_timers_idle_only_on_the_phones_turn_and_a_whole_session_bound():
    s = started(now=100.0, idle_timeout=5.0, session_timeout=60.0)
    assert s.deadline == 105.0 and s.tick(104.9) == []
    (ask,) = send(s, Command.AUTH_RESPONSE, auth_response(), now=103.0)
    assert s.deadline == 160.0  # waiting for our own look-up: the phone's idle timer is off
    assert s.tick(150.0) == []
    s.operation_looked_up(OperationLookup("scheduled", op()), now=150.0)
    assert frames(s)[0].command is Command.KEY_GEN_REQUEST and s.deadline == 155.0
    assert s.tick(155.0) == [SessionEnded(None, "phone idle too long")] and s.data_to_send() == b""
    s = started(now=0.0, idle_timeout=5.0, session_timeout=8.0)
    send(s, Command.AUTH_RESPONSE, auth_response(), now=4.0)
    assert s.tick(8.0) == [SessionEnded(None, "session timed out")] and s.pending is None


def test_garbage_and_eof_end_the_session_cleanly():
    s = started()
    (ended,) = s.receive_data(b"\x66" * 8, 1.0)
    assert ended.reason == Reason.INVALID_ELEMENT and frames(s)[0].command is Command.END_SESSION
    s = started()
    assert s.receive_data(encode_frame(Command.AUTH_RESPONSE, SID, auth_response())[:-2], 1.0) == []
    (ended,) = s.receive_eof(2.0)
    assert ended.reason is None and "stream ended inside" in ended.error and s.data_to_send() == b""

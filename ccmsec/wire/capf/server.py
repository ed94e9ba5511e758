"""The CAPF server's half of one phone session, sans-IO: bytes and time in, events and bytes out.

    session = CapfServerSession(session_id, now=t)
    session.start(now=t)                       # queues the auth request
    events = session.receive_data(data, now)   # frames from the phone
    out = session.data_to_send()               # bytes to write (each message whole)

The session never looks anything up, issues or stores anything itself: when it needs the outside
world it returns a *request* event and waits (frames arriving meanwhile are queued) until the
caller answers with the matching method:

| event | answer |
|---|---|
| `OperationLookupRequested` | `operation_looked_up(OperationLookup)` |
| `AuthStringCheckRequested` | `auth_string_checked(AuthCheck)` (the check also counts failures) |
| `DeviceCertificateCheckRequested` | `certificate_verified(CertType)` / `certificate_refused(why)` |
| `IssuanceRequested` | `certificate_issued(der)` |
| `CsrReceived` | `csr_kept()` |
| `CompletionReported` | `completion_recorded()` |

Any request may instead be answered `decision_failed(why)` (the store refused, the database is
down…): the session ends with reason 7 and nothing more happens.

Other events are facts for the caller to act on before it sends what is queued:
`AuthenticationRefused` (count a failed attempt), `OperationFailed` (mark the operation failed)
and `SessionEnded` (close the connection once the queued bytes are out). The session owns its
timers: `deadline` is when the caller must call `tick(now)` (phone idle too long while the session
waits for it; the whole session too long).

Protocol: auth request (auth type 0) → auth response naming the device (with the credential a
standard phone sends at once) → look-up → credential check (asked for once more, naming the auth
type, only when the response carried no credential element at all) → the operation. Install /
upgrade: key-generate request → (request in progress) → public key → LSC issued → store request
→ store response → end (reason 1). Troubleshoot: fetch → end. Delete: delete → end. Nothing
scheduled: end (reason 0); unknown device: end (reason 9); bad input: end (reason 7).

Offline CA (our extension, commands 22/23, used only by install/upgrade when the issuer is
"offline" or the operation already holds a CSR): after the public key the server sends a
sign-certificate request (22: DEVICE_NAME, CERT_TYPE LSC); the phone answers (23) with REASON 1
and its PKCS#10 CSR in the CERTIFICATE element; once it is kept the session ends with
retry-later (16, RETRY_DELAY in seconds). When the phone comes back after a certificate was
imported, the usual store request delivers it.
"""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass
from typing import Literal

from cryptography import x509

from ccmsec.domain import CapfAuthMode, CapfOperation

from .auth import CapfAuthError, verify_auth_signatures
from .csr import decode_csr
from .frames import (
    MAX_REASON_INFO, PROTOCOL_VERSION, AuthType, CapfProtocolError, CertType, Command, Element, Frame,
    FrameReader, Reason, encode_certificate_element, encode_cstring, encode_frame, encode_retry_delay, u8,
)
from .keys import KeySpec, load_public_key, spki_der

@dataclass(frozen=True)
class ScheduledOperation:
    op_id: int
    device_name: str
    operation: CapfOperation          # given as a member or its text
    auth_mode: CapfAuthMode
    key_kind: str                     # e.g. "rsa2048", "ec256"
    issued_der: bytes | None = None   # certificate already issued for this operation (reconnect)
    csr_der: bytes | None = None      # offline CA: the phone's CSR, kept until a certificate is imported

    def __post_init__(self) -> None:
        object.__setattr__(self, "operation", CapfOperation.parse(self.operation))
        object.__setattr__(self, "auth_mode", CapfAuthMode.parse(self.auth_mode))

    @property
    def accepted_certificates(self) -> frozenset[CertType]:
        """The certificate types its auth mode accepts (none for string and null)."""
        return frozenset(CertType(kind.to_wire()) for kind in self.auth_mode.accepted_certificates)


class AuthCheck(enum.Enum):
    OK = "ok"
    WRONG = "wrong"
    LOCKED = "locked"


@dataclass(frozen=True)
class OperationLookup:
    kind: Literal["unknown", "none", "expired", "locked", "scheduled"]
    operation: ScheduledOperation | None = None


# ---------------------------------------------------------------------------------------------
# Events


@dataclass(frozen=True)
class OperationLookupRequested:
    """Which operation to carry out now for this device? → `operation_looked_up`."""
    device_name: str


@dataclass(frozen=True)
class AuthStringCheckRequested:
    """Does the auth string match the operation's (counting a failure)? → `auth_string_checked`."""
    operation: ScheduledOperation
    auth_string: str


@dataclass(frozen=True)
class DeviceCertificateCheckRequested:
    """The signature over the device name verified; does the certificate chain to a CA as this
    device's LSC or MIC? `claimed_type` is what the phone labelled it (not trusted: standard
    clients label every certificate LSC). → `certificate_verified(actual type)` / `certificate_refused`."""
    operation: ScheduledOperation
    certificate: x509.Certificate
    claimed_type: CertType


@dataclass(frozen=True)
class IssuanceRequested:
    """Issue an LSC for this key and tie it to the operation (once: a racing or earlier session's
    certificate wins) → `certificate_issued(der of the tied certificate)`."""
    operation: ScheduledOperation
    public_key_der: bytes


@dataclass(frozen=True)
class CsrReceived:
    """Offline CA: keep this checked CSR with the operation → `csr_kept`."""
    operation: ScheduledOperation
    csr_der: bytes


@dataclass(frozen=True)
class CompletionReported:
    """The phone did it: record `outcome` (installed | fetched | deleted) → `completion_recorded`.
    The phone hears "done" only after the record is written."""
    operation: ScheduledOperation
    outcome: Literal["installed", "fetched", "deleted"]
    certificate_der: bytes | None


@dataclass(frozen=True)
class AuthenticationRefused:
    """A failed authentication attempt the caller counts against the operation."""
    operation: ScheduledOperation
    reason: str


@dataclass(frozen=True)
class OperationFailed:
    """The operation cannot complete (the phone refused, or a key conflict): mark it failed."""
    operation: ScheduledOperation
    reason: str


@dataclass(frozen=True)
class SessionEnded:
    """Terminal. `reason`: the END_SESSION reason sent (None when nothing was: timeout, phone
    gone, phone ended it, retry-later); `error`: why, when it was not a success."""
    reason: int | None
    error: str | None
    retry_after: int | None = None


DECISIONS = (OperationLookupRequested, AuthStringCheckRequested, DeviceCertificateCheckRequested,
             IssuanceRequested, CsrReceived, CompletionReported)


class ServerState(enum.Enum):
    NEW = "new"
    AWAIT_AUTH = "await-auth"
    AWAIT_CREDENTIAL = "await-credential"
    AWAIT_KEY = "await-key"
    AWAIT_STORE = "await-store"
    AWAIT_FETCH = "await-fetch"
    AWAIT_DELETE = "await-delete"
    AWAIT_CSR = "await-csr"
    DONE = "done"


_EXPECTED: dict[ServerState, tuple[Command, ...]] = {
    ServerState.AWAIT_AUTH: (Command.AUTH_RESPONSE,),
    ServerState.AWAIT_CREDENTIAL: (Command.AUTH_RESPONSE,),
    ServerState.AWAIT_KEY: (Command.REQUEST_IN_PROGRESS, Command.KEY_GEN_RESPONSE),
    ServerState.AWAIT_STORE: (Command.STORE_CERT_RESPONSE,),
    ServerState.AWAIT_FETCH: (Command.FETCH_CERT_RESPONSE,),
    ServerState.AWAIT_DELETE: (Command.DELETE_CERT_RESPONSE,),
    ServerState.AWAIT_CSR: (Command.SIGN_CERT_RESPONSE,),
}


class CapfServerSession:
    """One phone connection, server side. Errors never escape: bad input ends the session with
    the reason code it carries (and a `SessionEnded` event)."""

    def __init__(self, session_id: int, *, now: float = 0.0, issuer_mode: str = "capf", retry_delay: int = 600,
                 idle_timeout: float = 30.0, session_timeout: float = 120.0):
        self.session_id = session_id
        # "capf" (sign here) or "offline" (CSR to a third-party CA), fixed for the session; an
        # operation that already holds a CSR stays offline whatever this says.
        self.issuer_mode = issuer_mode
        self.retry_delay = retry_delay
        self.idle_timeout = idle_timeout
        self.state = ServerState.NEW
        self.op: ScheduledOperation | None = None
        self.device_name: str | None = None
        self.end_reason: int | None = None
        self.error: str | None = None
        self.retry_after: int | None = None      # set when the session ended with RETRY_LATER
        self.certificate_der: bytes | None = None  # issued / fetched certificate
        self.pending: object | None = None         # the decision request awaiting an answer
        self._reader = FrameReader()
        self._inbox: collections.deque[Frame] = collections.deque()
        self._out = bytearray()
        self._auth_frame: Frame | None = None
        self._key_spec: KeySpec | None = None
        self._public_key_der: bytes | None = None
        self._progress_seen = False
        self._last_input = now
        self._session_deadline = now + session_timeout

    # -- output, state, timers ------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    @property
    def finished(self) -> bool:
        return self.state is ServerState.DONE

    @property
    def deadline(self) -> float | None:
        """When `tick` must run: the session's end, or the phone's idle limit while it is its turn."""
        if self.finished:
            return None
        if self.pending is not None:
            return self._session_deadline
        return min(self._session_deadline, self._last_input + self.idle_timeout)

    def tick(self, now: float) -> list[object]:
        if self.finished:
            return []
        if now >= self._session_deadline:
            return self._close("session timed out")
        if self.pending is None and now >= self._last_input + self.idle_timeout:
            return self._close("phone idle too long")
        return []

    def _send(self, command: Command, elements=()) -> None:
        self._out += encode_frame(command, self.session_id, elements)

    def _close(self, error: str) -> list[object]:
        """End without sending anything (timeouts, the phone gone or ending the session)."""
        self.state = ServerState.DONE
        self.pending = None
        self.error = self.error or error
        return [SessionEnded(self.end_reason, self.error)]

    def _end(self, reason: int, error: str | None = None, info: str | None = None) -> list[object]:
        elements = [(Element.REASON, u8(reason))]
        if info is not None:
            elements.append((Element.REASON_INFO, info.encode("utf-8")[:MAX_REASON_INFO - 1] + b"\x00"))
        self._send(Command.END_SESSION, elements)
        self.state = ServerState.DONE
        self.pending = None
        self.end_reason = int(reason)
        self.error = error
        return [SessionEnded(self.end_reason, error)]

    def _fail(self, why: str, phone_text: str | None = None) -> list[object]:
        """The operation cannot complete: mark it failed and end with reason 7."""
        assert self.op is not None
        return [OperationFailed(self.op, why), *self._end(Reason.INVALID_ELEMENT, phone_text or why)]

    def _refuse_auth(self, why: str) -> list[object]:
        assert self.op is not None and self.device_name is not None
        return [AuthenticationRefused(self.op, why),
                *self._end(Reason.INVALID_ELEMENT, f"{self.device_name}: {why}")]

    def _ask(self, request: object) -> list[object]:
        self.pending = request
        return [request]

    def _answered(self, kind: type, now: float | None) -> object:
        if self.pending is None or not isinstance(self.pending, kind):
            raise RuntimeError(f"no {kind.__name__} is waiting for an answer (pending: {self.pending!r})")
        request, self.pending = self.pending, None
        if now is not None:
            self._last_input = now  # the phone's idle time starts when it is its turn again
        return request

    # -- input --------------------------------------------------------------------------------

    def start(self, now: float | None = None) -> None:
        """Queue the auth request. The device is not known yet, so it names no auth type; the
        scheduled operation decides later what credential is needed."""
        if self.state is not ServerState.NEW:
            raise RuntimeError("session already started")
        if now is not None:
            self._last_input = now
        self.state = ServerState.AWAIT_AUTH
        self._send(Command.AUTH_REQUEST, [(Element.VERSION, u8(PROTOCOL_VERSION)), (Element.AUTH_TYPE, u8(AuthType.NONE))])

    def refuse(self, reason: int, info: str) -> list[object]:
        """End the session before it starts, saying why in a REASON_INFO element (e.g. CHK-2)."""
        return self._end(reason, info, info=info)

    def receive_data(self, data: bytes, now: float) -> list[object]:
        if self.finished:
            return []
        self._last_input = now
        try:
            self._inbox.extend(self._reader.feed(data))
        except CapfProtocolError as exc:
            self._inbox.clear()
            return self._end(exc.reason, str(exc))
        return self._drain()

    def receive_eof(self, now: float) -> list[object]:
        """The phone closed its side."""
        if self.finished:
            return []
        try:
            self._reader.at_eof()
        except CapfProtocolError as exc:
            return self._close(str(exc))
        return self._close("phone closed the connection")

    def _drain(self) -> list[object]:
        events: list[object] = []
        while self._inbox and self.pending is None and not self.finished:
            events += self._handle(self._inbox.popleft())
        return events

    def _handle(self, frame: Frame) -> list[object]:
        try:
            if frame.session_id != self.session_id:
                raise CapfProtocolError(
                    f"{frame.command.name}: session id {frame.session_id} is not this session's {self.session_id}")
            if frame.command in (Command.END_SESSION, Command.ABORT_REQUEST):
                self.end_reason = frame.u8(Element.REASON) if frame.has(Element.REASON) else None
                return self._close(f"phone ended the session ({frame.command.name})")
            expected = _EXPECTED.get(self.state, ())
            if frame.command not in expected:
                names = " or ".join(c.name for c in expected) or "nothing"
                raise CapfProtocolError(f"out of order: got {frame.command.name} while expecting {names}")
            return self._dispatch(frame)
        except CapfProtocolError as exc:
            return self._end(exc.reason, str(exc))

    def _dispatch(self, frame: Frame) -> list[object]:
        command = frame.command
        if command is Command.AUTH_RESPONSE:
            return self._on_auth_response(frame)
        if command is Command.REQUEST_IN_PROGRESS:
            if self._progress_seen:
                raise CapfProtocolError("out of order: second REQUEST_IN_PROGRESS")
            self._progress_seen = True
            return []
        if command is Command.KEY_GEN_RESPONSE:
            return self._on_public_key(frame)
        if command is Command.STORE_CERT_RESPONSE:
            return self._on_stored(frame)
        if command is Command.FETCH_CERT_RESPONSE:
            return self._on_fetched(frame)
        if command is Command.SIGN_CERT_RESPONSE:
            return self._on_csr(frame)
        return self._on_deleted(frame)

    # -- authentication ------------------------------------------------------------------------

    def _on_auth_response(self, frame: Frame) -> list[object]:
        version = frame.u8(Element.VERSION)
        if version != PROTOCOL_VERSION:
            raise CapfProtocolError(f"AUTH_RESPONSE: unsupported CAPF version {version}")
        device = frame.text(Element.DEVICE_NAME)
        if self.state is ServerState.AWAIT_CREDENTIAL:
            if device != self.device_name:
                raise CapfProtocolError(f"AUTH_RESPONSE: device name changed from {self.device_name} to {device}")
            return self._check_credential(frame, asked=True)
        self.device_name = device
        self._auth_frame = frame
        return self._ask(OperationLookupRequested(device))

    def operation_looked_up(self, lookup: OperationLookup, now: float | None = None) -> list[object]:
        self._answered(OperationLookupRequested, now)
        device = self.device_name
        if lookup.kind == "unknown":
            return self._end(Reason.UNKNOWN_DEVICE, f"unknown device {device}")
        if lookup.kind == "locked":
            return self._end(Reason.INVALID_ELEMENT, f"operation for {device} is locked")
        if lookup.kind != "scheduled" or lookup.operation is None:
            return self._end(Reason.NO_ACTION, f"nothing to do for {device} ({lookup.kind})")
        self.op = lookup.operation
        assert self._auth_frame is not None
        return self._check_credential(self._auth_frame, asked=False) + self._drain()

    def _check_credential(self, frame: Frame, *, asked: bool) -> list[object]:
        op = self.op
        assert op is not None
        mode = op.auth_mode
        if mode is CapfAuthMode.NULL:
            return self._begin_operation()  # whatever the phone sent (often an empty password)
        has_password, has_certificate = frame.has(Element.PASSWORD), frame.has(Element.CERTIFICATE)
        if not (has_password or has_certificate):
            if asked:
                return self._refuse_auth(f"no credential for auth mode {mode}")
            # Ask once more, now naming the auth type the scheduled operation requires.
            self.state = ServerState.AWAIT_CREDENTIAL
            self._send(Command.AUTH_REQUEST, [(Element.VERSION, u8(PROTOCOL_VERSION)),
                                              (Element.AUTH_TYPE, u8(mode.to_wire()))])
            return []
        if mode is CapfAuthMode.STRING:
            if not has_password:
                return self._refuse_auth("auth mode string needs the authentication string, not a certificate")
            return self._ask(AuthStringCheckRequested(op, frame.text(Element.PASSWORD)))
        if not has_certificate:
            return self._refuse_auth(f"auth mode {mode} needs a certificate signature, got only a password")
        try:
            claimed, certificate = self._signed_certificate(frame)
        except CapfAuthError as exc:
            return self._refuse_auth(str(exc))
        return self._ask(DeviceCertificateCheckRequested(op, certificate, claimed))

    def _signed_certificate(self, frame: Frame) -> tuple[CertType, x509.Certificate]:
        claimed, der = frame.certificate()
        if frame.has(Element.CERT_TYPE) and frame.u8(Element.CERT_TYPE) != claimed:
            raise CapfAuthError("CERT_TYPE element disagrees with the certificate's nested type")
        try:
            certificate = x509.load_der_x509_certificate(der)
        except ValueError:
            raise CapfAuthError("authentication certificate is not valid DER X.509") from None
        assert self.device_name is not None
        verify_auth_signatures(certificate, self.device_name, frame.elements.get(Element.SIGNED_DATA),
                               frame.elements.get(Element.SIGNED_DATA_SHA2))
        return claimed, certificate

    def auth_string_checked(self, check: AuthCheck, now: float | None = None) -> list[object]:
        self._answered(AuthStringCheckRequested, now)
        if check is not AuthCheck.OK:
            # The check counted the failure itself (and locked the operation at the limit).
            return self._end(Reason.INVALID_ELEMENT, f"{self.device_name}: auth string refused ({check.value})")
        return self._begin_operation() + self._drain()

    def certificate_verified(self, cert_type: CertType, now: float | None = None) -> list[object]:
        self._answered(DeviceCertificateCheckRequested, now)
        assert self.op is not None
        if CertType(cert_type) not in self.op.accepted_certificates:
            return self._refuse_auth(f"auth mode {self.op.auth_mode} does not accept a {CertType(cert_type).name}")
        return self._begin_operation() + self._drain()

    def certificate_refused(self, why: str, now: float | None = None) -> list[object]:
        self._answered(DeviceCertificateCheckRequested, now)
        return self._refuse_auth(why)

    # -- the operation ---------------------------------------------------------------------------

    def _begin_operation(self) -> list[object]:
        op = self.op
        assert op is not None
        if op.operation.issues_certificate:
            self._key_spec = KeySpec.parse(op.key_kind)
            self.state = ServerState.AWAIT_KEY
            self._send(Command.KEY_GEN_REQUEST, self._key_spec.elements())
        elif op.operation is CapfOperation.TROUBLESHOOT:
            self.state = ServerState.AWAIT_FETCH
            self._send(Command.FETCH_CERT_REQUEST)
        else:
            self.state = ServerState.AWAIT_DELETE
            self._send(Command.DELETE_CERT_REQUEST, [(Element.CERT_TYPE, u8(CertType.LSC))])
        return []

    def _on_public_key(self, frame: Frame) -> list[object]:
        op, spec = self.op, self._key_spec
        assert op is not None and spec is not None
        public_key = load_public_key(frame.raw(Element.PUBLIC_KEY))
        if not spec.matches(public_key):
            raise CapfProtocolError(f"KEY_GEN_RESPONSE: public key is not the requested {op.key_kind}")
        self._public_key_der = spki_der(public_key)
        if op.issued_der is not None:
            # A previous session of this operation already issued a certificate: resend it
            # for the same key, never issue a second one.
            return self._deliver(op.issued_der)
        if op.csr_der is not None or self.issuer_mode == "offline":
            return self._offline()
        return self._ask(IssuanceRequested(op, self._public_key_der))

    def certificate_issued(self, der: bytes, now: float | None = None) -> list[object]:
        self._answered(IssuanceRequested, now)
        return self._deliver(der) + self._drain()

    def _deliver(self, der: bytes) -> list[object]:
        cert = x509.load_der_x509_certificate(der)
        if spki_der(cert.public_key()) != self._public_key_der:
            return self._fail("a certificate was already issued to a different key",
                              "operation already issued a certificate for another key")
        self.certificate_der = der
        self.state = ServerState.AWAIT_STORE
        self._send(Command.STORE_CERT_REQUEST, [
            (Element.CERT_TYPE, u8(CertType.LSC)),
            (Element.CERTIFICATE, encode_certificate_element(CertType.LSC, der)),
        ])
        return []

    def _offline(self) -> list[object]:
        """Offline CA, no certificate imported yet: ask for a CSR, or (already holding the CSR
        for this key) tell the phone to come back later."""
        op = self.op
        assert op is not None
        if op.csr_der is not None:
            held = x509.load_der_x509_csr(op.csr_der).public_key()
            if spki_der(held) == self._public_key_der:
                return self._retry_later()
            # The phone lost the key of its first CSR: a new CSR replaces it (nothing was issued).
        self.state = ServerState.AWAIT_CSR
        self._send(Command.SIGN_CERT_REQUEST, [
            (Element.DEVICE_NAME, encode_cstring(op.device_name)),
            (Element.CERT_TYPE, u8(CertType.LSC)),
        ])
        return []

    def _retry_later(self) -> list[object]:
        self.state = ServerState.DONE
        self.retry_after = self.retry_delay
        self._send(Command.RETRY_LATER, [(Element.RETRY_DELAY, encode_retry_delay(self.retry_delay))])
        return [SessionEnded(None, None, self.retry_after)]

    def _on_csr(self, frame: Frame) -> list[object]:
        op = self.op
        assert op is not None
        reason = frame.u8(Element.REASON)
        if reason != Reason.OK:
            return self._fail(f"phone refused to sign a CSR (reason {reason})",
                              f"phone refused the CSR request (reason {reason})")
        cert_type, der = frame.certificate()
        if cert_type is not CertType.LSC:
            raise CapfProtocolError("SIGN_CERT_RESPONSE: CSR must be carried as certificate type LSC")
        decode_csr(der, op.device_name, self._public_key_der)
        return self._ask(CsrReceived(op, der))

    def csr_kept(self, now: float | None = None) -> list[object]:
        self._answered(CsrReceived, now)
        return self._retry_later()

    def _on_stored(self, frame: Frame) -> list[object]:
        op = self.op
        assert op is not None
        reason = frame.u8(Element.REASON)
        if reason != Reason.OK:
            return self._fail(f"phone refused to store the LSC (reason {reason})",
                              f"phone refused the LSC (reason {reason})")
        return self._ask(CompletionReported(op, "installed", self.certificate_der))

    def _on_fetched(self, frame: Frame) -> list[object]:
        op = self.op
        assert op is not None
        reason = frame.u8(Element.REASON) if frame.has(Element.REASON) else None
        if not frame.has(Element.CERTIFICATE) or reason not in (None, Reason.OK):
            shown = "none given" if reason is None else str(reason)
            return self._fail(f"phone sent no certificate to fetch (reason {shown})")
        _cert_type, der = frame.certificate()
        try:
            x509.load_der_x509_certificate(der)
        except ValueError:
            raise CapfProtocolError("FETCH_CERT_RESPONSE: certificate is not valid DER X.509") from None
        self.certificate_der = der
        return self._ask(CompletionReported(op, "fetched", der))

    def _on_deleted(self, frame: Frame) -> list[object]:
        op = self.op
        assert op is not None
        reason = frame.u8(Element.REASON)
        if reason not in (Reason.OK, Reason.NO_ACTION):  # NO_ACTION: the phone had no LSC
            return self._fail(f"phone refused to delete the LSC (reason {reason})",
                              f"phone refused the delete (reason {reason})")
        return self._ask(CompletionReported(op, "deleted", None))

    def completion_recorded(self, now: float | None = None) -> list[object]:
        self._answered(CompletionReported, now)
        return self._end(Reason.OK)

    def decision_failed(self, why: str, now: float | None = None) -> list[object]:
        """Whatever was asked could not be decided or recorded: end with reason 7, saying why."""
        request = self._answered(object, now)
        what = {OperationLookupRequested: "look-up", AuthStringCheckRequested: "auth string check",
                DeviceCertificateCheckRequested: "certificate check", IssuanceRequested: "issuance",
                CsrReceived: "CSR not kept", CompletionReported: "not recorded"}.get(type(request), "decision")
        return self._end(Reason.INVALID_ELEMENT, f"{what}: {why}")

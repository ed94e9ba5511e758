"""The phone's half of one CAPF session, sans-IO: bytes and time in, events and bytes out.

    session = CapfPhoneSession(credentials, now=t)
    events = session.receive_data(data, now)   # raises CapfProtocolError on a bad server
    out = session.data_to_send()

A phone decides what to prove from its own configuration (`PhoneCredentials.auth_mode`, the
`capfAuthMode` of its configuration file) and what it holds — never from the auth type the
server names, since some servers always send 0. With an authentication string it sends the
password; with a certificate mode it sends its LSC (if it holds one and the mode allows) or its
MIC with both signatures (`ccmsec.wire.capf.auth`); with nothing to prove it still sends a
password element, empty.

One decision is the caller's: generating a key can take seconds (RSA-4096), so a key-generate
request for a key the phone does not already hold returns `KeyGenerationRequested` (the
"request in progress" frame is queued at once) and the caller answers `key_generated(key)`.
Everything else is answered inline. `deadline` / `tick(now)` bound how long the phone waits for
the server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from ccmsec.domain import CapfAuthMode, CertificateKind

from .auth import sign_auth
from .csr import build_csr
from .frames import (
    PROTOCOL_VERSION, CapfProtocolError, CertType, Command, Element, Frame, FrameReader, Reason,
    decode_retry_delay, encode_certificate_element, encode_cstring, encode_frame, u8,
)
from .keys import KeySpec, spki_der
from .server import SessionEnded

@dataclass
class PhoneCredentials:
    """What a phone holds. The MIC is fixed at manufacture (CERT-1); CAPF only touches the LSC."""

    device_name: str
    mic_cert: x509.Certificate | None = None
    mic_key: object | None = None
    lsc_cert: x509.Certificate | None = None
    lsc_key: object | None = None
    auth_string: str | None = None
    # How this phone authenticates to CAPF: its configuration file's capfAuthMode.
    auth_mode: CapfAuthMode = CapfAuthMode.NULL
    # The CAPF certificate from the CTL: when set, a stored LSC must be signed by it.
    capf_certificate: x509.Certificate | None = None
    # A key generated for a pending install, kept until its certificate is stored so a
    # reconnect can present the same key.
    pending_key: object | None = None
    # Offline CA: further issuers a stored LSC may come from (the third-party CA certificate).
    lsc_issuers: Sequence[x509.Certificate] = ()

    def __setattr__(self, name: str, value) -> None:
        if name == "auth_mode":  # a member or any of its spellings; DomainError otherwise
            value = CapfAuthMode.parse(value)
        super().__setattr__(name, value)

    def authentication(self) -> tuple[CertType, x509.Certificate, object] | None:
        """The certificate this phone proves itself with, or None (password / nothing).
        CERT-2: its LSC before its MIC when the mode allows both."""
        accepted = self.auth_mode.accepted_certificates
        if CertificateKind.LSC in accepted and self.lsc_cert is not None:
            return CertType.LSC, self.lsc_cert, self.lsc_key
        if CertificateKind.MIC in accepted and self.mic_cert is not None:
            return CertType.MIC, self.mic_cert, self.mic_key
        return None


@dataclass(frozen=True)
class KeyGenerationRequested:
    """Generate a private key of this kind → `key_generated(key)`."""
    spec: KeySpec


@dataclass(frozen=True)
class CertificateStored:
    certificate: x509.Certificate


@dataclass(frozen=True)
class CertificateDeleted:
    had_one: bool


@dataclass(frozen=True)
class CertificateSent:
    """Troubleshoot: the phone handed its certificate over."""
    cert_type: CertType


@dataclass(frozen=True)
class CsrSent:
    pass


@dataclass(frozen=True)
class RequestRefused:
    """The phone said no to a server request (reason 7 sent)."""
    command: Command
    why: str


class CapfPhoneSession:
    """One CAPF connection, phone side. `history` lists what happened, for logs and tests."""

    def __init__(self, phone: PhoneCredentials, *, timeout: float = 30.0):
        self.phone = phone
        self.session_id: int | None = None
        self.end_reason: int | None = None
        self.end_info: str | None = None   # the server's REASON_INFO text, when it sent one
        self.finished = False
        self.retry_after: int | None = None  # seconds, when the server said "retry later"
        self.history: list[str] = []
        self.pending: KeyGenerationRequested | None = None
        self.timeout = timeout
        self._reader = FrameReader()
        self._out = bytearray()
        self._deadline: float | None = None  # armed by start() (or the first data)

    # -- output, timers -------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    def start(self, now: float) -> None:
        """The connection is up: the server speaks first; the phone waits at most `timeout`."""
        if self._deadline is None:
            self._deadline = now + self.timeout

    @property
    def deadline(self) -> float | None:
        return None if self.finished else self._deadline

    def tick(self, now: float) -> list[object]:
        if self.finished or self._deadline is None or now < self._deadline:
            return []
        self.finished = True
        self.history.append("timeout")
        return [SessionEnded(None, "CAPF session took too long")]

    def _send(self, command: Command, elements=()) -> None:
        assert self.session_id is not None
        self._out += encode_frame(command, self.session_id, elements)

    # -- input --------------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float = 0.0) -> list[object]:
        """Frames from the server; raises CapfProtocolError on a bad server (the caller closes)."""
        if self.finished:
            return []
        self.start(now)
        events: list[object] = []
        for frame in self._reader.feed(data):
            if self.finished:
                break
            if self.pending is not None:
                raise CapfProtocolError(f"phone: {frame.command.name} while still generating its key")
            events += self.handle_frame(frame)
        return events

    def receive_eof(self, now: float = 0.0) -> list[object]:
        if self.finished:
            return []
        self._reader.at_eof()
        raise ConnectionError("CAPF server closed the connection before END_SESSION")

    def handle_frame(self, frame: Frame) -> list[object]:
        if self.finished:
            return []
        if self.session_id is None:
            # A server refusing every session (e.g. CAPF not activated, CHK-2) ends it at once.
            if frame.command not in (Command.AUTH_REQUEST, Command.END_SESSION):
                raise CapfProtocolError(f"phone: first frame must be AUTH_REQUEST, got {frame.command.name}")
            self.session_id = frame.session_id
        elif frame.session_id != self.session_id:
            raise CapfProtocolError(f"phone: session id changed to {frame.session_id}")
        handler = {
            Command.AUTH_REQUEST: self._on_auth_request,
            Command.KEY_GEN_REQUEST: self._on_key_gen,
            Command.STORE_CERT_REQUEST: self._on_store,
            Command.FETCH_CERT_REQUEST: self._on_fetch,
            Command.DELETE_CERT_REQUEST: self._on_delete,
            Command.END_SESSION: self._on_end,
            Command.SIGN_CERT_REQUEST: self._on_sign_request,
            Command.RETRY_LATER: self._on_retry_later,
        }.get(frame.command)
        if handler is None:
            raise CapfProtocolError(f"phone: unexpected {frame.command.name}")
        return handler(frame)

    def _on_end(self, frame: Frame) -> list[object]:
        self.finished = True
        self.end_reason = frame.u8(Element.REASON)
        if frame.has(Element.REASON_INFO):
            self.end_info = frame.raw(Element.REASON_INFO).rstrip(b"\x00").decode("utf-8", "replace")
        self.history.append(f"end:{self.end_reason}")
        return [SessionEnded(self.end_reason, self.end_info)]

    def _on_retry_later(self, frame: Frame) -> list[object]:
        # The operation waits for something outside the session (a third-party CA): the phone
        # keeps its pending key and connects again after the delay.
        self.finished = True
        self.retry_after = decode_retry_delay(frame.raw(Element.RETRY_DELAY))
        self.history.append(f"retry:{self.retry_after}")
        return [SessionEnded(None, None, self.retry_after)]

    def _refuse(self, command: Command, why: str) -> list[object]:
        self.history.append(f"refused:{why}")
        self._send(command, [(Element.REASON, u8(Reason.INVALID_ELEMENT))])
        return [RequestRefused(command, why)]

    def _on_auth_request(self, frame: Frame) -> list[object]:
        version = frame.u8(Element.VERSION)
        if version != PROTOCOL_VERSION:
            raise CapfProtocolError(f"phone: unsupported CAPF version {version}")
        p = self.phone
        elements: list[tuple[Element, bytes]] = [
            (Element.VERSION, u8(PROTOCOL_VERSION)),
            (Element.DEVICE_NAME, encode_cstring(p.device_name)),
        ]
        proof = p.authentication()
        if proof is not None:
            cert_type, cert, key = proof
            der = cert.public_bytes(serialization.Encoding.DER)
            elements += [(Element.CERT_TYPE, u8(cert_type)),
                         (Element.CERTIFICATE, encode_certificate_element(cert_type, der)),
                         *sign_auth(key, p.device_name, der)]
            self.history.append(f"auth:{cert_type.name}")
        else:
            # The authentication string when the configuration says so; otherwise the empty
            # password element a phone with nothing to prove still sends.
            text = (p.auth_string or "") if p.auth_mode is CapfAuthMode.STRING else ""
            elements.append((Element.PASSWORD, encode_cstring(text)))
            self.history.append("auth:string" if text else "auth:none")
        self._send(Command.AUTH_RESPONSE, elements)
        return []

    def _on_key_gen(self, frame: Frame) -> list[object]:
        spec = KeySpec.from_frame(frame)
        self._send(Command.REQUEST_IN_PROGRESS)
        key = self.phone.pending_key
        if key is not None and spec.matches(key.public_key()):  # type: ignore[attr-defined]
            return self._key_ready(key)
        self.pending = KeyGenerationRequested(spec)
        return [self.pending]

    def key_generated(self, private_key, now: float = 0.0) -> list[object]:
        if self.pending is None:
            raise RuntimeError("no key generation is waiting for a key")
        if not self.pending.spec.matches(private_key.public_key()):
            raise ValueError(f"the generated key is not the requested {self.pending.spec}")
        self.pending = None
        self.phone.pending_key = private_key
        return self._key_ready(private_key)

    def _key_ready(self, key) -> list[object]:
        self.history.append("keygen")
        self._send(Command.KEY_GEN_RESPONSE, [(Element.PUBLIC_KEY, spki_der(key.public_key()))])
        return []

    def _on_sign_request(self, frame: Frame) -> list[object]:
        p = self.phone
        subject = frame.text(Element.DEVICE_NAME)
        if subject != p.device_name:
            return self._refuse(Command.SIGN_CERT_RESPONSE, f"CSR subject {subject} is not this phone")
        if p.pending_key is None:
            return self._refuse(Command.SIGN_CERT_RESPONSE, "no generated key to sign a CSR with")
        self.history.append("csr")
        self._send(Command.SIGN_CERT_RESPONSE, [
            (Element.REASON, u8(Reason.OK)),
            (Element.CERTIFICATE, encode_certificate_element(CertType.LSC, build_csr(p.device_name, p.pending_key))),
        ])
        return [CsrSent()]

    def _on_store(self, frame: Frame) -> list[object]:
        p = self.phone
        cert_type, der = frame.certificate()
        if cert_type is not CertType.LSC or frame.u8(Element.CERT_TYPE) != CertType.LSC:
            return self._refuse(Command.STORE_CERT_RESPONSE, "CERT-1: the MIC cannot be overwritten")
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            return self._refuse(Command.STORE_CERT_RESPONSE, "certificate is not valid DER")
        key = p.pending_key
        if key is None or spki_der(cert.public_key()) != spki_der(key.public_key()):  # type: ignore[attr-defined]
            return self._refuse(Command.STORE_CERT_RESPONSE, "certificate is not for the generated key")
        issuers = [c for c in (p.capf_certificate, *p.lsc_issuers) if c is not None]
        if issuers and not any(_issued_by(cert, ca) for ca in issuers):
            return self._refuse(Command.STORE_CERT_RESPONSE, "LSC not issued by CAPF nor a trusted LSC issuer")
        p.lsc_cert, p.lsc_key, p.pending_key = cert, key, None
        self.history.append("stored")
        self._send(Command.STORE_CERT_RESPONSE, [(Element.REASON, u8(Reason.OK))])
        return [CertificateStored(cert)]

    def _on_fetch(self, frame: Frame) -> list[object]:
        p = self.phone
        if p.lsc_cert is not None:
            cert_type, cert = CertType.LSC, p.lsc_cert
        elif p.mic_cert is not None:
            cert_type, cert = CertType.MIC, p.mic_cert
        else:
            return self._refuse(Command.FETCH_CERT_RESPONSE, "no certificate to fetch")
        der = cert.public_bytes(serialization.Encoding.DER)
        self.history.append(f"fetched:{cert_type.name}")
        self._send(Command.FETCH_CERT_RESPONSE, [
            (Element.REASON, u8(Reason.OK)),
            (Element.CERT_TYPE, u8(cert_type)),
            (Element.CERTIFICATE, encode_certificate_element(cert_type, der)),
        ])
        return [CertificateSent(cert_type)]

    def _on_delete(self, frame: Frame) -> list[object]:
        p = self.phone
        if frame.has(Element.CERT_TYPE) and frame.u8(Element.CERT_TYPE) == CertType.MIC:
            return self._refuse(Command.DELETE_CERT_RESPONSE, "CERT-1: the MIC cannot be deleted")
        had = p.lsc_cert is not None
        p.lsc_cert = p.lsc_key = None  # only ever the LSC; the MIC stays (CERT-1)
        self.history.append("deleted" if had else "nothing-to-delete")
        self._send(Command.DELETE_CERT_RESPONSE, [(Element.REASON, u8(Reason.OK if had else Reason.NO_ACTION))])
        return [CertificateDeleted(had)]


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False

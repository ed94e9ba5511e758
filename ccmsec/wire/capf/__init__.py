"""CAPF protocol (TLS, TCP 3804), sans-IO, one concept per module:

- `frames`  — frame and element codec, value codecs, the streaming reader;
- `keys`    — the key a server asks for (`KeySpec`), public-key helpers;
- `auth`    — certificate authentication signatures in the convention real phones use;
- `csr`     — the offline-CA sign-certificate extension's PKCS#10 request;
- `server`  — the server session state machine and its events / decisions;
- `phone`   — the phone session state machine and what a phone holds.

Both sessions have the shape of every protocol in `ccmsec.wire`: `receive_data(data, now)` →
events, `data_to_send()`, decisions answered by methods, timers owned by the session
(`deadline`, `tick(now)`). The asyncio adapters are in `ccmsec.aio.capf`.
"""

from .auth import CapfAuthError, auth_payload, sign_auth, verify_auth_signatures
from .csr import build_csr, decode_csr
from .frames import (
    HEADER_SIZE, MAX_BODY, MAX_ELEMENTS, MAX_NAME, MAX_PASSWORD, MAX_REASON_INFO, MAX_RETRY_DELAY, PROTOCOL_ID,
    PROTOCOL_VERSION, AuthType, CapfProtocolError, CertType, Command, Curve, Element, Frame, FrameReader,
    HashAlgorithm, KeyType, Reason, decode_certificate_element, decode_cstring, decode_frame, decode_retry_delay,
    decode_signed_data_sha2, encode_certificate_element, encode_cstring, encode_frame, encode_retry_delay,
    encode_signed_data_sha2,
)
from .keys import KeySpec, load_public_key, spki_der
from .phone import (
    CapfPhoneSession, CertificateDeleted, CertificateSent, CertificateStored, CsrSent,
    KeyGenerationRequested, PhoneCredentials, RequestRefused,
)
from .server import (
    DECISIONS, AuthCheck, AuthenticationRefused,
    AuthStringCheckRequested, CapfServerSession, CompletionReported, CsrReceived, DeviceCertificateCheckRequested,
    IssuanceRequested, OperationFailed, OperationLookup, OperationLookupRequested, ScheduledOperation,
    ServerState, SessionEnded,
)

__all__ = [name for name in dir() if not name.startswith("_")]

"""SRTP (RFC 3711) through libsrtp (`pylibsrtp`): suites, key material, and the refusal reasons.

No cryptography is done here: libsrtp derives the session keys from the master key and salt,
encrypts, authenticates and keeps the replay window. This module only chooses the libsrtp
profile, checks key sizes and turns libsrtp's errors into a reason a counter can name.

Suite numbers are the SCCP encryption-info algorithm ids and the `ccmsec.v1.CryptoSuite`
numbers; suite names are the RFC 4568 / RFC 7714 SDP names, so no conversion map is needed.
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass, field

import pylibsrtp
# libsrtp's own functions, as pylibsrtp binds them: the relay protects and unprotects in place in a
# preallocated buffer (`PacketBuffer`) instead of through `Session`'s copy in and copy out.
from pylibsrtp._binding import ffi as _ffi, lib as _lib

# A replay window larger than libsrtp's default 128 tolerates the reordering a busy host causes.
REPLAY_WINDOW = 1024


class SrtpSuite(enum.IntEnum):
    AES_CM_128_HMAC_SHA1_32 = 1
    AES_CM_128_HMAC_SHA1_80 = 2
    AEAD_AES_128_GCM = 5
    AEAD_AES_256_GCM = 6

    @property
    def key_length(self) -> int:
        return 32 if self is SrtpSuite.AEAD_AES_256_GCM else 16

    @property
    def salt_length(self) -> int:
        return 12 if self.is_aead else 14

    @property
    def is_aead(self) -> bool:
        return self in (SrtpSuite.AEAD_AES_128_GCM, SrtpSuite.AEAD_AES_256_GCM)

    @property
    def tag_length(self) -> int:
        return {1: 4, 2: 10}.get(int(self), 16)

    @property
    def libsrtp_profile(self) -> int:
        return {
            SrtpSuite.AES_CM_128_HMAC_SHA1_32: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
            SrtpSuite.AES_CM_128_HMAC_SHA1_80: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
            SrtpSuite.AEAD_AES_128_GCM: pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
            SrtpSuite.AEAD_AES_256_GCM: pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
        }[self]

    @classmethod
    def parse(cls, value: "int | str | SrtpSuite") -> "SrtpSuite":
        """From a wire/proto number or an SDP name; a clear ValueError otherwise."""
        try:
            return cls[value] if isinstance(value, str) else cls(value)
        except (KeyError, ValueError):
            names = ", ".join(s.name for s in cls)
            raise ValueError(f"unsupported SRTP suite {value!r} (supported: {names})") from None


DEFAULT_SUITE = SrtpSuite.AES_CM_128_HMAC_SHA1_80
# Preference when both ends support several: the default first (every SRTP phone has it).
PREFERENCE = (SrtpSuite.AES_CM_128_HMAC_SHA1_80, SrtpSuite.AEAD_AES_128_GCM,
              SrtpSuite.AEAD_AES_256_GCM, SrtpSuite.AES_CM_128_HMAC_SHA1_32)


def common_suite(*supported: "set[SrtpSuite] | frozenset[SrtpSuite]") -> SrtpSuite | None:
    """The preferred suite every end supports; None when they share none."""
    shared = set(PREFERENCE)
    for suites in supported:
        shared &= set(suites)
    return next((s for s in PREFERENCE if s in shared), None)


@dataclass(frozen=True)
class MasterKey:
    """One set of SRTP master values (ENC-4). Key and salt stay out of `repr` (ENC-5)."""

    suite: SrtpSuite
    key: bytes = field(repr=False)
    salt: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) != self.suite.key_length or len(self.salt) != self.suite.salt_length:
            raise ValueError(f"{self.suite.name} needs a {self.suite.key_length}-byte master key and a "
                             f"{self.suite.salt_length}-byte salt, got {len(self.key)} and {len(self.salt)}")

    @classmethod
    def generate(cls, suite: SrtpSuite = DEFAULT_SUITE) -> "MasterKey":
        """Fresh master values from the operating system's CSPRNG."""
        return cls(suite, secrets.token_bytes(suite.key_length), secrets.token_bytes(suite.salt_length))

    @property
    def key_and_salt(self) -> bytes:
        return self.key + self.salt


class Refusal(str, enum.Enum):
    AUTHENTICATION = "authentication"   # tag check failed: tampered, wrong key, not SRTP
    REPLAY = "replay"                   # index already seen or too old for the window
    MALFORMED = "malformed"             # not even a parsable (S)RTP packet


class SrtpRefused(Exception):
    def __init__(self, reason: Refusal, detail: str):
        super().__init__(f"SRTP packet refused ({reason.value}): {detail}")
        self.reason = reason


def _reason(error: "pylibsrtp.Error | str") -> Refusal:
    text = str(error)
    if text.startswith("replay check failed") or "too old" in text:
        return Refusal.REPLAY
    if text.startswith("authentication failure") or text.startswith("cipher failure"):
        return Refusal.AUTHENTICATION
    return Refusal.MALFORMED


# libsrtp's status codes, indexed as pylibsrtp names them, mapped the same way as its errors
_ERRORS = tuple(pylibsrtp.ERRORS)
_REASON_BY_STATUS = tuple(_reason(text) for text in _ERRORS)
# The largest datagram an SRTP packet may be (pylibsrtp's own buffer is 1500 bytes too).
MAX_SRTP_PACKET = 1500


# libsrtp's in-place calls for the relay's per-packet path (status 0 = done; see `refusal`)
libsrtp_protect = _lib.srtp_protect
libsrtp_unprotect = _lib.srtp_unprotect


def refusal(status: int) -> SrtpRefused:
    """The refusal for a failed libsrtp status, with the reason `unprotect` would give."""
    return _refusal(status)


def _refusal(status: int) -> SrtpRefused:
    if 0 <= status < len(_ERRORS):
        return SrtpRefused(_REASON_BY_STATUS[status], _ERRORS[status])
    return SrtpRefused(Refusal.MALFORMED, f"libsrtp status {status}")


class PacketBuffer:
    """One datagram's bytes in C memory that libsrtp protects and unprotects in place: a relay
    receives into `receive_view`, decrypts, rewrites the header and encrypts without making a
    Python object per step. One per event loop (packets are handled one at a time)."""

    __slots__ = ("cdata", "view", "receive_view", "length_p")
    SIZE = 2048   # a packet of MAX_SRTP_PACKET plus libsrtp's largest trailer (tag and MKI, 144)

    def __init__(self) -> None:
        self.cdata = _ffi.new("unsigned char[]", self.SIZE)
        self.view = memoryview(_ffi.buffer(self.cdata))
        # one byte more than the largest packet: a longer datagram is cut there and refused
        self.receive_view = self.view[:MAX_SRTP_PACKET + 1]
        self.length_p = _ffi.new("int *")


class SrtpSender:
    """Protects outgoing RTP with one set of master values (any SSRC we send)."""

    def __init__(self, master: MasterKey):
        self.suite = master.suite
        policy = pylibsrtp.Policy(master.key_and_salt, pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                                  srtp_profile=master.suite.libsrtp_profile)
        self._session = pylibsrtp.Session(policy)
        self.protect = self._session.protect  # bound once: this is the per-packet path
        self._ctx = self._session._srtp[0]    # the libsrtp session `protect_in_place` uses

    def protect_in_place(self, packet: PacketBuffer, length: int) -> int:
        """Encrypt and tag the RTP packet in `packet[:length]`; returns the SRTP length."""
        length_p = packet.length_p
        length_p[0] = length
        status = _lib.srtp_protect(self._ctx, packet.cdata, length_p)
        if status:
            raise _refusal(status)
        return length_p[0]


class SrtpReceiver:
    """Authenticates, replay-checks and decrypts incoming SRTP with one set of master values."""

    def __init__(self, master: MasterKey, *, window: int = REPLAY_WINDOW):
        self.suite = master.suite
        policy = pylibsrtp.Policy(master.key_and_salt, pylibsrtp.Policy.SSRC_ANY_INBOUND,
                                  srtp_profile=master.suite.libsrtp_profile)
        policy.window_size = window
        self._session = pylibsrtp.Session(policy)
        self._ctx = self._session._srtp[0]
        self._shortest = 12 + self.suite.tag_length   # a header and the tag

    def unprotect(self, srtp: bytes) -> bytes:
        if len(srtp) < self._shortest:
            raise SrtpRefused(Refusal.MALFORMED, f"{len(srtp)} bytes cannot hold a header and a tag")
        try:
            return self._session.unprotect(srtp)
        except pylibsrtp.Error as exc:
            raise SrtpRefused(_reason(exc), str(exc)) from None
        except ValueError as exc:  # longer than libsrtp's buffer
            raise SrtpRefused(Refusal.MALFORMED, str(exc)) from None

    def unprotect_in_place(self, packet: PacketBuffer, length: int) -> int:
        """`unprotect` of the datagram in `packet[:length]`, decrypted where it lies; returns the
        RTP length. Refuses exactly as `unprotect` does (same reasons, same counters upstream)."""
        if length < self._shortest:
            raise SrtpRefused(Refusal.MALFORMED, f"{length} bytes cannot hold a header and a tag")
        if length > MAX_SRTP_PACKET:
            raise SrtpRefused(Refusal.MALFORMED, f"datagram longer than {MAX_SRTP_PACKET} bytes")
        length_p = packet.length_p
        length_p[0] = length
        status = _lib.srtp_unprotect(self._ctx, packet.cdata, length_p)
        if status:
            raise _refusal(status)
        return length_p[0]

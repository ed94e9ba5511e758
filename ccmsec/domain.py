"""The domain vocabulary: one enum per concept, with every spelling of it and the converters.

Every layer spells the same concepts differently — the command line and the JSON API say
"non-secure", the database stores the same text, the protobuf enums number it (`NON_SECURE = 1`),
`SEP<MAC>.cnf.xml` numbers it again (`deviceSecurityMode` 1), the CAPF and SCCP wire formats have
their own codes. This module is the one place where those spellings meet; no other module keeps a
conversion table.

Each concept is a `str` enum whose value is its canonical text (what the CLI accepts and the
database stores), so a member compares equal to that text. Per member:

- `X.parse(text)` — tolerant: any case, `_`/space for `-`, the protobuf constant name
  (`"CLUSTER_MIXED"`) and a few aliases; anything else raises `DomainError` naming the concept
  and the accepted spellings (a ValueError: callers turn it into their 422 / INVALID_ARGUMENT).
- `x.to_proto()` / `X.from_proto(n)`, `x.to_xml()` / `X.from_xml(n)`, `x.to_wire()` /
  `X.from_wire(n)` where the concept has that spelling. `from_*` refuse unknown numbers with a
  `DomainError` too; `from_proto(0, default=...)` maps the proto3 "unspecified" zero.
- `X.choices()` — the canonical texts in order (argparse `choices`, CHECK constraints, schemas).
"""

from __future__ import annotations

import enum
from typing import Any, Iterable, TypeVar

from ccmsec_proto import capf_pb2, common_pb2

W = TypeVar("W", bound="Word")

_MAX_SHOWN = 40  # characters of a bad value quoted back in an error


class DomainError(ValueError):
    """A value that is not a spelling of the concept; the message names the accepted ones."""


def _fold(text: str) -> str:
    return "-".join(text.strip().lower().replace("_", " ").replace("-", " ").split())


class Word(str, enum.Enum):
    """Base of every vocabulary enum: parsing and the per-spelling tables (filled below)."""

    def __str__(self) -> str:  # f"{mode}" prints the canonical text, not "DeviceSecurityMode.X"
        return self.value

    @classmethod
    def concept(cls) -> str:
        return _CONCEPTS[cls]

    @classmethod
    def choices(cls) -> tuple[str, ...]:
        return tuple(m.value for m in cls)

    @classmethod
    def parse(cls: type[W], value: Any) -> W:
        if isinstance(value, cls):
            return value
        if isinstance(value, str) and len(value) <= 64:
            found = _lookup(cls).get(_fold(value))
            if found is not None:
                return found
        shown = repr(value) if not isinstance(value, str) else repr(value[:_MAX_SHOWN])
        raise DomainError(f"{shown} is not a {cls.concept()}: use one of {', '.join(cls.choices())}")

    @classmethod
    def parse_optional(cls: type[W], value: Any) -> W | None:
        """None and "" stay None; anything else must parse."""
        return None if value in (None, "") else cls.parse(value)

    # --- numbered spellings -----------------------------------------------------------------
    def _number(self, kind: str) -> int:
        table = _NUMBERS.get((type(self), kind))
        if table is None:
            raise DomainError(f"a {self.concept()} has no {kind} spelling")
        return table[self]

    @classmethod
    def _from_number(cls: type[W], kind: str, number: Any, default: W | None) -> W:
        table = _NUMBERS.get((cls, kind))
        if table is None:
            raise DomainError(f"a {cls.concept()} has no {kind} spelling")
        if isinstance(number, int) and not isinstance(number, bool):
            for member, n in table.items():
                if n == number:
                    return member
            if number == 0 and default is not None:
                return default
        raise DomainError(f"{number!r} is not a {kind} {cls.concept()} number "
                          f"({', '.join(f'{n}={m.value}' for m, n in table.items())})")

    def to_proto(self) -> int:
        return self._number("proto")

    @classmethod
    def from_proto(cls: type[W], number: int, *, default: W | None = None) -> W:
        """The member for a protobuf enum number; 0 (UNSPECIFIED) gives `default` when given."""
        return cls._from_number("proto", number, default)

    @classmethod
    def proto_text(cls, number: int, unknown: str = "?") -> str:
        """The canonical text of a proto number, for display: `unknown` when it is not one."""
        try:
            return cls.from_proto(number).value
        except DomainError:
            return unknown

    def to_xml(self) -> int:
        return self._number("xml")

    @classmethod
    def from_xml(cls: type[W], number: int) -> W:
        return cls._from_number("xml", number, None)

    def to_wire(self) -> int:
        return self._number("wire")

    @classmethod
    def from_wire(cls: type[W], number: int) -> W:
        return cls._from_number("wire", number, None)


# ------------------------------------------------------------------------------------------------
# The concepts


class DeviceSecurityMode(Word):
    """A phone's configured security mode (DEV-1)."""

    NON_SECURE = "non-secure"          # SCCP on TCP 2000
    AUTHENTICATED = "authenticated"    # TLS with a NULL cipher: integrity, no privacy (AUTH-7)
    ENCRYPTED = "encrypted"            # TLS with AES signalling and SRTP media (ENC-1)

    @property
    def is_secure(self) -> bool:
        return self is not DeviceSecurityMode.NON_SECURE

    def effective(self, cluster: "ClusterMode | str") -> "DeviceSecurityMode":
        """MODE-3: in a non-secure cluster every device runs non-secure, whatever it is set to."""
        if ClusterMode.parse(cluster) is ClusterMode.MIXED:
            return self
        return DeviceSecurityMode.NON_SECURE

    @property
    def call_status(self) -> "CallSecurityStatus":
        """The call security status a device in this mode can give a call at best (CALL-1)."""
        return {DeviceSecurityMode.NON_SECURE: CallSecurityStatus.NOT_AUTHENTICATED,
                DeviceSecurityMode.AUTHENTICATED: CallSecurityStatus.AUTHENTICATED,
                DeviceSecurityMode.ENCRYPTED: CallSecurityStatus.ENCRYPTED}[self]


class ClusterMode(Word):
    """The cluster security mode (MODE-1..3): non-secure until the CTL client sets mixed."""

    NON_SECURE = "non-secure"
    MIXED = "mixed"


class ServiceRole(Word):
    """The roles of the cluster; a service certificate states one (one process per role)."""

    CTL_PROVIDER = "ctl-provider"
    CAPF = "capf"
    TFTP_SIGNER = "tftp-signer"
    CALLMANAGER = "callmanager"
    KEYMANAGER = "keymanager"
    SRTP_GATEWAY = "srtp-gateway"
    SRST = "srst"
    PHONE_SIM = "phone-sim"

    @property
    def package(self) -> str:
        """The Python package of the service (`python -m <package>`)."""
        return "ccmsec_" + self.value.replace("-", "_")

    @property
    def executable(self) -> str:
        return f"ccmsec-{self.value}"


class CapfOperation(Word):
    """What CAPF does with a phone's LSC; the cnf.xml `capfOperation/operation` text too."""

    INSTALL = "install"
    UPGRADE = "upgrade"
    DELETE = "delete"
    TROUBLESHOOT = "troubleshoot"   # fetch the LSC (or MIC) the phone holds

    @property
    def issues_certificate(self) -> bool:
        return self in (CapfOperation.INSTALL, CapfOperation.UPGRADE)


class CertificateKind(Word):
    """A phone's own certificate: the locally significant one CAPF issued, or the
    manufacturer-installed one (CERT-1, CERT-2)."""

    LSC = "LSC"
    MIC = "MIC"


class CapfAuthMode(Word):
    """How a phone proves itself to CAPF before an operation (CAPF-2)."""

    STRING = "string"               # the administrator's one-time digits, keyed in on the phone
    NULL = "null"                   # no authentication
    LSC = "lsc"                     # the phone's existing LSC
    MIC = "mic"                     # the phone's manufacturer certificate
    LSC_THEN_MIC = "lsc-then-mic"   # its LSC when it has one, else its MIC

    @property
    def accepted_certificates(self) -> frozenset[CertificateKind]:
        """The certificates a certificate-based mode accepts (empty for string and null)."""
        return {CapfAuthMode.LSC: frozenset({CertificateKind.LSC}),
                CapfAuthMode.MIC: frozenset({CertificateKind.MIC}),
                CapfAuthMode.LSC_THEN_MIC: frozenset({CertificateKind.LSC, CertificateKind.MIC}),
                }.get(self, frozenset())


class CallSecurityStatus(Word):
    """The security of one call as the phones show it (SCCP `callSecurityStatus`, CALL-1);
    ordered from weakest to strongest: a call is as secure as its weakest leg."""

    UNKNOWN = "unknown"
    NOT_AUTHENTICATED = "not-authenticated"
    AUTHENTICATED = "authenticated"
    ENCRYPTED = "encrypted"

    @property
    def rank(self) -> int:
        return self.to_wire()

    @classmethod
    def weakest(cls, statuses: Iterable["CallSecurityStatus | str"]) -> "CallSecurityStatus":
        parsed = [cls.parse(s) for s in statuses]
        if not parsed:
            raise DomainError("a call without legs has no security status")
        return min(parsed, key=lambda s: s.rank)


# ------------------------------------------------------------------------------------------------
# The spellings (tables are filled once, here, and nowhere else)

_CONCEPTS: dict[type, str] = {
    DeviceSecurityMode: "device security mode",
    ClusterMode: "cluster security mode",
    ServiceRole: "service role",
    CapfOperation: "CAPF operation",
    CapfAuthMode: "CAPF authentication mode",
    CertificateKind: "certificate kind",
    CallSecurityStatus: "call security status",
}

_NUMBERS: dict[tuple[type, str], dict[Word, int]] = {
    (DeviceSecurityMode, "proto"): {
        DeviceSecurityMode.NON_SECURE: common_pb2.NON_SECURE,
        DeviceSecurityMode.AUTHENTICATED: common_pb2.AUTHENTICATED,
        DeviceSecurityMode.ENCRYPTED: common_pb2.ENCRYPTED},
    # SEP<MAC>.cnf.xml <deviceSecurityMode>
    (DeviceSecurityMode, "xml"): {
        DeviceSecurityMode.NON_SECURE: 1, DeviceSecurityMode.AUTHENTICATED: 2,
        DeviceSecurityMode.ENCRYPTED: 3},
    (ClusterMode, "proto"): {
        ClusterMode.NON_SECURE: common_pb2.CLUSTER_NON_SECURE,
        ClusterMode.MIXED: common_pb2.CLUSTER_MIXED},
    (CapfOperation, "proto"): {
        CapfOperation.INSTALL: capf_pb2.CAPF_INSTALL, CapfOperation.UPGRADE: capf_pb2.CAPF_UPGRADE,
        CapfOperation.DELETE: capf_pb2.CAPF_DELETE,
        CapfOperation.TROUBLESHOOT: capf_pb2.CAPF_TROUBLESHOOT},
    (CapfAuthMode, "proto"): {
        CapfAuthMode.STRING: capf_pb2.CAPF_AUTH_STRING, CapfAuthMode.NULL: capf_pb2.CAPF_AUTH_NULL,
        CapfAuthMode.LSC_THEN_MIC: capf_pb2.CAPF_AUTH_LSC_THEN_MIC,
        CapfAuthMode.MIC: capf_pb2.CAPF_AUTH_MIC, CapfAuthMode.LSC: capf_pb2.CAPF_AUTH_LSC},
    # cnf.xml <capfAuthMode>: the file has no "LSC only" value, so lsc is written as 3 (LSC, else
    # MIC) and 3 reads back as lsc-then-mic.
    (CapfAuthMode, "xml"): {
        CapfAuthMode.STRING: 1, CapfAuthMode.NULL: 2, CapfAuthMode.LSC_THEN_MIC: 3,
        CapfAuthMode.MIC: 4, CapfAuthMode.LSC: 3},
    # CAPF protocol auth type element (ccmsec.wire.capf.AuthType): what the server asks for.
    (CapfAuthMode, "wire"): {
        CapfAuthMode.STRING: 1, CapfAuthMode.NULL: 2, CapfAuthMode.LSC_THEN_MIC: 3,
        CapfAuthMode.MIC: 4, CapfAuthMode.LSC: 3},
    (CertificateKind, "proto"): {
        CertificateKind.LSC: common_pb2.ROLE_LSC, CertificateKind.MIC: common_pb2.ROLE_MIC},
    # CAPF protocol certificate type element (ccmsec.wire.capf.CertType).
    (CertificateKind, "wire"): {CertificateKind.LSC: 1, CertificateKind.MIC: 2},
    # SCCP CallInfo / CallState callSecurityStatus.
    (CallSecurityStatus, "wire"): {
        CallSecurityStatus.UNKNOWN: 0, CallSecurityStatus.NOT_AUTHENTICATED: 1,
        CallSecurityStatus.AUTHENTICATED: 2, CallSecurityStatus.ENCRYPTED: 3},
}

# Extra accepted spellings (folded) beyond the value and the protobuf constant name.
_ALIASES: dict[type, dict[str, Word]] = {
    DeviceSecurityMode: {"nonsecure": DeviceSecurityMode.NON_SECURE,
                         "unsecure": DeviceSecurityMode.NON_SECURE,
                         "auth": DeviceSecurityMode.AUTHENTICATED,
                         "encrypt": DeviceSecurityMode.ENCRYPTED},
    ClusterMode: {"nonsecure": ClusterMode.NON_SECURE, "unsecure": ClusterMode.NON_SECURE},
    CallSecurityStatus: {"non-secure": CallSecurityStatus.NOT_AUTHENTICATED,
                         "nonsecure": CallSecurityStatus.NOT_AUTHENTICATED},
    CapfAuthMode: {"none": CapfAuthMode.NULL, "auth-string": CapfAuthMode.STRING,
                   "by-authentication-string": CapfAuthMode.STRING,
                   "by-null-string": CapfAuthMode.NULL,
                   "by-existing-certificate": CapfAuthMode.LSC_THEN_MIC},
}

_PROTO_ENUMS: dict[type, Any] = {
    DeviceSecurityMode: common_pb2.DeviceSecurityMode,
    ClusterMode: common_pb2.ClusterSecurityMode,
    CapfOperation: capf_pb2.CapfOperation,
    CapfAuthMode: capf_pb2.CapfAuthMode,
    CertificateKind: common_pb2.CertificateRole,
}

_LOOKUPS: dict[type, dict[str, Word]] = {}


def _lookup(cls: type[W]) -> dict[str, W]:
    table = _LOOKUPS.get(cls)
    if table is None:
        table = {}
        proto = _PROTO_ENUMS.get(cls)
        numbers = _NUMBERS.get((cls, "proto"), {})
        for member in cls:
            table[_fold(member.value)] = member
            table[_fold(member.name)] = member
            if proto is not None and member in numbers:
                table[_fold(proto.Name(numbers[member]))] = member
        table.update(_ALIASES.get(cls, {}))
        _LOOKUPS[cls] = table
    return table  # type: ignore[return-value]


__all__ = [
    "CallSecurityStatus", "CapfAuthMode", "CapfOperation", "CertificateKind", "ClusterMode",
    "DeviceSecurityMode", "DomainError", "ServiceRole", "Word",
]

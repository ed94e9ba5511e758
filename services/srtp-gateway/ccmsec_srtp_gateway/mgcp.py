"""MGCP vocabulary (RFC 3435) the gateway's control API keeps: endpoint names, connection modes,
call and connection identifiers, and return codes — pure, no I/O.

An endpoint name is `<local name>@<domain>`; the local name is hierarchical, `/`-separated terms
(`aaln/S1/SU0/1`: analogue line 1 of sub-unit 0 of slot 1). The last term may be a wildcard:
`$` any one endpoint, `*` all of them. Names compare case-insensitively.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from ccmsec.wire import mgcp as wire
from ccmsec.wire.mgcp import LocalOptions

MAX_ENDPOINT_NAME = 255
_TERM = re.compile(r"^[A-Za-z0-9_.\-]{1,32}$")
_DOMAIN = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*$")
_HEX_ID = re.compile(r"^[0-9A-Fa-f]{1,32}$")
MAX_NUMBER = 32
_NUMBER = re.compile(r"[0-9*#]{0,%d}" % MAX_NUMBER)


class MgcpError(Exception):
    """A refused command: the MGCP return code and its text (`500 endpoint unknown: …`)."""

    TRANSIENT = 400
    UNKNOWN_ENDPOINT = 500
    NO_RESOURCES = 502
    PROTOCOL_ERROR = 510
    BAD_CONNECTION_ID = 515
    UNKNOWN_CALL_ID = 516
    BAD_MODE = 517
    LCO_INCONSISTENT = 524
    LCO_UNSUPPORTED = 532
    CODEC_NEGOTIATION = 534
    NO_REMOTE_DESCRIPTOR = 527

    def __init__(self, code: int, text: str):
        super().__init__(f"{code} {text}")
        self.code = code


class ConnectionMode(enum.IntEnum):
    """Values are the `ccmsec.v1.ConnectionMode` numbers; names are MGCP's (and SDP's)."""

    SENDRECV = 1
    RECVONLY = 2
    SENDONLY = 3
    INACTIVE = 4

    @property
    def sends(self) -> bool:
        return self in (ConnectionMode.SENDRECV, ConnectionMode.SENDONLY)

    @property
    def receives(self) -> bool:
        return self in (ConnectionMode.SENDRECV, ConnectionMode.RECVONLY)

    @property
    def sdp_direction(self) -> str:
        return self.name.lower()

    @classmethod
    def from_proto(cls, value: int, default: "ConnectionMode | None") -> "ConnectionMode | None":
        if value == 0:
            return default
        try:
            return cls(value)
        except ValueError:
            raise MgcpError(MgcpError.BAD_MODE, f"unsupported connection mode {value} "
                            "(sendrecv, recvonly, sendonly, inactive)") from None


@dataclass(frozen=True)
class EndpointName:
    terms: tuple[str, ...]
    domain: str

    @property
    def wildcard(self) -> str | None:
        last = self.terms[-1]
        return last if last in ("$", "*") else None

    @property
    def key(self) -> str:
        return str(self).lower()

    def __str__(self) -> str:
        return "/".join(self.terms) + "@" + self.domain

    def matches(self, other: "EndpointName") -> bool:
        """Does this (possibly wildcarded) name cover the concrete endpoint `other`?"""
        if self.domain.lower() != other.domain.lower():
            return False
        if len(self.terms) == 1 and self.wildcard:   # "*@gw1", "$@gw1": any endpoint of the gateway
            return True
        if len(self.terms) != len(other.terms):
            return False
        head_self = [t.lower() for t in self.terms[:-1]]
        if head_self != [t.lower() for t in other.terms[:-1]]:
            return False
        return self.wildcard is not None or self.terms[-1].lower() == other.terms[-1].lower()


def parse_endpoint(text: str) -> EndpointName:
    if not text:
        raise MgcpError(MgcpError.PROTOCOL_ERROR, "endpoint name missing")
    if len(text) > MAX_ENDPOINT_NAME:
        raise MgcpError(MgcpError.PROTOCOL_ERROR, f"endpoint name longer than {MAX_ENDPOINT_NAME} characters")
    local, at, domain = text.partition("@")
    if not at or not local or not domain:
        raise MgcpError(MgcpError.PROTOCOL_ERROR, f"endpoint name {text!r} is not <local name>@<gateway>")
    terms = tuple(local.split("/"))
    for i, term in enumerate(terms):
        if term in ("$", "*"):
            if i != len(terms) - 1:
                raise MgcpError(MgcpError.PROTOCOL_ERROR, f"wildcard {term!r} only as the last term")
        elif not _TERM.fullmatch(term):
            raise MgcpError(MgcpError.PROTOCOL_ERROR, f"bad term {term!r} in endpoint name {text!r}")
    if not (_DOMAIN.fullmatch(domain) or re.fullmatch(r"^\[\d{1,3}(\.\d{1,3}){3}\]$", domain)):
        raise MgcpError(MgcpError.PROTOCOL_ERROR, f"bad gateway domain {domain!r}")
    return EndpointName(terms, domain)


def check_number(number: str) -> str:
    """A dialled number: digits, `*` and `#`, at most MAX_NUMBER (never echoed back unbounded)."""
    if not _NUMBER.fullmatch(number or ""):
        raise MgcpError(MgcpError.PROTOCOL_ERROR, f"dialled number must be at most {MAX_NUMBER} "
                        "digits (0-9, *, #)")
    return number or ""


def parse_local_options(text: str) -> LocalOptions:
    """LocalConnectionOptions (`L:`, `ccmsec.wire.mgcp`), refusals as MGCP errors."""
    try:
        return wire.parse_local_options(text)
    except wire.LocalOptionsError as exc:
        raise MgcpError(exc.code, str(exc)) from None


def check_call_id(call_id: str) -> str:
    if not _HEX_ID.fullmatch(call_id or ""):   # fullmatch: `$` would let a final newline in
        raise MgcpError(MgcpError.PROTOCOL_ERROR, "call id must be 1..32 hexadecimal characters")
    return call_id.upper()

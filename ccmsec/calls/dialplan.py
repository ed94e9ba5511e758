"""Digits to a destination: directory numbers and route patterns (trunks).

`DialPlan.match(digits)` says whether the digits already name a destination, could still become
one (wait for more), or never will (unknown number). Patterns use `X` for any digit and are fixed
length (`8XXX` = four digits starting with 8), as route patterns of the era were.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class MatchKind(enum.Enum):
    NONE = "none"            # no destination starts with these digits: unknown number
    PARTIAL = "partial"      # more digits needed
    COMPLETE = "complete"    # a destination, and no longer one shares the prefix: route now
    AMBIGUOUS = "ambiguous"  # a destination, but a longer one may follow: wait (or '#'/timeout)


@dataclass(frozen=True, slots=True)
class Match:
    kind: MatchKind
    dn: str = ""        # the directory number, when it is a line
    device: str = ""    # the device owning the pattern, when it is a route pattern


def _pattern_matches(pattern: str, digits: str) -> bool:
    return len(pattern) == len(digits) and all(p == "X" and d.isdigit() or p == d
                                               for p, d in zip(pattern, digits))


def _pattern_prefix(pattern: str, digits: str) -> bool:
    return len(digits) < len(pattern) and all(p == "X" and d.isdigit() or p == d
                                              for p, d in zip(pattern, digits))


class DialPlan:
    """Directory numbers (with a reference count of appearances) and route patterns."""

    __slots__ = ("_dns", "_prefixes", "_patterns")

    def __init__(self) -> None:
        self._dns: dict[str, int] = {}       # number -> appearances
        self._prefixes: dict[str, int] = {}  # proper prefix -> numbers that extend it
        self._patterns: dict[str, str] = {}  # pattern -> device

    def add_dn(self, dn: str) -> None:
        count = self._dns.get(dn, 0)
        self._dns[dn] = count + 1
        if count == 0:
            for end in range(1, len(dn)):
                self._prefixes[dn[:end]] = self._prefixes.get(dn[:end], 0) + 1

    def remove_dn(self, dn: str) -> None:
        count = self._dns.get(dn, 0)
        if count > 1:
            self._dns[dn] = count - 1
            return
        if self._dns.pop(dn, None) is None:
            return
        for end in range(1, len(dn)):
            left = self._prefixes[dn[:end]] - 1
            if left:
                self._prefixes[dn[:end]] = left
            else:
                del self._prefixes[dn[:end]]

    def add_pattern(self, pattern: str, device: str) -> None:
        self._patterns[pattern] = device

    def remove_pattern(self, pattern: str) -> None:
        self._patterns.pop(pattern, None)

    def has_dn(self, dn: str) -> bool:
        return dn in self._dns

    def match(self, digits: str) -> Match:
        if not digits:
            return Match(MatchKind.PARTIAL)
        exact = digits in self._dns
        longer = digits in self._prefixes
        for pattern, device in self._patterns.items():
            if _pattern_matches(pattern, digits):
                if exact:
                    break  # a line wins over a pattern
                return Match(MatchKind.COMPLETE, device=device)
            if _pattern_prefix(pattern, digits):
                longer = True
        if exact:
            return Match(MatchKind.AMBIGUOUS if longer else MatchKind.COMPLETE, dn=digits)
        return Match(MatchKind.PARTIAL if longer else MatchKind.NONE)

    def final(self, digits: str) -> Match:
        """What the digits name when no more will come ('#', timeout or en-bloc)."""
        digits = digits.rstrip("#")
        if digits in self._dns:
            return Match(MatchKind.COMPLETE, dn=digits)
        for pattern, device in self._patterns.items():
            if _pattern_matches(pattern, digits):
                return Match(MatchKind.COMPLETE, device=device)
        return Match(MatchKind.NONE)

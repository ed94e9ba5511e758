"""Untrusted text rendered for a message: escaped and bounded.

A refusal usually names what it refused ("no device named X"). X is whatever the caller sent: a
100 kB name, a binary blob, a name with newlines or terminal escapes. Copied back whole it makes
huge HTTP bodies and gRPC trailers (over ~8 kB the call fails instead of carrying the refusal),
forges log lines, and drives the administrator's terminal. Every message that quotes input quotes
it through `shown`; the three doors (CLI stderr, HTTP error body, gRPC status) pass the whole
message through `bounded` as a last guard.

- `shown(value)`: printable ASCII stays as it is (an ordinary name reads the same), everything
  else is a repr-style escape (`\\x1b`, `\\n`, `\\u202e`, `\\xe9`); at most `limit` characters of
  output, then `...(N more characters)` where N counts the input's characters not shown.
- `bounded(message)`: the same for a whole message, but printable non-ASCII (the messages' own
  dashes and arrows) is kept; only non-printables are escaped; a longer limit, counted in UTF-8
  bytes: gRPC percent-encodes each non-ASCII byte of a status message (3 bytes on the wire), so
  1,024 kept CJK characters or emoji came to 9-12 kB and the call failed (RESOURCE_EXHAUSTED,
  "metadata size exceeds soft limit") instead of carrying the refusal.

Stored free text (a device's description, a line's label) is checked on the way *in* as well, by
`checked_text`, the one check every writer calls (the HTTPS administration API, the gRPC doors
and with them the CLI, the database model itself as the last guard): ordinary text of any script
— Japanese, accented Latin, emoji, ideographic and no-break spaces — is kept as it is (text a
phone is sent over Skinny, whose string fields are ASCII, is printable ASCII only); control
characters (C0 with tab and newline, DEL, C1), format characters (bidi overrides and isolates,
zero-width characters, the BOM, soft hyphen), line/paragraph separators, surrogates, private-use
and unassigned code points are refused with a message naming the field, and so is text over the
field's length. Escaping on output stays: rows written before the check existed may hold anything.
"""

from __future__ import annotations

import unicodedata
from typing import Any

SHOWN_LIMIT = 80         # characters of one quoted value (a name is shorter; a blob is cut)
MESSAGE_LIMIT = 1024     # UTF-8 bytes of a whole error message (x3 percent-encoded: under gRPC's 8 kB)

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str, ascii_only: bool) -> str:
    if " " <= ch <= "~":
        return ch
    if not ascii_only and ch.isprintable():
        return ch
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _render(text: str, limit: int, ascii_only: bool) -> str:
    """At most `limit` UTF-8 bytes of output before the marker (escapes are ASCII: one byte each)."""
    out: list[str] = []
    used = 0
    for i, ch in enumerate(text):
        piece = _escape(ch, ascii_only)
        size = len(piece) if piece.isascii() else len(piece.encode("utf-8"))  # kept non-ASCII
        if used + size > limit:
            return "".join(out) + f"...({len(text) - i} more characters)"
        out.append(piece)
        used += size
    return "".join(out)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        # each byte one character, so a binary blob escapes byte by byte (\x00, \xff)
        return bytes(value).decode("latin-1")
    try:
        return str(value)
    except Exception:  # a value whose __str__ fails still gets a message
        return f"<{type(value).__name__}>"


def shown(value: Any, limit: int = SHOWN_LIMIT) -> str:
    """`value` (text, bytes or anything with a str()) safe to put in a message: printable ASCII
    only, at most `limit` characters plus the cut marker."""
    return _render(_as_text(value), limit, ascii_only=True)


def bounded(message: Any, limit: int = MESSAGE_LIMIT) -> str:
    """A whole message safe to print, log or send: no control characters, at most `limit` UTF-8
    bytes plus the cut marker. An ordinary message comes back unchanged."""
    return _render(_as_text(message), limit, ascii_only=False)


def fitted(value: Any, size: int) -> str:
    """`shown`, but the whole result, cut marker included, at most `size` characters (a database
    column); a value that fits escaped comes back as `shown` gives it."""
    text = shown(value, size)
    if len(text) <= size:
        return text
    return shown(value, max(size - 30, 1))[:size]  # the marker is at most ~30 characters


# Unicode categories refused in stored free text: control (Cc: C0, DEL, C1), format (Cf: bidi
# overrides/isolates, zero-width, BOM), surrogate, private use, unassigned, line/paragraph separator.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


class UnsafeText(ValueError):
    """Free text refused at input; `field` names it, `reason` says why without the field name."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def checked_text(field: str, value: Any, limit: int, *, ascii_only: bool = False) -> str:
    """`value` when it is text a person can read and at most `limit` characters; else `UnsafeText`
    naming `field` and the first offending character (escaped, with its position).
    `ascii_only`: printable ASCII only — for text a phone is sent over Skinny (a line's label, a
    speed dial's, a display name), whose string fields are ASCII."""
    if not isinstance(value, str):
        raise UnsafeText(field, f"must be text, not {type(value).__name__}")
    if len(value) > limit:
        raise UnsafeText(field, f"{len(value)} characters, at most {limit} allowed")
    for position, ch in enumerate(value):
        if unicodedata.category(ch) in _REFUSED_CATEGORIES:
            kind = "control" if unicodedata.category(ch) == "Cc" else "non-printable"
            raise UnsafeText(field, f"{kind} character {shown(ch)} (U+{ord(ch):04X}) at position "
                                    f"{position + 1} is not allowed: ordinary text only")
        if ascii_only and not " " <= ch <= "~":
            raise UnsafeText(field, f"character {shown(ch)} (U+{ord(ch):04X}) at position "
                                    f"{position + 1} is not allowed: printable ASCII only (the "
                                    "phone is sent it over Skinny, whose text fields are ASCII)")
    return value

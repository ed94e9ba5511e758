"""MGCP LocalConnectionOptions (RFC 3435 §2.3.3, the `L:` parameter of CreateConnection and
ModifyConnection) — pure, no I/O: call control writes them, the srtp-gateway parses them.

Kept here: the compression algorithm (`a:`, a `;` list of RTP encoding names, RFC 3551 — the
connection's codec is the first one) and the packetisation period (`p:`, 20 ms only). The gateway
speaks G.711 µ-law (PCMU, payload type 0) and A-law (PCMA, 8) and nothing else: a codec it does
not speak is refused (534 codec negotiation failure), never replaced by one it does — call
control asked for that codec because the leg negotiated it (CALL-9).
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_LOCAL_OPTIONS = 256
ENCODINGS = {"PCMU": 0, "PCMA": 8}          # encoding name -> static RTP payload type
ENCODING_NAMES = {pt: name for name, pt in ENCODINGS.items()}

PROTOCOL_ERROR = 510
LCO_UNSUPPORTED = 532
CODEC_NEGOTIATION = 534


class LocalOptionsError(ValueError):
    """Refused options: the MGCP return code and a bounded text."""

    def __init__(self, code: int, text: str):
        super().__init__(text)
        self.code = code


@dataclass(frozen=True)
class LocalOptions:
    payload_types: tuple[int, ...] = ()     # from `a:`, in the order given; empty: none asked

    @property
    def payload_type(self) -> int | None:
        """The connection's codec: the first asked for; None when `a:` was not given."""
        return self.payload_types[0] if self.payload_types else None

    def to_text(self) -> str:
        return f"a:{';'.join(ENCODING_NAMES[pt] for pt in self.payload_types)}" if self.payload_types else ""


def for_payload_type(payload_type: int) -> LocalOptions:
    """The options asking for one G.711 codec (call control's side); ValueError for any other."""
    if payload_type not in ENCODING_NAMES:
        raise ValueError(f"payload type {payload_type} is not G.711 (0 PCMU, 8 PCMA)")
    return LocalOptions((payload_type,))


def parse_local_options(text: str) -> LocalOptions:
    """`a:PCMA`, `p:20, a:PCMU;PCMA`: comma-separated `name:value`. Empty text: no options."""
    text = text or ""
    if len(text) > MAX_LOCAL_OPTIONS:
        raise LocalOptionsError(PROTOCOL_ERROR, f"local connection options longer than "
                                f"{MAX_LOCAL_OPTIONS} characters")
    pts: tuple[int, ...] = ()
    seen: set[str] = set()
    for item in (part.strip() for part in text.split(",")) if text.strip() else ():
        name, colon, value = item.partition(":")
        name, value = name.strip().lower(), value.strip()
        if not colon or not name or not value:
            raise LocalOptionsError(PROTOCOL_ERROR, f"local connection option {item[:32]!r} is "
                                    "not <name>:<value>")
        if name in seen:
            raise LocalOptionsError(PROTOCOL_ERROR, f"local connection option {name[:16]!r} given twice")
        seen.add(name)
        if name == "a":
            names = [v.strip() for v in value.split(";")]
            unknown = [v for v in names if v.upper() not in ENCODINGS]
            if unknown:
                raise LocalOptionsError(CODEC_NEGOTIATION, "codec negotiation failure: "
                                        f"{', '.join(repr(v[:16]) for v in unknown[:4])} not "
                                        f"supported (this gateway speaks {', '.join(ENCODINGS)})")
            pts = tuple(dict.fromkeys(ENCODINGS[v.upper()] for v in names))
        elif name == "p":
            if value != "20":
                raise LocalOptionsError(LCO_UNSUPPORTED, f"packetisation period {value[:16]!r} "
                                        "not supported (20 ms only)")
        else:
            raise LocalOptionsError(LCO_UNSUPPORTED, f"local connection option {name[:16]!r} not "
                                    "supported (a: codec, p: packetisation period)")
    return LocalOptions(pts)

"""Session descriptions (RFC 4566) with SDES `a=crypto` attributes (RFC 4568) — bounded, sans-IO.

What the gateway and call control exchange: one audio stream, its connection address and port,
its direction (sendrecv / recvonly / sendonly / inactive), its G.711 formats and, for SRTP
(`RTP/SAVP`), one `a=crypto` line carrying the master key and salt inline in base64. The key
describes the stream its *sender* encrypts (RFC 4568 §5.1). Only the SRTP stream is keyed (GW-1):
keys are refused in any media other than audio, a second key (`FEC_KEY`) and MKIs are refused,
and we never run RTCP, so no SRTCP key is ever derived for use. A session parameter (RFC 4568
§6.3) is accepted only when it asks for what we do anyway — `KDR=0`, `WSH=n` within our replay
window, an optional `-name` — any other (UNENCRYPTED_SRTP, UNENCRYPTED_SRTCP, UNAUTHENTICATED_SRTP,
KDR=n, FEC_ORDER, FEC_KEY, unknown names) refuses the line rather than being silently ignored.

Every problem is an `SdpError` naming the line; lengths and counts are bounded.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass, field

from ccmsec.media.srtp import REPLAY_WINDOW, MasterKey, SrtpSuite

MAX_SDP_BYTES = 8192
MAX_LINES = 128
MAX_LINE = 1024
MAX_MEDIA = 8
DIRECTIONS = ("sendrecv", "recvonly", "sendonly", "inactive")
# Line types RFC 4566 defines, in the order they may appear (session part, then media part).
SESSION_ORDER = "vosiuepcbtrzka"
MEDIA_ORDER = "micbka"
_TAG = re.compile(r"^[0-9]{1,9}$")
_TOKEN = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+$")


class SdpError(ValueError):
    """A session description we cannot accept; the message says which line and why."""


@dataclass(frozen=True)
class CryptoAttribute:
    """`a=crypto:<tag> <suite> inline:<base64(key||salt)>[|<lifetime>] [session params]`."""

    tag: int
    key: MasterKey = field(repr=False)
    lifetime: int | None = None
    session_params: tuple[str, ...] = ()

    @property
    def suite(self) -> SrtpSuite:
        return self.key.suite

    def value(self) -> str:
        inline = base64.b64encode(self.key.key_and_salt).decode()
        if self.lifetime is not None:
            inline += f"|2^{self.lifetime.bit_length() - 1}" if self.lifetime & (self.lifetime - 1) == 0 \
                else f"|{self.lifetime}"
        return " ".join([f"{self.tag}", self.suite.name, f"inline:{inline}", *self.session_params])

    @classmethod
    def parse(cls, value: str) -> "CryptoAttribute":
        parts = value.split()
        if len(parts) < 3:
            raise SdpError("a=crypto needs a tag, a crypto suite and key parameters")
        tag, suite_name, key_params, *params = parts
        if not _TAG.match(tag):
            raise SdpError(f"a=crypto tag {tag!r} is not a 1-9 digit number")
        try:
            suite = SrtpSuite.parse(suite_name)
        except ValueError as exc:
            raise SdpError(f"a=crypto: {exc}") from None
        if ";" in key_params:
            raise SdpError("a=crypto: several keys in one line are not supported (one SRTP key only, GW-1)")
        if not key_params.startswith("inline:"):
            raise SdpError(f"a=crypto: key method must be 'inline:', got {key_params.split(':')[0]!r}")
        fields = key_params[len("inline:"):].split("|")
        if len(fields) > 3:
            raise SdpError("a=crypto: too many '|' fields in the key parameters")
        lifetime = None
        for extra in fields[1:]:
            if ":" in extra:
                raise SdpError("a=crypto: MKI is not supported (the master key is never changed mid-call)")
            lifetime = _lifetime(extra)
        try:
            raw = base64.b64decode(fields[0], validate=True)
        except (binascii.Error, ValueError):
            raise SdpError("a=crypto: the inline key is not valid base64") from None
        want = suite.key_length + suite.salt_length
        if len(raw) != want:
            raise SdpError(f"a=crypto: {suite.name} needs {want} bytes of key and salt, got {len(raw)}")
        for p in params:
            _check_session_param(p)
        return cls(int(tag), MasterKey(suite, raw[:suite.key_length], raw[suite.key_length:]),
                   lifetime, tuple(params))


def _check_session_param(param: str) -> None:
    """RFC 4568 §6.3: keep a session parameter only if what it asks is what we do anyway.

    Every other one changes how the stream is keyed or protected (unencrypted or unauthenticated
    SRTP, key re-derivation, FEC), and §6.3.7 makes an unknown one (not prefixed '-') invalidate
    the line: accepting and ignoring it would protect the stream differently from what the peer
    asked for, so the line is refused, naming the parameter.
    """
    name, eq, value = param.partition("=")
    if not _TOKEN.match(name):
        raise SdpError(f"a=crypto: bad session parameter {param[:40]!r}")
    if name.startswith("-"):
        return                                   # optional by §6.3.7: may be ignored
    if name == "KDR" and eq and value == "0":
        return                                   # one key derivation per master key: what we do
    if name == "WSH" and eq and value.isdigit() and len(value) <= 9 and 64 <= int(value) <= REPLAY_WINDOW:
        return                                   # a window hint our replay window already meets
    why = {
        "KDR": "key re-derivation (KDR other than 0) is not supported; the session key is derived once",
        "UNENCRYPTED_SRTP": "unencrypted SRTP is not supported; every SRTP stream is encrypted",
        "UNENCRYPTED_SRTCP": "unencrypted SRTCP is not supported",
        "UNAUTHENTICATED_SRTP": "unauthenticated SRTP is not supported; every SRTP packet is authenticated",
        "FEC_ORDER": "forward error correction (FEC_ORDER) is not supported",
        "FEC_KEY": "FEC_KEY would carry a second key; only the SRTP stream is keyed (GW-1)",
        "WSH": f"window size hint must be a number 64..{REPLAY_WINDOW} (our replay window is {REPLAY_WINDOW})",
    }.get(name, "unknown mandatory session parameter (RFC 4568 §6.3.7)")
    raise SdpError(f"a=crypto: session parameter {param[:40]!r} refused: {why}")


def _lifetime(text: str) -> int:
    if text.startswith("2^") and text[2:].isdigit() and int(text[2:]) <= 48:
        return 1 << int(text[2:])
    if text.isdigit() and len(text) <= 15:
        return int(text)
    raise SdpError(f"a=crypto: bad key lifetime {text!r}")


@dataclass(frozen=True)
class MediaDescription:
    media: str = "audio"
    port: int = 0
    proto: str = "RTP/AVP"
    formats: tuple[str, ...] = ("0",)
    connection: str | None = None                # c= address inside the media section
    direction: str = "sendrecv"
    crypto: tuple[CryptoAttribute, ...] = ()
    attributes: tuple[tuple[str, str | None], ...] = ()   # other a= lines, in order

    @property
    def srtp(self) -> bool:
        return self.proto == "RTP/SAVP"


@dataclass(frozen=True)
class SessionDescription:
    origin_address: str
    session_id: int = 0
    session_version: int = 0
    username: str = "-"
    name: str = "-"
    connection: str | None = None                 # session-level c= address
    media: tuple[MediaDescription, ...] = ()
    attributes: tuple[tuple[str, str | None], ...] = ()

    def audio(self) -> MediaDescription:
        for m in self.media:
            if m.media == "audio" and m.port:
                return m
        raise SdpError("the session description has no active audio stream (m=audio with a port)")

    def address_of(self, m: MediaDescription) -> str:
        address = m.connection or self.connection
        if address is None:
            raise SdpError("no connection address (c=) for the audio stream")
        return address

    def to_text(self) -> str:
        lines = ["v=0", f"o={self.username} {self.session_id} {self.session_version} IN IP4 {self.origin_address}",
                 f"s={self.name}"]
        if self.connection:
            lines.append(f"c=IN IP4 {self.connection}")
        lines.append("t=0 0")
        lines += [_attr(n, v) for n, v in self.attributes]
        for m in self.media:
            lines.append(f"m={m.media} {m.port} {m.proto} {' '.join(m.formats)}")
            if m.connection:
                lines.append(f"c=IN IP4 {m.connection}")
            lines += [f"a=crypto:{c.value()}" for c in m.crypto]
            lines += [_attr(n, v) for n, v in m.attributes]
            lines.append(f"a={m.direction}")
        text = "\r\n".join(lines) + "\r\n"
        if len(text) > MAX_SDP_BYTES:
            raise SdpError(f"session description of {len(text)} bytes exceeds {MAX_SDP_BYTES}")
        return text


def _attr(name: str, value: str | None) -> str:
    return f"a={name}" if value is None else f"a={name}:{value}"


def audio_session(address: str, port: int, *, key: MasterKey | None = None, payload_type: int = 0,
                  direction: str = "sendrecv", session_id: int = 0, version: int = 0) -> SessionDescription:
    """The one shape we offer: one G.711 audio stream, SRTP with one a=crypto when `key` is set."""
    if direction not in DIRECTIONS:
        raise SdpError(f"direction {direction!r} is not one of {', '.join(DIRECTIONS)}")
    crypto = (CryptoAttribute(1, key),) if key else ()
    if payload_type not in (0, 8):
        raise SdpError(f"payload type {payload_type} is not G.711 (0 PCMU, 8 PCMA)")
    rtpmap = (("rtpmap", f"{payload_type} {'PCMU' if payload_type == 0 else 'PCMA'}/8000"),)
    media = MediaDescription("audio", port, "RTP/SAVP" if key else "RTP/AVP", (str(payload_type),),
                             None, direction, crypto, rtpmap)
    return SessionDescription(address, session_id, version, connection=address, media=(media,))


def parse_sdp(text: "str | bytes") -> SessionDescription:
    if isinstance(text, bytes):
        if len(text) > MAX_SDP_BYTES:
            raise SdpError(f"session description of {len(text)} bytes exceeds {MAX_SDP_BYTES}")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise SdpError("session description is not UTF-8") from None
    if len(text) > MAX_SDP_BYTES:
        raise SdpError(f"session description of {len(text)} characters exceeds {MAX_SDP_BYTES}")
    raw_lines = text.replace("\r\n", "\n").split("\n")
    if raw_lines and raw_lines[-1] == "":
        raw_lines.pop()
    if not raw_lines:
        raise SdpError("empty session description")
    if len(raw_lines) > MAX_LINES:
        raise SdpError(f"{len(raw_lines)} lines exceed {MAX_LINES}")
    session: dict = {"attributes": []}
    media: list[dict] = []
    order, position = SESSION_ORDER, 0
    seen_t = False
    seen_here: set[str] = set()
    for number, line in enumerate(raw_lines, 1):
        where = f"line {number}"
        if len(line) > MAX_LINE:
            raise SdpError(f"{where}: longer than {MAX_LINE} characters")
        if len(line) < 2 or line[1] != "=" or not ("a" <= line[0] <= "z"):
            raise SdpError(f"{where}: not of the form <letter>=<value>: {line[:40]!r}")
        kind, value = line[0], line[2:]
        if any(ch in value for ch in "\r\0"):
            raise SdpError(f"{where}: control character in the value")
        if kind == "m":
            if not seen_t:
                raise SdpError(f"{where}: m= before any t= line")
            if len(media) >= MAX_MEDIA:
                raise SdpError(f"{where}: more than {MAX_MEDIA} media sections")
            media.append(_media_line(value, where))
            order, position, seen_here = MEDIA_ORDER, 1, set()
            continue
        if kind not in order:
            raise SdpError(f"{where}: '{kind}=' is not allowed {'in a media section' if media else 'here'}")
        index = order.index(kind)
        if index < position:
            raise SdpError(f"{where}: '{kind}=' out of order (RFC 4566 fixes the order of lines)")
        if kind in "vosiuepczk" and kind in seen_here:
            raise SdpError(f"{where}: a second '{kind}=' line in one section")
        seen_here.add(kind)
        position = index
        if number == 1 and kind != "v":
            raise SdpError("line 1: a session description starts with v=")
        target = media[-1] if media else session
        if kind == "v":
            if value != "0":
                raise SdpError(f"{where}: protocol version {value!r}, expected 0")
        elif kind == "o":
            _origin(value, where, session)
        elif kind == "s":
            session["name"] = value or " "
        elif kind == "c":
            target["connection"] = _connection(value, where)
        elif kind == "t":
            seen_t = True
        elif kind == "a":
            name, _, val = value.partition(":")
            if not name or not _TOKEN.match(name):
                raise SdpError(f"{where}: bad attribute name {name!r}")
            _attribute(target, name, val if ":" in value else None, where, in_media=bool(media))
    if "origin_address" not in session:
        raise SdpError("missing o= line")
    if "name" not in session:
        raise SdpError("missing s= line")
    if not seen_t:
        raise SdpError("missing t= line")
    return SessionDescription(
        session["origin_address"], session["session_id"], session["session_version"], session["username"],
        session["name"], session.get("connection"),
        tuple(MediaDescription(m["media"], m["port"], m["proto"], m["formats"], m.get("connection"),
                               m.get("direction", session.get("direction", "sendrecv")),
                               tuple(m.get("crypto", ())), tuple(m["attributes"])) for m in media),
        tuple(session["attributes"]),
    )


def _origin(value: str, where: str, session: dict) -> None:
    parts = value.split(" ")
    if len(parts) != 6:
        raise SdpError(f"{where}: o= needs 6 fields (username sess-id sess-version IN IP4 address)")
    user, sid, version, net, addr_type, address = parts
    if not (sid.isdigit() and version.isdigit() and len(sid) <= 20 and len(version) <= 20):
        raise SdpError(f"{where}: o= session id and version must be numbers")
    if net != "IN" or addr_type not in ("IP4", "IP6"):
        raise SdpError(f"{where}: o= network type must be 'IN IP4' or 'IN IP6'")
    session.update(username=user, session_id=int(sid), session_version=int(version), origin_address=address)


def _connection(value: str, where: str) -> str:
    parts = value.split(" ")
    if len(parts) != 3 or parts[0] != "IN" or parts[1] != "IP4":
        raise SdpError(f"{where}: c= must be 'IN IP4 <address>' (IPv4 only)")
    address = parts[2].split("/")[0]
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        raise SdpError(f"{where}: c= address {address!r} is not an IPv4 address") from None
    if ip.is_multicast:
        raise SdpError(f"{where}: multicast media addresses are not supported")
    return address


def _media_line(value: str, where: str) -> dict:
    parts = value.split(" ")
    if len(parts) < 4:
        raise SdpError(f"{where}: m= needs media, port, proto and at least one format")
    kind, port, proto, *formats = parts
    if "/" in port:
        raise SdpError(f"{where}: port counts (port/number) are not supported")
    if not port.isdigit() or int(port) > 65535:
        raise SdpError(f"{where}: port {port!r} is not 0..65535")
    if not _TOKEN.match(kind) or not re.match(r"^[A-Za-z0-9/._-]+$", proto):
        raise SdpError(f"{where}: bad media or transport token")
    if len(formats) > 32 or not all(_TOKEN.match(f) for f in formats):
        raise SdpError(f"{where}: bad format list")
    return {"media": kind, "port": int(port), "proto": proto, "formats": tuple(formats), "attributes": []}


def _attribute(target: dict, name: str, value: str | None, where: str, *, in_media: bool) -> None:
    if name in DIRECTIONS and value is None:
        if "direction" in target:
            raise SdpError(f"{where}: a second direction attribute ({name})")
        target["direction"] = name
        return
    if name == "crypto":
        if not in_media:
            raise SdpError(f"{where}: a=crypto belongs in a media section")
        if target["media"] != "audio" or target["proto"] != "RTP/SAVP":
            raise SdpError(f"{where}: a=crypto only for an RTP/SAVP audio stream (ENC-2: audio only)")
        try:
            crypto = CryptoAttribute.parse(value or "")
        except SdpError as exc:
            raise SdpError(f"{where}: {exc}") from None
        if any(c.tag == crypto.tag for c in target.get("crypto", ())):
            raise SdpError(f"{where}: a=crypto tag {crypto.tag} used twice")
        target.setdefault("crypto", []).append(crypto)
        return
    target["attributes"].append((name, value))

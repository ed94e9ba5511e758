"""Firmware images of the simulated phone models (AUTH-1).

Every model has one current load (`load_name(model)`, the `loadInformation` of its `.cnf.xml`). The
image of a load is served by TFTP as `<load>.sbn` (`image_filename`, the real signed-binary name) and
also as `<load>.sgn` (what ccmsec's phone-sim asks for); both are **always signed**: the file is a
`.sgn` container (trust-list header version 1.0, the file name as requested,
signed with the TFTP certificate) whose payload is the image — also in non-secure mode.

The image payload is deterministic pseudo data (a few tens of KB) behind a short text header, so a
phone can check what it got:

    CCMSEC-FIRMWARE 1\\n
    load=<load name>\\n
    models=<model>[,<model>...]\\n
    size=<body length>\\n
    sha256=<hex of body>\\n
    \\n
    <body>

A phone verifies an image with `verify_image(data, tftp_certificate, expected_load)`: signature by
the TFTP certificate (AUTH-1/AUTH-5), header well formed, body intact, load as asked. Any problem
raises a `FirmwareError` (a ValueError) naming it; the phone then keeps its current image.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache

from cryptography import x509

from ccmsec.formats.sgn import SgnFormatError, SignatureError, parse_sgn, sign_file, verify_sgn

IMAGE_SUFFIX = ".sbn"
ALIAS_SUFFIX = ".sgn"
IMAGE_SUFFIXES = (IMAGE_SUFFIX, ALIAS_SUFFIX)
MAGIC = b"CCMSEC-FIRMWARE 1\n"
MAX_HEADER = 1024
MAX_IMAGE = 4 * 1024 * 1024
BODY_SIZE = 40 * 1024

# One current load per model (names in the style of the real loads of that era).
LOADS: dict[str, str] = {
    "7970": "SCCP70.8-4-2S",
    "7960": "P0030801SR02",
    "7940": "P0030801SR02",
    "7912": "CP7912080003SCCP070409A",
    "7910": "P00403020214",
    "7905G": "CP7905080003SCCP070409A",
    "7902": "CP7902080002SCCP060817A",
}

_LOAD_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


class FirmwareError(ValueError):
    """A firmware image is unsigned, signed by someone else, altered, malformed or not the one asked."""


@dataclass(frozen=True)
class FirmwareInfo:
    load: str
    models: tuple[str, ...]
    size: int
    sha256: str


def load_name(model: str) -> str:
    """The current load of a model, e.g. '7970' -> 'SCCP70.8-4-2S'."""
    try:
        return LOADS[model]
    except KeyError:
        raise FirmwareError(f"no firmware load for model {model!r}") from None


def image_filename(load: str) -> str:
    """The TFTP name of a load's signed image: '<load>.sbn'."""
    if not _LOAD_RE.fullmatch(load or ""):
        raise FirmwareError(f"bad load name {load!r}")
    return load + IMAGE_SUFFIX


def all_loads() -> tuple[str, ...]:
    return tuple(sorted(set(LOADS.values())))


def image_filenames(load: str) -> tuple[str, ...]:
    """Every TFTP name a load's signed image is served under: '<load>.sbn', '<load>.sgn'."""
    image_filename(load)
    return tuple(load + suffix for suffix in IMAGE_SUFFIXES)


def load_for_filename(filename: str) -> str | None:
    """'SCCP70.8-4-2S.sbn' or 'SCCP70.8-4-2S.sgn' -> 'SCCP70.8-4-2S'; None when not a known image."""
    for suffix in IMAGE_SUFFIXES:
        if filename.endswith(suffix):
            load = filename[: -len(suffix)]
            return load if load in LOADS.values() else None
    return None


@lru_cache(maxsize=16)
def image_payload(load: str) -> bytes:
    """The deterministic image of a load (same load, same bytes, on every machine)."""
    if load not in LOADS.values():
        raise FirmwareError(f"unknown load {load!r}")
    body = hashlib.shake_256(b"ccmsec firmware " + load.encode()).digest(BODY_SIZE)
    models = ",".join(sorted(m for m, l in LOADS.items() if l == load))
    header = (f"load={load}\nmodels={models}\nsize={len(body)}\n"
              f"sha256={hashlib.sha256(body).hexdigest()}\n\n").encode()
    return MAGIC + header + body


def sign_image(load: str, signer, timestamp: int, filename: str | None = None) -> bytes:
    """The served image file: `image_payload(load)` in a `.sgn` container named `filename`
    (default `<load>.sbn`; must be one of `image_filenames(load)`)."""
    filename = filename or image_filename(load)
    if filename not in image_filenames(load):
        raise FirmwareError(f"{filename!r} is not a name of load {load!r}")
    return sign_file(image_payload(load), filename, signer, timestamp)


def parse_image_payload(payload: bytes) -> FirmwareInfo:
    """Check the header and the body digest of an (unsigned) image payload."""
    payload = bytes(payload)
    if len(payload) > MAX_IMAGE:
        raise FirmwareError(f"image larger than {MAX_IMAGE} bytes")
    if not payload.startswith(MAGIC):
        raise FirmwareError("not a firmware image (bad magic)")
    end = payload.find(b"\n\n", len(MAGIC), len(MAGIC) + MAX_HEADER)
    if end < 0:
        raise FirmwareError("firmware header missing or longer than 1024 bytes")
    fields: dict[str, str] = {}
    try:
        lines = payload[len(MAGIC):end].decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise FirmwareError("firmware header is not ASCII") from None
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep or key in fields:
            raise FirmwareError(f"bad firmware header line {line[:40]!r}")
        fields[key] = value
    missing = {"load", "models", "size", "sha256"} - fields.keys()
    if missing:
        raise FirmwareError(f"firmware header lacks {', '.join(sorted(missing))}")
    body = payload[end + 2:]
    if not fields["size"].isdigit() or int(fields["size"]) != len(body):
        raise FirmwareError(f"firmware body is {len(body)} bytes, header says {fields['size'][:20]}")
    if hashlib.sha256(body).hexdigest() != fields["sha256"]:
        raise FirmwareError("firmware body does not match its sha256 (altered image)")
    if not _LOAD_RE.fullmatch(fields["load"]):
        raise FirmwareError("bad load name in firmware header")
    return FirmwareInfo(fields["load"], tuple(m for m in fields["models"].split(",") if m),
                        len(body), fields["sha256"])


def verify_image(data: bytes, certificate: x509.Certificate, expected_load: str | None = None) -> FirmwareInfo:
    """AUTH-1: a served image file must be signed by `certificate` and intact; else FirmwareError."""
    if len(data) > MAX_IMAGE + 4096:
        raise FirmwareError("image file too large")
    try:
        signed = parse_sgn(data)
        verify_sgn(signed, certificate)
    except (SgnFormatError, SignatureError) as exc:
        raise FirmwareError(f"image signature check failed: {exc}") from None
    info = parse_image_payload(signed.payload)
    if expected_load is not None and info.load != expected_load:
        raise FirmwareError(f"image is load {info.load!r}, expected {expected_load!r}")
    if signed.header.file_name not in image_filenames(info.load):
        raise FirmwareError(f"image signed as {signed.header.file_name!r}, not as an image of {info.load!r}")
    return info

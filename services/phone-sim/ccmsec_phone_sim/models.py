"""The phone models the simulator can build (DEV-3) and the few facts each needs on the wire.

Capabilities come from `ccmsec.policy.devices` (the one place DEV-3 lives); this module adds the
SCCP device-type code a model reports in Register (values of the Skinny dissector's device-type
table), the image the phone ships with, and MAC/name helpers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ccmsec.policy.devices import Feature, PolicyViolation, capabilities, normalise_model

# SCCP Register deviceType per model.
DEVICE_TYPES = {
    "7970": 30006, "7960": 7, "7940": 8, "7912": 30007, "7910": 6, "7905G": 20000, "7902": 30008,
}

NAME_RE = re.compile(r"SEP[0-9A-F]{12}")
PREFIX_RE = re.compile(r"SEP[0-9A-F]{0,11}")


class ModelError(ValueError):
    """An unknown model or a bad device name / prefix."""


@dataclass(frozen=True)
class ModelInfo:
    model: str
    device_type: int
    has_mic: bool        # CERT-1: 7970 only
    supports_lsc: bool   # CAPF may install an LSC (7970, 7960, 7940)
    secure_capable: bool  # device authentication / encryption at all
    web_server_disable: bool

    @property
    def factory_image(self) -> str:
        """The image a phone of this model runs when it leaves the factory."""
        return f"factory-{self.model}"


def model_info(model: str) -> ModelInfo:
    try:
        key = normalise_model(model)
    except PolicyViolation as exc:
        raise ModelError(str(exc)) from None
    caps = capabilities(key)
    return ModelInfo(
        model=key,
        device_type=DEVICE_TYPES[key],
        has_mic=caps.has(Feature.MIC),
        supports_lsc=caps.supports_lsc,
        secure_capable=caps.has(Feature.DEVICE_AUTH),
        web_server_disable=caps.has(Feature.WEB_SERVER_DISABLE),
    )


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name or ""):
        raise ModelError(f"device name {name!r} is not SEP followed by 12 upper-case hex digits")
    return name


def check_prefix(prefix: str) -> str:
    prefix = (prefix or "SEP").upper()
    if not PREFIX_RE.fullmatch(prefix):
        raise ModelError(f"name prefix {prefix!r} must be SEP followed by at most 11 hex digits")
    return prefix


def names_with_prefix(prefix: str, count: int, taken: set[str]) -> list[str]:
    """`count` free device names starting with `prefix`, lowest numbers first. A whole name
    (SEP + 12 hex digits) with count 1 is that exact name, so a phone can be made to match a
    device already configured in call control."""
    if count == 1 and NAME_RE.fullmatch((prefix or "").upper()):
        name = prefix.upper()
        if name in taken:
            raise ModelError(f"the simulator already has a phone named {name}")
        return [name]
    prefix = check_prefix(prefix)
    digits = 15 - len(prefix)
    limit = 16 ** digits
    names: list[str] = []
    n = 1
    while len(names) < count:
        if n >= limit:
            raise ModelError(f"prefix {prefix} has room for only {limit - 1} phones")
        candidate = f"{prefix}{n:0{digits}X}"
        if candidate not in taken:
            names.append(candidate)
        n += 1
    return names


def mac_of(name: str) -> str:
    hexpart = check_name(name)[3:]
    return ":".join(hexpart[i:i + 2] for i in range(0, 12, 2))

"""Phone model capabilities (DEV-3) and the checks that gate a device's security mode (MODE-5).

Pure functions; the administration API and call control call them and surface `PolicyViolation`
(rule id + reason) to the administrator.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ccmsec.domain import ClusterMode, DeviceSecurityMode


class PolicyViolation(ValueError):
    """A request a security rule forbids; `rule_id` names the rule (e.g. "DEV-3")."""

    def __init__(self, rule_id: str, reason: str) -> None:
        super().__init__(f"{rule_id}: {reason}")
        self.rule_id = rule_id
        self.reason = reason


# The modes are words of the domain vocabulary; `SecurityMode` is the device security mode.
SecurityMode = DeviceSecurityMode


class Feature(str, enum.Enum):
    IMAGE_AUTH = "image authentication"
    FILE_AUTH = "file authentication"
    DEVICE_AUTH = "device authentication"
    SIGNALLING_ENCRYPTION = "signalling encryption"
    MEDIA_ENCRYPTION = "media encryption"
    MIC = "manufacturer-installed certificate"
    LSC = "locally significant certificate"
    FACTORY_RESET = "factory reset"
    WEB_SERVER_DISABLE = "web server disable"


_FULL = frozenset({
    Feature.IMAGE_AUTH, Feature.FILE_AUTH, Feature.DEVICE_AUTH, Feature.SIGNALLING_ENCRYPTION,
    Feature.MEDIA_ENCRYPTION, Feature.FACTORY_RESET, Feature.WEB_SERVER_DISABLE,
})


@dataclass(frozen=True)
class ModelCapabilities:
    model: str
    features: frozenset[Feature]

    def has(self, feature: Feature) -> bool:
        return feature in self.features

    @property
    def supports_lsc(self) -> bool:
        """Whether CAPF may install an LSC (the 7970 also takes one; CERT-2)."""
        return Feature.LSC in self.features or Feature.MIC in self.features


# DEV-3. The 7970 ships with a MIC and can also receive an LSC through CAPF; the 7960/7940 have no
# MIC and rely on an LSC; the small models only authenticate their firmware image.
MODEL_CAPABILITIES: dict[str, ModelCapabilities] = {
    "7970": ModelCapabilities("7970", _FULL | {Feature.MIC, Feature.LSC}),
    "7960": ModelCapabilities("7960", _FULL | {Feature.LSC}),
    "7940": ModelCapabilities("7940", _FULL | {Feature.LSC}),
    **{m: ModelCapabilities(m, frozenset({Feature.IMAGE_AUTH}))
       for m in ("7912", "7910", "7905G", "7902")},
}

_MODE_NEEDS: dict[SecurityMode, frozenset[Feature]] = {
    SecurityMode.NON_SECURE: frozenset(),
    SecurityMode.AUTHENTICATED: frozenset({Feature.DEVICE_AUTH, Feature.FILE_AUTH}),
    SecurityMode.ENCRYPTED: frozenset({Feature.DEVICE_AUTH, Feature.FILE_AUTH,
                                       Feature.SIGNALLING_ENCRYPTION, Feature.MEDIA_ENCRYPTION}),
}


def normalise_model(model: str) -> str:
    """Accept "7960", "Cisco 7960", "CP-7960G", "7905"… and return the catalogue key."""
    text = model.strip().upper().removeprefix("CISCO").strip().removeprefix("CP-").strip()
    for candidate in (text, text.removesuffix("G"), text + "G"):
        if candidate in MODEL_CAPABILITIES:
            return candidate
    raise PolicyViolation("DEV-3", f"unknown phone model {model!r}")


def capabilities(model: str) -> ModelCapabilities:
    return MODEL_CAPABILITIES[normalise_model(model)]


def model_supports(model: str, security_mode: SecurityMode | str) -> bool:
    """DEV-3: can this model run in this security mode?"""
    mode = SecurityMode.parse(security_mode)
    return _MODE_NEEDS[mode] <= capabilities(model).features


def check_capf_allowed(model: str) -> None:
    """CAPF installs LSCs; models without certificate support are refused (DEV-3)."""
    caps = capabilities(model)
    if not caps.supports_lsc:
        raise PolicyViolation(
            "DEV-3", f"model {caps.model} supports image authentication only; it cannot hold an LSC")


def check_web_server_disable(model: str) -> None:
    """DEV-3/DEV-4: only models with a web server that can be switched off may be asked to."""
    caps = capabilities(model)
    if not caps.has(Feature.WEB_SERVER_DISABLE):
        raise PolicyViolation("DEV-3", f"model {caps.model} cannot disable its web server")


def check_device_security(model: str, mode: SecurityMode | str,
                          cluster_mode: ClusterMode | str, ctl_exists: bool) -> None:
    """Refuse a device security mode the cluster or the model cannot provide.

    MODE-5: without a CTL no device may be authenticated or encrypted.
    Authenticated/encrypted devices need the cluster in mixed mode (MODE-3).
    DEV-3: the model must support the mode.
    """
    mode = SecurityMode.parse(mode)
    cluster_mode = ClusterMode.parse(cluster_mode)
    caps = capabilities(model)  # unknown models are refused first (DEV-3)
    if mode is SecurityMode.NON_SECURE:
        return
    if not ctl_exists:
        raise PolicyViolation(
            "MODE-5", f"no CTL exists: run the CTL client before setting a device {mode.value}")
    if cluster_mode is not ClusterMode.MIXED:
        raise PolicyViolation(
            "MODE-3", f"the cluster is {cluster_mode.value}; set it to mixed mode before making "
                      f"a device {mode.value}")
    missing = _MODE_NEEDS[mode] - caps.features
    if missing:
        names = ", ".join(sorted(f.value for f in missing))
        raise PolicyViolation("DEV-3", f"model {caps.model} cannot be {mode.value}: lacks {names}")

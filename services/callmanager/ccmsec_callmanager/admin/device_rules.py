"""The security checks a device change must pass before it is stored: MODE-5, MODE-3, DEV-3.

TODO: switch to ccmsec.policy.devices.check_device_security for good once it has landed; it is
used automatically when importable, and the local table below is the fallback.
"""

from __future__ import annotations

try:  # the shared policy module (another package owner); same signature as _local_check
    from ccmsec.policy.devices import PolicyViolation as _PolicyViolation
    from ccmsec.policy.devices import check_device_security as _policy_check
except ImportError:
    _PolicyViolation = None
    _policy_check = None

# DEV-3: 7970 (MIC) and 7960/7940 (LSC) do authentication, signalling and media encryption and can
# disable their web server; 7912, 7910, 7905G and 7902 only authenticate their image.
SECURE_MODELS = frozenset({"7970", "7960", "7940"})
WEB_DISABLE_MODELS = frozenset({"7970", "7960", "7940"})


class RuleViolation(ValueError):
    """A change a security rule forbids; `rule` is the rule ID (e.g. DEV-3)."""

    def __init__(self, rule: str, reason: str):
        super().__init__(f"{rule}: {reason}")
        self.rule = rule
        self.reason = reason


def _local_check(model: str, mode: str, cluster_mode: str, ctl_exists: bool) -> None:
    # Same order as the policy module: cluster state first (MODE-5, MODE-3), then the model (DEV-3).
    if mode == "non-secure":
        return
    if not ctl_exists:
        raise RuleViolation("MODE-5", f"no CTL exists: run the CTL client before setting a "
                                      f"device {mode}")
    if cluster_mode != "mixed":
        raise RuleViolation("MODE-3", f"the cluster is {cluster_mode}; set it to mixed mode "
                                      f"before making a device {mode}")
    if model not in SECURE_MODELS:
        raise RuleViolation("DEV-3", f"model {model} supports image authentication only; "
                                     f"security mode {mode!r} is not possible")


def check_device_change(model: str, mode: str, *, web_access: bool, cluster_mode: str,
                        ctl_exists: bool) -> None:
    """Raise RuleViolation if `model` may not run in `mode` (or disable its web server) now."""
    if _policy_check is not None:
        try:
            _policy_check(model, mode, cluster_mode, ctl_exists)
        except Exception as exc:
            if _PolicyViolation is None or not isinstance(exc, _PolicyViolation):
                raise
            rule = getattr(exc, "rule_id", None) or getattr(exc, "rule", None) or "DEV-3"
            reason = getattr(exc, "reason", None) or str(exc)
            raise RuleViolation(str(rule), str(reason)) from None
    else:
        _local_check(model, mode, cluster_mode, ctl_exists)
    if not web_access and model not in WEB_DISABLE_MODELS:
        raise RuleViolation("DEV-3", f"model {model} cannot disable its web server")

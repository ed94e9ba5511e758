"""The security checks a device change must pass before it is stored: MODE-5, MODE-3, DEV-3.

The rules themselves live in `ccmsec.policy.devices`; this adapts their answer to the API's
`RuleViolation` (rule id + reason, turned into 409/422 by the caller).
"""

from __future__ import annotations

from ccmsec.policy.devices import PolicyViolation, check_device_security, check_web_server_disable


class RuleViolation(ValueError):
    """A change a security rule forbids; `rule` is the rule ID (e.g. DEV-3)."""

    def __init__(self, rule: str, reason: str):
        super().__init__(f"{rule}: {reason}")
        self.rule = rule
        self.reason = reason


def check_device_change(model: str, mode: str, *, web_access: bool, cluster_mode: str,
                        ctl_exists: bool) -> None:
    """Raise RuleViolation if `model` may not run in `mode` (or disable its web server) now."""
    try:
        check_device_security(model, mode, cluster_mode, ctl_exists)
        if not web_access:
            check_web_server_disable(model)
    except PolicyViolation as exc:
        raise RuleViolation(exc.rule_id, exc.reason) from None

"""LATER-8 on call control's side: the 2443 listener follows the cluster's legacy-TLS setting,
learnt from its owner, the CTL Provider, when callmanager starts (`ccmsec.clustertls`). The state
is kept in `legacy_tls` ("on", "off" or "unknown" until answered) and shown in Status.
"""

from __future__ import annotations

from ccmsec.clustertls import follow_legacy_tls


class LegacyTlsMixin:
    legacy_tls = "unknown"

    async def setup_legacy_tls(self) -> None:
        def apply(enabled: bool) -> None:
            if enabled:
                self.callcontrol.set_legacy_tls(True)
            self.legacy_tls = "on" if enabled else "off"

        await follow_legacy_tls(self.spawn, lambda: self.peer_channel("ctl-provider"), apply,
                                who="SCCP 2443")

    def status_details(self) -> dict[str, str]:
        return {**super().status_details(), "legacy_tls": self.legacy_tls}  # type: ignore[misc]

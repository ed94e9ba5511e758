"""CAPF's one write path (issue 9 §4, §5): activation (CHK-2), schedules, parameters (RST-6 /
RST-8), the third-party CA and imported certificates — whatever the door (gRPC from the CLI, or the
administration API, which calls these same RPCs as `admin-api` naming its administrator).

    validate → write → audit → publish, in ONE transaction:
      write    CAPF's own tables (`capf_settings`, `capf_operations`, `capf_certificates`)
      audit    an `owner.change` event (`outbox.stage_owner_change`): callmanager, the only writer
               of the audit log, records it. Never the auth string, never a key.
      publish  the events the change requires — `config.changed` for a scheduled device (its cnf.xml
               carries the operation), RST-6 / RST-8 for parameters — staged in CAPF's outbox
               beside the write and relayed until JetStream acknowledges them

A refused or rolled-back write leaves no row, no record and no event; a committed one is answered
"pending delivery" while NATS is down and its events go out once it is back.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from ccmsec.db.capf import get_capf_setting, set_capf_setting
from ccmsec.pki.lsc import save_third_party_ca
from ccmsec.policy.resets import required_actions
from ccmsec.runtime.outbox import DELIVERY_WAIT, stage, stage_actions, stage_owner_change
from ccmsec.runtime.servicer import ChangeActor
from ccmsec_proto import events_pb2

from . import offline
from .activation import SETTING_CAPF_ACTIVATED
from .parameters import PARAMETERS, Scope, change_of, setting_key, validate
from .scheduling import Scheduled, ScheduleRequest, schedule

if TYPE_CHECKING:
    from .main import CapfService

log = logging.getLogger("ccmsec.capf")

_RULE_OF_SCOPE = {"service": "RST-8", "enterprise": "RST-6"}


class CapfDomain:
    def __init__(self, service: "CapfService"):
        self.service = service

    @property
    def _origin(self) -> str:
        return self.service.node

    async def _delivered(self, ids: list[str]) -> bool:
        return await self.service.outbox.wait_sent(ids, DELIVERY_WAIT)

    async def activate(self, who: ChangeActor, active: bool) -> None:
        """CHK-2. (Whether a CTL exists, to be rebuilt to name CAPF, is the CTL Provider's state:
        `CapfService.ctl`, from `CtlProvider/GetCurrentCtl` — issue 9 §5.)"""
        svc = self.service
        async with svc.db() as s, s.begin():
            before = await get_capf_setting(s, SETTING_CAPF_ACTIVATED) == "1"
            await set_capf_setting(s, SETTING_CAPF_ACTIVATED, "1" if active else "0")
            if before != bool(active):
                stage_owner_change(s, self._origin, action="capf.activate", target="capf",
                                   detail=f"active={bool(active)}", rule="CHK-2", **who.audit())
        svc.activated = bool(active)
        svc.outbox.kick()
        log.info("CAPF %s", "activated" if active else "deactivated")

    async def schedule(self, who: ChangeActor, req: ScheduleRequest) -> tuple[Scheduled, bool]:
        """Record the operation (replacing an unfinished one), its audit record and the
        device's `config.changed` in one transaction; (scheduled, delivered)."""
        ids: list[str] = []

        def also(session, done: Scheduled) -> None:
            # The device's cnf.xml must now carry the CAPF operation: tell the TFTP signer.
            ids.append(stage(session, self._origin, "config.changed", None,
                             config_changed=events_pb2.ConfigChanged(
                                 devices=[done.device], what=f"capf {done.operation} scheduled")).id)
            ids.append(stage_owner_change(
                session, self._origin, action="capf.schedule", target=done.device, status=201,
                detail=f"{done.operation} auth={done.auth_mode} key={done.key_type} "
                       f"operation {done.op_id}",  # never the auth string
                **who.audit()).id)

        done = await schedule(self.service.db, req, self.service.params,
                              device_model=self.service.devices.model, also=also)
        return done, await self._delivered(ids)

    async def set_parameters(self, who: ChangeActor, scope: Scope,
                             values: dict[str, str]) -> tuple[dict[str, str], list[str], bool]:
        """Validate and store, with the audit record and the RST-6 / RST-8 events; (stored,
        events described, delivered). Raises ParameterError before anything is written."""
        checked = validate(scope, values)
        reason = f"CAPF {scope} parameters changed: {', '.join(sorted(checked))}"
        async with self.service.db() as s, s.begin():
            for name, value in checked.items():
                await set_capf_setting(s, setting_key(PARAMETERS[name]), value)
            # the audit record first: an RST-8 restart stops this very service
            ids = [stage_owner_change(
                s, self._origin, action=f"capf.{scope}_parameters", target="capf",
                detail="; ".join(f"{k}={v}" for k, v in sorted(checked.items())),
                rule=_RULE_OF_SCOPE[scope], **who.audit()).id]
            more, described = stage_actions(s, self._origin, required_actions(change_of(scope)), reason=reason)
            ids += more
        return checked, described, await self._delivered(ids)

    async def set_third_party_ca(self, who: ChangeActor, cert: x509.Certificate):
        """The offline issuer's CA (a file of CAPF's own folder, written atomically), then its
        audit record and `lsc-ca.changed` — on which call control asks `GetThirdPartyCa` and
        trusts the new CA's LSCs on 2443. Raises LscError before anything is written."""
        path = await asyncio.to_thread(save_third_party_ca, self.service.state_dir, cert)
        sha256 = cert.fingerprint(hashes.SHA256()).hex()
        async with self.service.db() as s, s.begin():
            stage_owner_change(s, self._origin, action="capf.third_party_ca", target="capf",
                               detail=f"subject {cert.subject.rfc4514_string()[:200]} sha256 {sha256[:16]}",
                               **who.audit())
            stage(s, self._origin, "lsc-ca.changed", text=sha256)
        self.service.outbox.kick()
        return path

    async def import_certificate(self, who: ChangeActor, ca: x509.Certificate, name: str,
                                 data: bytes) -> offline.ImportOutcome:
        """One third-party certificate for an operation awaiting it, recorded with its audit record."""

        def also(session, device: str, fingerprint: str) -> None:
            stage_owner_change(session, self._origin, action="capf.import", target=device, status=201,
                               detail=f"{name[:100]}: sha256 {fingerprint[:16]}", **who.audit())

        out = await offline.import_certificate(self.service.store, ca, name, data, also=also)
        if out.accepted:
            self.service.outbox.kick()
        return out

"""gRPC `ccmsec.v1.Capf`: activation (CHK-2), scheduling, status, the issued log, parameters
(RST-6 / RST-8) and the CHK-8 check. Requests are checked here and refused with a clear status;
every write goes through the domain layer (`domain.py`: written, audited and its events staged in
one transaction), the reads through the service's modules."""

from __future__ import annotations

import datetime as _dt
import logging
from typing import TYPE_CHECKING

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from ccmsec.domain import CapfAuthMode, CapfOperation, DomainError
from ccmsec.policy.devices import Feature, PolicyViolation, capabilities
from ccmsec.runtime.servicer import StatusServicerMixin, change_actor
from ccmsec_proto import capf_pb2, capf_pb2_grpc, common_pb2

from ccmsec.pki.lsc import LscError, load_one_certificate, load_third_party_ca

from . import offline
from .activation import NOT_ACTIVATED
from .parameters import CapfParameters, ParameterError, Scope, load_parameters
from .devices import DevicesUnavailable
from .scheduling import ScheduleRefused, ScheduleRequest
from ccmsec.textsafe import bounded, shown

if TYPE_CHECKING:
    from .main import CapfService

log = logging.getLogger("ccmsec.capf")

MAX_DEVICE_FIELD = 64
MAX_IMPORT_BYTES = 64 * 1024  # per certificate file


def _unix(value: _dt.datetime | None) -> int:
    return int(value.timestamp()) if value is not None else 0


def certificate_message(cert: x509.Certificate, role: int) -> common_pb2.Certificate:
    return common_pb2.Certificate(
        der=cert.public_bytes(serialization.Encoding.DER), serial=format(cert.serial_number, "x"),
        subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(), role=role,
        not_before_unix=int(cert.not_valid_before_utc.timestamp()),
        not_after_unix=int(cert.not_valid_after_utc.timestamp()),
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
    )


def operation_message(op) -> capf_pb2.CapfOperationState:
    """An OperationView as the wire message; the auth string is never sent back."""
    return capf_pb2.CapfOperationState(
        id=op.id, state=op.state, reason=op.reason or "", failed_attempts=op.failed_attempts,
        updated_unix=_unix(op.updated_at), created_unix=_unix(op.created_at),
        issued_fingerprint=op.issued_fingerprint or "",
        schedule=capf_pb2.CapfSchedule(
            device=op.device_name, operation=CapfOperation.parse(op.operation).to_proto(),
            auth_mode=CapfAuthMode.parse(op.auth_mode).to_proto(), key_type=op.key_type, deadline_unix=_unix(op.deadline)),
    )


def _deadline(unix: int) -> _dt.datetime | None:
    if unix == 0:
        return None
    try:
        return _dt.datetime.fromtimestamp(unix, _dt.timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise ScheduleRefused("invalid", f"deadline {unix} is not a valid time") from None


_REFUSAL_CODE = {"invalid": grpc.StatusCode.INVALID_ARGUMENT, "unknown_device": grpc.StatusCode.NOT_FOUND,
                 "policy": grpc.StatusCode.FAILED_PRECONDITION, "unavailable": grpc.StatusCode.UNAVAILABLE}


class CapfServicer(StatusServicerMixin, capf_pb2_grpc.CapfServicer):
    service: "CapfService"

    async def Activate(self, request, context):  # noqa: N802
        await self.service.domain.activate(change_actor(self.service, context), request.active)
        return self.service.status_message()

    async def ScheduleOperation(self, request, context):  # noqa: N802
        svc = self.service
        if not svc.activated:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, NOT_ACTIVATED)
        try:
            if not request.operation:
                raise ScheduleRefused("invalid", f"no CAPF operation given ({', '.join(CapfOperation.choices())})")
            try:
                operation = CapfOperation.from_proto(request.operation)
                auth_mode = (CapfAuthMode.from_proto(request.auth_mode) if request.auth_mode else None)
            except DomainError as exc:
                raise ScheduleRefused("invalid", str(exc)) from None
            if len(request.device) > MAX_DEVICE_FIELD or len(request.auth_string) > MAX_DEVICE_FIELD:
                raise ScheduleRefused("invalid", "device name or auth string too long")
            req = ScheduleRequest(
                device=request.device, operation=operation.value,
                auth_mode=auth_mode.value if auth_mode else "", auth_string=request.auth_string,
                key_type=request.key_type, deadline=_deadline(request.deadline_unix))
            done, _delivered = await svc.domain.schedule(change_actor(svc, context), req)
        except ScheduleRefused as exc:
            await context.abort(_REFUSAL_CODE[exc.kind], bounded(str(exc)))
        op = await svc.store.operation(done.op_id)
        return operation_message(op)

    async def _known_device(self, context, device: str) -> None:
        """NOT_FOUND for a device call control does not know; UNAVAILABLE when it does not answer."""
        try:
            known = await self.service.devices.exists(device)
        except DevicesUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, bounded(str(exc)))
        if not known:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown device '{shown(device)}'")

    async def GetOperations(self, request, context):  # noqa: N802
        svc = self.service
        device = request.device or None
        rows = await svc.store.operations(device, request.limit or 1000)
        if device is not None and not rows:
            await self._known_device(context, device)
        return capf_pb2.CapfStatusReply(operations=[operation_message(op) for op in rows])

    async def GetPendingOperations(self, request, context):  # noqa: N802
        """tftp-signer's read of the operation each device's cnf.xml carries (pending.py)."""
        from .pending import pending_pages

        async for page in pending_pages(self.service.db, list(request.devices) or None):
            yield page

    async def GetIssuedLog(self, request, context):  # noqa: N802
        svc = self.service
        device = request.device or None
        records = await svc.store.certificates(device, limit=request.limit or 1000)
        if device is not None and not records:
            await self._known_device(context, device)
        entries = []
        for rec in records:
            entry = capf_pb2.IssuedCertificate(device=rec.device_name, operation=rec.operation,
                                               at_unix=_unix(rec.created_at), outcome=rec.outcome,
                                               operation_id=rec.operation_id or 0)
            if rec.der is not None:
                entry.certificate.CopyFrom(certificate_message(x509.load_der_x509_certificate(rec.der),
                                                               common_pb2.ROLE_LSC))
            else:
                entry.certificate.fingerprint_sha256 = rec.fingerprint_sha256 or ""
                entry.certificate.serial = rec.serial or ""
            entries.append(entry)
        return capf_pb2.IssuedLogReply(entries=entries)

    async def GetCapfCertificate(self, request, context):  # noqa: N802
        return certificate_message(self.service.capf_ca.cert, common_pb2.ROLE_CAPF)

    # --- parameters (RST-8 service, RST-6 enterprise) -----------------------------------------
    @staticmethod
    def _parameters_reply(stored: CapfParameters, events: list[str] = (),
                          delivered: bool = True) -> capf_pb2.CapfParametersReply:
        return capf_pb2.CapfParametersReply(service=stored.scope("service"), enterprise=stored.scope("enterprise"),
                                            events=list(events), delivery_pending=not delivered)

    async def GetParameters(self, request, context):  # noqa: N802
        """The stored values: service values apply from the next CAPF start."""
        return self._parameters_reply(await load_parameters(self.service.db))

    async def _set(self, scope: Scope, request, context):
        svc = self.service
        try:
            # stored, audited and its RST-6 / RST-8 events staged in one transaction (outbox)
            _, events, delivered = await svc.domain.set_parameters(change_actor(svc, context), scope,
                                                                   dict(request.values))
        except ParameterError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, bounded(str(exc)))
        fresh = await load_parameters(svc.db)
        if scope == "enterprise":
            svc.apply_enterprise(fresh)
        return self._parameters_reply(fresh, events, delivered)

    async def SetServiceParameters(self, request, context):  # noqa: N802
        return await self._set("service", request, context)

    async def SetEnterpriseParameters(self, request, context):  # noqa: N802
        return await self._set("enterprise", request, context)

    # --- CHK-8 ------------------------------------------------------------------------------
    async def CheckLscs(self, request, context):  # noqa: N802
        """Devices in a secure mode whose model has no MIC need an LSC; which have one? The
        devices are call control's (`CallManager/ListDevices`); unanswered: UNAVAILABLE."""
        svc = self.service
        try:
            rows = await svc.devices.secure()
        except DevicesUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, bounded(str(exc)))
        needing = []
        for name, model in rows:
            try:
                caps = capabilities(model)
            except PolicyViolation:
                continue
            if caps.has(Feature.LSC) and not caps.has(Feature.MIC):
                needing.append(name)
        missing = set(await svc.store.devices_missing_lsc(needing))
        return capf_pb2.LscCheckReply(missing=[d for d in needing if d in missing],
                                      installed=[d for d in needing if d not in missing])

    # --- offline CA -------------------------------------------------------------------------
    async def ExportCsrs(self, request, context):  # noqa: N802
        """The CSRs waiting for the third-party CA, oldest first."""
        records = await self.service.store.awaiting_csrs()
        return capf_pb2.CsrExportReply(csrs=[capf_pb2.CsrEntry(
            device=r.device_name, operation_id=r.op_id, csr_der=r.csr_der, requested_unix=_unix(r.requested_at),
            key_sha256=r.key_sha256) for r in records])

    async def ImportCertificates(self, request, context):  # noqa: N802
        svc = self.service
        if not request.files:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no certificate file given")
        if len(request.files) > offline.MAX_IMPORT_FILES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"at most {offline.MAX_IMPORT_FILES} certificate files per import")
        try:
            ca = load_third_party_ca(svc.state_dir)
        except LscError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, bounded(f"third-party CA file unreadable: {exc}"))
        if ca is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "no third-party CA configured: import its certificate first (ccmsec capf set-ca FILE)")
        results = []
        for f in request.files:
            name = f.name[:255]
            if len(f.data) > MAX_IMPORT_BYTES:
                out = offline.ImportOutcome(name, False, f"{len(f.data)} bytes: larger than a certificate file "
                                                         f"({MAX_IMPORT_BYTES} bytes at most)")
            else:
                out = await svc.domain.import_certificate(change_actor(svc, context), ca, name, bytes(f.data))
            result = capf_pb2.CertificateImportResult(name=out.name, accepted=out.accepted, reason=out.reason,
                                                      device=out.device, operation_id=out.op_id)
            if out.certificate is not None:
                result.certificate.CopyFrom(certificate_message(out.certificate, common_pb2.ROLE_LSC))
            log.info("CAPF offline import %s: %s", name, "accepted" if out.accepted else f"refused: {out.reason}",
                     extra={"device": out.device, "operation_id": out.op_id})
            results.append(result)
        return capf_pb2.CertificateImportReply(results=results)

    async def SetThirdPartyCa(self, request, context):  # noqa: N802
        try:
            cert = load_one_certificate(bytes(request.certificate), "the CA certificate")
            path = await self.service.domain.set_third_party_ca(change_actor(self.service, context), cert)
        except LscError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, bounded(str(exc)))
        log.info("CAPF third-party CA set", extra={"path": str(path), "subject": cert.subject.rfc4514_string()})
        return certificate_message(cert, common_pb2.ROLE_CAPF)

    async def GetThirdPartyCa(self, request, context):  # noqa: N802
        try:
            cert = load_third_party_ca(self.service.state_dir)
        except LscError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, bounded(str(exc)))
        if cert is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no third-party CA configured (ccmsec capf set-ca FILE)")
        return certificate_message(cert, common_pb2.ROLE_CAPF)

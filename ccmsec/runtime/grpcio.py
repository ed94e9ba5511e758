"""gRPC over mutual TLS: servers with health checking and reflection (v1 and v1alpha), and client
channels.

Every internal port requires a client certificate issued by the cluster CA; a client without one
fails the TLS handshake. Every method of every service registered here — health and reflection
included — is then authorized against `ccmsec.runtime.rpc_policy` by the caller's identity before
its handler runs (`ccmsec.runtime.authz`, default deny).
"""

from __future__ import annotations

from typing import Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha import _async as reflection_aio

from ccmsec.runtime import reflection_v1
from ccmsec.runtime.authz import Gate, guard_servicer
from ccmsec.runtime.identity import TlsIdentity
from ccmsec.runtime.logs import TRACE_METADATA_KEY, current_trace_id

_OPTIONS = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.so_reuseport", 0),
]


def server_credentials(identity: TlsIdentity) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(identity.key_pem, identity.cert_pem)],
        root_certificates=identity.ca_pem,
        require_client_auth=True,
    )


def channel_credentials(identity: TlsIdentity) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=identity.ca_pem,
        private_key=identity.key_pem,
        certificate_chain=identity.cert_pem,
    )


DEGRADED_KEY = "ccmsec-degraded"   # trailing metadata of a health answer: why it is not SERVING
_ASCII_FOR = {"\u2014": "-", "\u2013": "-", "\u2026": "...", "\u2018": "'", "\u2019": "'",
              "\u201c": '"', "\u201d": '"', "\u2192": "->"}


def metadata_text(text: str) -> str:
    """`text` as an ASCII metadata value: gRPC refuses any other byte, and a health answer carrying
    one failed whole (INTERNAL "Invalid metadata"), so a DEGRADED service read as UNREACHABLE."""
    return "".join(c if " " <= c <= "~" else _ASCII_FOR.get(c, "?") for c in text)


class _Health(health.aio.HealthServicer):
    """gRPC health that also says why it is NOT_SERVING: a degraded service (its event stream or a
    consumer lost, BUS-5) answers NOT_SERVING with the reason in the `ccmsec-degraded` trailer, so
    `ccmsec status` and the container healthcheck print DEGRADED and the reason."""

    degraded = ""

    async def Check(self, request, context):
        reply = await super().Check(request, context)
        if self.degraded:
            context.set_trailing_metadata(((DEGRADED_KEY, metadata_text(self.degraded)[:400]),))
        return reply


class GrpcServer:
    """A grpc.aio server bound to host:port with mTLS, per-method authorization, health,
    reflection and metrics. `gate.on_denied` receives each reported refusal."""

    def __init__(self, identity: TlsIdentity, host: str, port: int, *, metrics: bool = True):
        self._metrics = metrics
        self.server = grpc.aio.server(options=_OPTIONS)
        self.gate = Gate(str(identity.identity))
        self.health = _Health()
        guard_servicer(self.health, health.SERVICE_NAME, self.gate, metrics=False)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection_v1.ensure_registered()
        self._service_names: list[str] = [health.SERVICE_NAME, reflection_v1.SERVICE_NAME,
                                          reflection.SERVICE_NAME]
        self.address = f"{host}:{port}"
        self._identity = identity

    def add(self, add_fn, servicer, service_full_name: str) -> None:
        """Register a servicer, e.g. add(capf_pb2_grpc.add_CapfServicer_to_server, impl, 'ccmsec.v1.Capf').
        Each of its proto methods is authorized (and counted) before the handler runs."""
        guard_servicer(servicer, service_full_name, self.gate, metrics=self._metrics)
        add_fn(servicer, self.server)
        self._service_names.append(service_full_name)

    async def start(self) -> None:
        # Server reflection in its current version (v1) and the older v1alpha, one servicer each
        # (each wrapped under its own method name for the policy).
        names = reflection_aio.ReflectionServicer(self._service_names)
        guard_servicer(names, reflection.SERVICE_NAME, self.gate, metrics=False)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(names, self.server)
        names_v1 = reflection_aio.ReflectionServicer(self._service_names)
        guard_servicer(names_v1, reflection_v1.SERVICE_NAME, self.gate, metrics=False)
        reflection_v1.add_v1_servicer(names_v1, self.server)
        bound = self.server.add_secure_port(self.address, server_credentials(self._identity))
        if not bound:
            raise OSError(f"cannot bind gRPC port {self.address} (address in use or not local)")
        await self.server.start()

    async def set_serving(self, serving: bool, services: Iterable[str] | None = None) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ["", *(services if services is not None else self._service_names[3:])]:
            await self.health.set(name, status)

    async def set_degraded(self, reason: str) -> None:
        """NOT_SERVING with `reason` (health trailer), or SERVING again when `reason` is ""."""
        self.health.degraded = " ".join(reason.split())
        await self.set_serving(not reason)

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


def _with_trace(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    trace = current_trace_id()
    if not trace:
        return details
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    if TRACE_METADATA_KEY not in metadata:
        metadata.add(TRACE_METADATA_KEY, trace)
    return grpc.aio.ClientCallDetails(details.method, details.timeout, metadata, details.credentials,
                                      details.wait_for_ready)


class _TraceUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(_with_trace(details), request)


class _TraceUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(_with_trace(details), request)


class _TraceStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, request_iterator):
        return await continuation(_with_trace(details), request_iterator)


class _TraceStreamStream(grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, request_iterator):
        return await continuation(_with_trace(details), request_iterator)


_TRACE_INTERCEPTORS = (_TraceUnaryUnary(), _TraceUnaryStream(), _TraceStreamUnary(), _TraceStreamStream())


RECONNECT_BACKOFF_MS = 2000


def secure_channel(identity: TlsIdentity, host: str, port: int, server_name: str) -> grpc.aio.Channel:
    """A client channel that presents `identity` and expects the server certificate for `server_name`.
    Calls made while a trace id is bound carry it as metadata `x-ccmsec-trace-id`. A peer that was
    away is reached again within RECONNECT_BACKOFF_MS of coming back (gRPC's default back-off grows
    to two minutes, so a service that restarted stayed unreachable from a cached channel that long)."""
    return grpc.aio.secure_channel(
        f"{host}:{port}",
        channel_credentials(identity),
        options=[("grpc.ssl_target_name_override", server_name), *_OPTIONS[:2],
                 ("grpc.initial_reconnect_backoff_ms", 250), ("grpc.min_reconnect_backoff_ms", 250),
                 ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS)],
        interceptors=_TRACE_INTERCEPTORS,
    )


async def check_health(identity: TlsIdentity, host: str, port: int, server_name: str,
                       timeout: float = 2.0) -> str:
    """Return the overall health status name (SERVING, NOT_SERVING, DEGRADED, ...) of a service."""
    return (await health_detail(identity, host, port, server_name, timeout))[0]


async def health_detail(identity: TlsIdentity, host: str, port: int, server_name: str,
                        timeout: float = 2.0) -> tuple[str, str]:
    """(status, reason): DEGRADED and its reason when the service says why it is not serving."""
    async with secure_channel(identity, host, port, server_name) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        call = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        reply = await call
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            for key, value in (await call.trailing_metadata()) or ():
                if key == DEGRADED_KEY:
                    return "DEGRADED", value if isinstance(value, str) else value.decode(errors="replace")
        return status, ""

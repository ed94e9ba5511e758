"""gRPC face of the gateway: MGCP semantics in, `Gateway` calls, MGCP codes out as statuses."""

from __future__ import annotations

import grpc

from ccmsec.media.keys import from_proto
from ccmsec.media.srtp import SrtpSuite
from ccmsec.runtime.servicer import StatusServicerMixin, abort
from ccmsec_proto import srtp_gateway_pb2 as pb
from ccmsec_proto import srtp_gateway_pb2_grpc

from . import pstn
from .clustermode import ClusterModeUnknown
from .gateway import Connection, SecurityRefused
from .mgcp import ConnectionMode, MgcpError, parse_local_options

_STATUS = {
    MgcpError.UNKNOWN_ENDPOINT: grpc.StatusCode.NOT_FOUND,
    MgcpError.BAD_CONNECTION_ID: grpc.StatusCode.NOT_FOUND,
    MgcpError.UNKNOWN_CALL_ID: grpc.StatusCode.NOT_FOUND,
    MgcpError.NO_RESOURCES: grpc.StatusCode.RESOURCE_EXHAUSTED,
    MgcpError.TRANSIENT: grpc.StatusCode.UNAVAILABLE,
}


def stats(conn: Connection) -> pb.ConnectionStats:
    conn.media.sync()     # a leg on the relay's C path keeps its counters there
    c = conn.media.stream.counters
    return pb.ConnectionStats(
        connection_id=conn.id, endpoint=str(conn.endpoint), call_id=conn.call_id,
        packets_sent=c.sent, octets_sent=conn.media.octets_out, packets_received=c.received,
        octets_received=conn.media.octets_in, packets_lost=c.lost,
        refused_authentication=c.refused_authentication, refused_replay=c.refused_replay,
        malformed=c.malformed + c.foreign, srtp=conn.srtp, mode=int(conn.mode), remote=conn.remote,
        local=conn.local, dialled_number=conn.number)


class SrtpGatewayServicer(StatusServicerMixin, srtp_gateway_pb2_grpc.SrtpGatewayServicer):
    @property
    def gw(self):
        return self.service.gateway

    async def _key(self, material, context):
        if not material.ByteSize():
            return None
        try:
            return from_proto(material)
        except ValueError as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"send_key: {exc}")

    async def _check_security(self, srtp: bool, context) -> None:
        """GW-4: SRTP on the gateway only in a mixed-mode cluster."""
        if not srtp:
            return
        try:
            mixed = await self.service.cluster_mode.is_mixed()
        except ClusterModeUnknown as exc:
            await abort(context, grpc.StatusCode.UNAVAILABLE, f"GW-4: {exc}")
        if not mixed:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                        "GW-4: gateway SRTP needs the cluster in mixed mode (it is non-secure); "
                        "use RTP or run the CTL client first")

    async def _run(self, context, coro):
        try:
            return await coro
        except MgcpError as exc:
            await abort(context, _STATUS.get(exc.code, grpc.StatusCode.INVALID_ARGUMENT), str(exc))
        except SecurityRefused as exc:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))

    def _reply(self, conn: Connection) -> pb.ConnectionReply:
        return pb.ConnectionReply(connection_id=conn.id, endpoint=str(conn.endpoint),
                                  local_sdp=self.gw.local_sdp(conn), srtp=conn.srtp, mode=int(conn.mode))

    async def CreateConnection(self, request, context):  # noqa: N802
        key = await self._key(request.send_key, context)
        await self._check_security(request.srtp, context)
        mode = await self._run(context, _mode(request.mode, ConnectionMode.SENDRECV))
        options = await self._run(context, _options(request.local_connection_options))
        conn = await self._run(context, self.gw.create(
            endpoint=request.endpoint, call_id=request.call_id, number=request.dialled_number, mode=mode,
            remote_sdp=request.remote_sdp, srtp=request.srtp, send_key=key, options=options))
        return self._reply(conn)

    async def ModifyConnection(self, request, context):  # noqa: N802
        key = await self._key(request.send_key, context)
        if request.change_security:
            await self._check_security(request.srtp, context)
        mode = await self._run(context, _mode(request.mode, None))
        options = await self._run(context, _options(request.local_connection_options))
        conn = await self._run(context, self.gw.modify(
            endpoint=request.endpoint, call_id=request.call_id, connection_id=request.connection_id,
            mode=mode, remote_sdp=request.remote_sdp, change_security=request.change_security,
            srtp=request.srtp, send_key=key, options=options))
        return self._reply(conn)

    async def DeleteConnection(self, request, context):  # noqa: N802
        doomed = await self._run(context, self.gw.delete(
            endpoint=request.endpoint, call_id=request.call_id, connection_id=request.connection_id))
        return pb.DeleteConnectionReply(deleted=[stats(c) for c in doomed])

    async def AuditEndpoint(self, request, context):  # noqa: N802
        async def audit():
            return self.gw.audit(request.endpoint)
        found = await self._run(context, audit())
        return pb.AuditEndpointReply(
            endpoints=[pb.EndpointInfo(endpoint=str(e), connections=[stats(c) for c in conns])
                       for e, conns in found],
            srtp_capable=self.gw.srtp_capable,
            suites=[int(s) for s in SrtpSuite] if self.gw.srtp_capable else [],
            numbers=[f"{n} {what}" for n, (what, _) in pstn.NUMBERS.items()])


async def _mode(value: int, default):
    return ConnectionMode.from_proto(value, default)


async def _options(text: str):
    return parse_local_options(text)

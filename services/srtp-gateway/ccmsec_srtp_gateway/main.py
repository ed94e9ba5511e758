"""Entry point of the srtp-gateway service: an MGCP-controlled media gateway with the SRTP
package. Call control drives it over gRPC on mutual TLS (GW-4, CHK-12); media flows over UDP
between its IP leg (RTP or SRTP through libsrtp) and a simulated telephone network."""

from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import Field, field_validator

from ccmsec.aio import relay_core

from ccmsec.runtime import bus as bus_mod
from ccmsec.runtime import metrics
from ccmsec.runtime.service import Service, run_service
from ccmsec.runtime.settings import ServiceSettings
from ccmsec_proto import callmanager_pb2_grpc, common_pb2, srtp_gateway_pb2_grpc

from .clustermode import ClusterModeWatcher
from .gateway import Gateway
from .servicer import SrtpGatewayServicer


class GatewaySettings(ServiceSettings):
    gateway_name: str = Field("gw1", pattern=r"^[A-Za-z0-9][A-Za-z0-9.\-]{0,62}$")  # endpoint domain
    gateway_lines: int = Field(24, ge=1, le=4096)      # aaln/S1/SU0/1..N
    gateway_srtp: bool = True                          # False: a gateway without SRTP support (GW-2)
    # the relay's packet path: "auto" C when it builds (else Python, logged), "c" or nothing, "python"
    relay_core: Literal["auto", "c", "python"] = "auto"

    @field_validator("relay_core", mode="before")
    @classmethod
    def _relay_core_any_case(cls, value):
        return value.strip().lower() if isinstance(value, str) else value


def media_address(host: str) -> str | None:
    """The address peers send media to when the gateway binds every address (in a container): its
    own host name's address (the container's on the cluster's network); None otherwise."""
    import socket

    from ccmsec_srtp_gateway.gateway import WILDCARDS

    if host not in WILDCARDS:
        return None
    try:
        address = socket.gethostbyname(socket.gethostname())
    except OSError:
        return None
    return None if address.startswith("127.") else address


class SrtpGatewayService(Service):
    role = "srtp-gateway"
    settings_class = GatewaySettings

    def __init__(self, settings):
        super().__init__(settings)
        self.gateway = Gateway(settings.gateway_name, settings.host, lines=settings.gateway_lines,
                               max_connections=max(settings.gateway_lines, 4096),
                               srtp_capable=settings.gateway_srtp, advertise=media_address(settings.host))
        self.cluster_mode = ClusterModeWatcher(self._ask_cluster_mode)

    async def _ask_cluster_mode(self) -> int:
        stub = callmanager_pb2_grpc.CallManagerStub(self.peer_channel("callmanager"))
        return (await stub.GetClusterMode(common_pb2.Empty(), timeout=5)).mode

    def status_details(self) -> dict[str, str]:
        conns = list(self.gateway.connections.values())
        return {"gateway": self.gateway.name, "connections": str(len(conns)),
                "srtp_connections": str(sum(c.srtp for c in conns)),
                "srtp_capable": str(self.gateway.srtp_capable).lower(),
                "connections_created": str(self.gateway.totals["created"]),
                "relay_path": "c" if self.gateway.relay_core is not None else "python"}

    def _connections_by_media(self):
        """Scrape-time sample (the metrics thread only reads a copy)."""
        conns = list(self.gateway.connections.values())
        srtp = sum(1 for c in conns if c.srtp)
        return [((self.gateway.name, "rtp"), len(conns) - srtp), ((self.gateway.name, "srtp"), srtp)]

    async def setup(self) -> None:
        # built before serving (a gateway asked for "c" that cannot build it does not start)
        self.gateway.relay_core = await asyncio.to_thread(relay_core.load, self.settings.relay_core)
        metrics.add_sampler(metrics.GATEWAY_CONNECTIONS, self._connections_by_media)
        self.grpc.add(srtp_gateway_pb2_grpc.add_SrtpGatewayServicer_to_server, SrtpGatewayServicer(self),
                      "ccmsec.v1.SrtpGateway")
        await self.subscribe(bus_mod.subject_for("mode.changed"), "mode", self.cluster_mode.on_event)

    async def teardown(self) -> None:
        metrics.remove_sampler(metrics.GATEWAY_CONNECTIONS, self._connections_by_media)
        await self.gateway.close()


def main() -> None:
    run_service(SrtpGatewayService)


if __name__ == "__main__":
    main()

"""Entry point of the srtp-gateway service."""

from __future__ import annotations

from ccmsec.runtime.service import Service, run_service
from ccmsec.runtime.servicer import StatusServicerMixin
from ccmsec_proto import srtp_gateway_pb2_grpc


class SrtpGatewayServicer(StatusServicerMixin, srtp_gateway_pb2_grpc.SrtpGatewayServicer):
    pass


class SrtpGatewayService(Service):
    role = "srtp-gateway"

    async def setup(self) -> None:
        self.grpc.add(srtp_gateway_pb2_grpc.add_SrtpGatewayServicer_to_server, SrtpGatewayServicer(self), "ccmsec.v1.SrtpGateway")


def main() -> None:
    run_service(SrtpGatewayService)


if __name__ == "__main__":
    main()

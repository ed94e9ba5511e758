"""Entry point of the capf service."""

from __future__ import annotations

from ccmsec.runtime.service import Service, run_service
from ccmsec.runtime.servicer import StatusServicerMixin
from ccmsec_proto import capf_pb2_grpc


class CapfServicer(StatusServicerMixin, capf_pb2_grpc.CapfServicer):
    pass


class CapfService(Service):
    role = "capf"

    async def setup(self) -> None:
        self.grpc.add(capf_pb2_grpc.add_CapfServicer_to_server, CapfServicer(self), "ccmsec.v1.Capf")


def main() -> None:
    run_service(CapfService)


if __name__ == "__main__":
    main()

"""Entry point of the srst service."""

from __future__ import annotations

from ccmsec.runtime.service import Service, run_service
from ccmsec.runtime.servicer import StatusServicerMixin
from ccmsec_proto import srst_pb2_grpc


class SrstServicer(StatusServicerMixin, srst_pb2_grpc.SrstServicer):
    pass


class SrstService(Service):
    role = "srst"

    async def setup(self) -> None:
        self.grpc.add(srst_pb2_grpc.add_SrstServicer_to_server, SrstServicer(self), "ccmsec.v1.Srst")


def main() -> None:
    run_service(SrstService)


if __name__ == "__main__":
    main()

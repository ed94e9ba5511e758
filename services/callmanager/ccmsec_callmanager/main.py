"""Entry point of the callmanager service."""

from __future__ import annotations

from ccmsec.runtime.service import Service, run_service
from ccmsec.runtime.servicer import StatusServicerMixin
from ccmsec_proto import callmanager_pb2_grpc


class CallManagerServicer(StatusServicerMixin, callmanager_pb2_grpc.CallManagerServicer):
    pass


class CallManagerService(Service):
    role = "callmanager"

    async def setup(self) -> None:
        self.grpc.add(callmanager_pb2_grpc.add_CallManagerServicer_to_server, CallManagerServicer(self), "ccmsec.v1.CallManager")


def main() -> None:
    run_service(CallManagerService)


if __name__ == "__main__":
    main()

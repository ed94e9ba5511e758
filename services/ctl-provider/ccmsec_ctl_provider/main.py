"""Entry point of the ctl-provider service."""

from __future__ import annotations

from ccmsec.runtime.service import Service, run_service
from ccmsec.runtime.servicer import StatusServicerMixin
from ccmsec_proto import ctl_provider_pb2_grpc


class CtlProviderServicer(StatusServicerMixin, ctl_provider_pb2_grpc.CtlProviderServicer):
    pass


class CtlProviderService(Service):
    role = "ctl-provider"

    async def setup(self) -> None:
        self.grpc.add(ctl_provider_pb2_grpc.add_CtlProviderServicer_to_server, CtlProviderServicer(self), "ccmsec.v1.CtlProvider")


def main() -> None:
    run_service(CtlProviderService)


if __name__ == "__main__":
    main()

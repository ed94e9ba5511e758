"""Entry point of the phone-sim service."""

from __future__ import annotations

from ccmsec.runtime.service import Service, run_service
from ccmsec.runtime.servicer import StatusServicerMixin
from ccmsec_proto import phone_sim_pb2_grpc


class PhoneSimServicer(StatusServicerMixin, phone_sim_pb2_grpc.PhoneSimServicer):
    pass


class PhoneSimService(Service):
    role = "phone-sim"

    async def setup(self) -> None:
        self.grpc.add(phone_sim_pb2_grpc.add_PhoneSimServicer_to_server, PhoneSimServicer(self), "ccmsec.v1.PhoneSim")


def main() -> None:
    run_service(PhoneSimService)


if __name__ == "__main__":
    main()

"""Entry point of the tftp-signer service."""

from __future__ import annotations

from ccmsec.runtime.service import Service, run_service
from ccmsec.runtime.servicer import StatusServicerMixin
from ccmsec_proto import tftp_signer_pb2_grpc


class TftpSignerServicer(StatusServicerMixin, tftp_signer_pb2_grpc.TftpSignerServicer):
    pass


class TftpSignerService(Service):
    role = "tftp-signer"

    async def setup(self) -> None:
        self.grpc.add(tftp_signer_pb2_grpc.add_TftpSignerServicer_to_server, TftpSignerServicer(self), "ccmsec.v1.TftpSigner")


def main() -> None:
    run_service(TftpSignerService)


if __name__ == "__main__":
    main()

"""Entry point of the keymanager service: the key manager function of call control.

For every secure call it generates two independent sets of SRTP master values (ENC-4): one for
A→B and one for B→A, from the operating system's CSPRNG. Keys are never logged (ENC-5).
"""

from __future__ import annotations

import secrets

import grpc

from ccmsec.runtime.service import Service, run_service
from ccmsec.runtime.servicer import StatusServicerMixin
from ccmsec_proto import common_pb2, keymanager_pb2, keymanager_pb2_grpc

# Master key and salt sizes per suite (RFC 3711, RFC 7714).
SUITE_SIZES = {
    common_pb2.AES_CM_128_HMAC_SHA1_80: (16, 14),
    common_pb2.AES_CM_128_HMAC_SHA1_32: (16, 14),
    common_pb2.AEAD_AES_128_GCM: (16, 12),
    common_pb2.AEAD_AES_256_GCM: (32, 12),
}


def new_key_material(suite: int) -> common_pb2.KeyMaterial:
    key_len, salt_len = SUITE_SIZES[suite]
    return common_pb2.KeyMaterial(suite=suite, master_key=secrets.token_bytes(key_len),
                                  master_salt=secrets.token_bytes(salt_len))


class KeyManagerServicer(StatusServicerMixin, keymanager_pb2_grpc.KeyManagerServicer):
    async def GenerateCallKeys(self, request, context):  # noqa: N802
        suite = request.suite or common_pb2.AES_CM_128_HMAC_SHA1_80
        if suite not in SUITE_SIZES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unsupported SRTP suite {suite}")
        self.service.calls_keyed += 1
        return keymanager_pb2.CallKeysReply(
            call_id=request.call_id, a_to_b=new_key_material(suite), b_to_a=new_key_material(suite)
        )


class KeyManagerService(Service):
    role = "keymanager"

    def __init__(self, settings):
        super().__init__(settings)
        self.calls_keyed = 0

    def status_details(self) -> dict[str, str]:
        return {"calls_keyed": str(self.calls_keyed)}

    async def setup(self) -> None:
        self.grpc.add(keymanager_pb2_grpc.add_KeyManagerServicer_to_server, KeyManagerServicer(self),
                      "ccmsec.v1.KeyManager")


def main() -> None:
    run_service(KeyManagerService)


if __name__ == "__main__":
    main()

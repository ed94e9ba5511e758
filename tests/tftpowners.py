"""The owners the TFTP server asks (issue 9 §5), for tests of tftp-signer that do not start whole
callmanager, CAPF and CTL Provider processes (their SCCP, CAPF and CTL listeners add nothing to
these questions): each owner's real servicer behind the real authorization gate, on mutual TLS with
the owner's own identity, at the address the TFTP server's settings name for it (`peers`, default
gRPC port), on the database the test shares — engines guarded and migrated as that owner's
(tests/ownerdb.py):

* call control — `CallManager/GetDeviceConfigs` (devices, pools, SRST references);
* CAPF — `Capf/GetPendingOperations`;
* the CTL Provider — `CtlProvider/GetSecurityMode` (its `TrustOperations.mode_state`).

    async with tftp_owners(data, db_url) as owners:
        settings = load_settings(..., peers={**owners.peers, "srst": ...})
        await owners.stop("callmanager")      # call control down: the TFTP server must say so
        await owners.start("callmanager")     # and back
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

from ccmsec.runtime.grpcio import GrpcServer
from ccmsec.runtime.identity import service_identity
from ccmsec.runtime.service import GRPC_PORT_DEFAULT
from ccmsec_capf.servicer import CapfServicer
from ccmsec_callmanager.servicer import CallManagerServicer
from ccmsec_ctl_provider.servicer import CtlProviderServicer
from ccmsec_ctl_provider.trust import TrustOperations
from ccmsec_proto import callmanager_pb2_grpc, capf_pb2_grpc, ctl_provider_pb2_grpc
from tests.deviceowner import loopback_host
from tests.ownerdb import owner_db

_SERVICES = {
    "callmanager": (callmanager_pb2_grpc.add_CallManagerServicer_to_server, CallManagerServicer,
                    "ccmsec.v1.CallManager"),
    "capf": (capf_pb2_grpc.add_CapfServicer_to_server, CapfServicer, "ccmsec.v1.Capf"),
    "ctl-provider": (ctl_provider_pb2_grpc.add_CtlProviderServicer_to_server, CtlProviderServicer,
                     "ccmsec.v1.CtlProvider"),
}


class TftpOwners:
    def __init__(self, data, db_url, stack: contextlib.AsyncExitStack, peers: dict[str, str] | None = None):
        self.data, self.db_url, self._stack = data, db_url, stack
        self.peers = {role: (peers or {}).get(role) or loopback_host() for role in _SERVICES}
        self.servers: dict[str, GrpcServer] = {}
        self._dbs: dict[str, object] = {}

    async def start(self, role: str) -> None:
        if role in self.servers:
            return
        if role not in self._dbs:
            self._dbs[role] = await self._stack.enter_async_context(
                owner_db(self.url_of(role), role, data_dir=self.data))
        host = self.peers[role]
        add, servicer, name = _SERVICES[role]
        holder = SimpleNamespace(db=self._dbs[role], node=role, settings=SimpleNamespace(tftp_path="cluster1"))
        holder.trust = TrustOperations(holder)
        server = GrpcServer(service_identity(self.data, role, role, host), host, GRPC_PORT_DEFAULT, metrics=False)
        holder.grpc = server
        server.add(add, servicer(holder), name)
        await server.start()
        await server.set_serving(True)
        self.servers[role] = server

    def url_of(self, role: str) -> str:
        """`db_url` (one file all share), or `db_url(role)`: each owner's own, as the local runner."""
        return self.db_url(role) if callable(self.db_url) else self.db_url

    async def stop(self, role: str) -> None:
        server = self.servers.pop(role, None)
        if server is not None:
            await server.stop(0)

    def reads(self, identity):
        """tftp-signer's client of these owners (OwnerReads), presenting `identity`, for tests that
        build a TftpContent without the whole service."""
        from ccmsec.runtime.grpcio import secure_channel
        from ccmsec_tftp_signer.owners import OwnerReads

        channels = {}

        def channel(role):
            if role not in channels:
                channels[role] = secure_channel(identity, self.peers[role], GRPC_PORT_DEFAULT, role)
            return channels[role]

        self._client_channels = channels
        return OwnerReads({role: (lambda role=role: channel(role)) for role in _SERVICES})

    async def close_reads(self) -> None:
        for channel in getattr(self, "_client_channels", {}).values():
            await channel.close()


@contextlib.asynccontextmanager
async def tftp_owners(data, db_url, *, running=("callmanager", "capf", "ctl-provider"),
                      peers: dict[str, str] | None = None):
    async with contextlib.AsyncExitStack() as stack:
        owners = TftpOwners(data, db_url, stack, peers)
        try:
            for role in running:
                await owners.start(role)
            yield owners
        finally:
            for role in list(owners.servers):
                await owners.stop(role)

"""Call control's device look-ups as CAPF reaches them in a cluster, for tests of CAPF that do not
start a whole callmanager (its SCCP listeners, PKI and admin API add nothing to a look-up): the real
`CallManagerServicer` behind the real authorization gate, on mutual TLS with callmanager's own
identity, at the address CAPF's settings name for callmanager (`peers`, the default gRPC port), on
the database the test shares — engine guarded and migrated as callmanager's (tests/ownerdb.py).
Devices are added as callmanager would (its table, its write guard).

    async with device_owner(data, host, db_url) as owner:
        await owner.add_device("SEP…", "7960")
        ... CapfService(load_settings(..., peers={"callmanager": host})) ...
        await owner.stop()   # call control down: CAPF must say so
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from types import SimpleNamespace

from ccmsec.db.devices import Device
from ccmsec.runtime.grpcio import GrpcServer
from ccmsec.runtime.identity import service_identity
from ccmsec.runtime.service import GRPC_PORT_DEFAULT
from ccmsec_callmanager.servicer import CallManagerServicer
from ccmsec_proto import callmanager_pb2_grpc
from tests.ownerdb import owner_db


def loopback_host() -> str:
    """A loopback address of its own, so the default gRPC port is free there."""
    return f"127.{random.randint(20, 250)}.{random.randint(0, 255)}.{random.randint(2, 250)}"


class DeviceOwner:
    def __init__(self, server: GrpcServer, db_url: str, host: str):
        self.server, self.db_url, self.host = server, db_url, host
        self.running = True

    async def add_device(self, name: str, model: str = "7960", security_mode: str = "non-secure") -> None:
        async with owner_db(self.db_url, "callmanager") as db, db() as s, s.begin():
            s.add(Device(name=name, model=model, security_mode=security_mode))

    async def stop(self) -> None:
        if self.running:
            self.running = False
            await self.server.stop(0)


@contextlib.asynccontextmanager
async def device_owner(data: Path, host: str, db_url: str):
    identity = service_identity(data, "callmanager", "callmanager", host)
    async with owner_db(db_url, "callmanager") as db:
        server = GrpcServer(identity, host, GRPC_PORT_DEFAULT, metrics=False)
        holder = SimpleNamespace(db=db, node="callmanager", grpc=server)
        server.add(callmanager_pb2_grpc.add_CallManagerServicer_to_server, CallManagerServicer(holder),
                   "ccmsec.v1.CallManager")
        await server.start()
        await server.set_serving(True)
        owner = DeviceOwner(server, db_url, host)
        try:
            yield owner
        finally:
            await owner.stop()

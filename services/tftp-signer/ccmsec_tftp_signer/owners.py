"""What the TFTP server builds files from is other services' state (issue 9 §5): the cluster mode
is the CTL Provider's, devices, pools and SRST references call control's, CAPF operations CAPF's.
Each is asked of its owner over gRPC, never read from its tables:

* `CtlProvider/GetSecurityMode` — the cluster mode (AUTH-3: sign or not);
* `CallManager/GetDeviceConfigs` — every device with its hardening, pool and the pool's SRST
  reference (one snapshot, streamed in pages);
* `Capf/GetPendingOperations` — the pending CAPF operation of each device (streamed in pages).

`OwnerReads.snapshot(names)` asks the three at once. An owner that does not answer (not started
yet, restarting, unreachable) raises `OwnersUnavailable` naming it and why; nothing is guessed.
An owner the configuration does not name (no `peers` entry: a stand-alone TFTP server) cannot
have changed anything: no CTL Provider → MODE-1's non-secure cluster, no CAPF → no operation,
no call control → no device.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable

import grpc

from ccmsec.domain import ClusterMode
from ccmsec.runtime.settings import SettingsError
from ccmsec_proto import (
    callmanager_pb2, callmanager_pb2_grpc, capf_pb2, capf_pb2_grpc, common_pb2, ctl_provider_pb2_grpc,
)

ASK_TIMEOUT = 5.0        # one owner's answer about a few devices (a request waits for it)
SNAPSHOT_TIMEOUT = 30.0  # one owner's whole answer about every device (10,000 on a loaded machine)


class OwnersUnavailable(Exception):
    """An owner did not answer: what is built from its state is not known now."""


@dataclass
class Snapshot:
    mode: ClusterMode
    devices: list[callmanager_pb2.DeviceConfigInput]
    operations: dict[str, capf_pb2.PendingOperation]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name} {exc.details() or ''}".strip()
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer in time"
    return str(exc) or type(exc).__name__


class OwnerReads:
    def __init__(self, channels: dict[str, Callable[[], grpc.aio.Channel]], timeout: float = ASK_TIMEOUT):
        """`channels`: role -> the mTLS channel to that owner (`Service.peer_channel`)."""
        self._channels = channels
        self.timeout = timeout
        self.asked = 0

    def _channel(self, role: str) -> grpc.aio.Channel | None:
        try:
            return self._channels[role]()
        except (KeyError, SettingsError):
            return None  # not configured: that owner cannot have changed anything

    async def _ask(self, role: str, what: str, call, timeout: float | None = None):
        try:
            return await asyncio.wait_for(call(), timeout or self.timeout)
        except (grpc.aio.AioRpcError, OSError, asyncio.TimeoutError, ValueError) as exc:
            raise OwnersUnavailable(f"{role} did not answer {what}: {_reason(exc)}") from None

    async def mode(self) -> ClusterMode:
        channel = self._channel("ctl-provider")
        if channel is None:
            return ClusterMode.NON_SECURE

        async def call():
            reply = await ctl_provider_pb2_grpc.CtlProviderStub(channel).GetSecurityMode(common_pb2.Empty())
            return ClusterMode.from_proto(reply.mode, default=ClusterMode.NON_SECURE)
        return await self._ask("ctl-provider", "GetSecurityMode", call)

    async def devices(self, names: list[str] | None) -> list[callmanager_pb2.DeviceConfigInput]:
        channel = self._channel("callmanager")
        if channel is None:
            return []

        async def call():
            out: list[callmanager_pb2.DeviceConfigInput] = []
            stream = callmanager_pb2_grpc.CallManagerStub(channel).GetDeviceConfigs(
                callmanager_pb2.DeviceConfigsRequest(devices=names or []))
            async for page in stream:
                out.extend(page.devices)
            return out
        return await self._ask("callmanager", "GetDeviceConfigs", call,
                               SNAPSHOT_TIMEOUT if names is None else None)

    async def operations(self, names: list[str] | None) -> dict[str, capf_pb2.PendingOperation]:
        channel = self._channel("capf")
        if channel is None:
            return {}

        async def call():
            out: dict[str, capf_pb2.PendingOperation] = {}
            stream = capf_pb2_grpc.CapfStub(channel).GetPendingOperations(
                capf_pb2.PendingOperationsRequest(devices=names or []))
            async for page in stream:
                for op in page.operations:
                    out[op.device] = op
            return out
        return await self._ask("capf", "GetPendingOperations", call,
                               SNAPSHOT_TIMEOUT if names is None else None)

    async def snapshot(self, names: list[str] | None = None) -> Snapshot:
        """The three owners asked at once (`names`: those devices only; None: every device)."""
        self.asked += 1
        results = await asyncio.gather(self.mode(), self.devices(names), self.operations(names),
                                       return_exceptions=True)
        problems = [str(r) for r in results if isinstance(r, BaseException)]
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, OwnersUnavailable):
                raise r
        if problems:
            raise OwnersUnavailable("; ".join(problems))
        mode, devices, operations = results
        return Snapshot(mode, devices, operations)

"""CAPF's device look-ups, asked of their owner: call control (issue 9 §5).

The `devices` table is callmanager's; CAPF never reads it. A schedule's device and its model
(DEV-3), a phone's CAPF session for a device without an operation (unknown device or not), and
CHK-8's devices in a secure mode come from `CallManager/GetDevice` and `CallManager/ListDevices`
(allowed to the capf role only, ccmsec/runtime/rpc_policy.py).

Two answers are kept apart: a device call control does not know (`None` / NOT_FOUND: a clear
refusal of the request) and call control not answering (`DevicesUnavailable`: the caller is told
so, and nothing is written — a schedule is refused before its transaction begins).
"""

from __future__ import annotations

import logging
from typing import Callable

import grpc

from ccmsec.domain import DeviceSecurityMode
from ccmsec.runtime.settings import SettingsError
from ccmsec_proto import callmanager_pb2, callmanager_pb2_grpc

log = logging.getLogger("ccmsec.capf")

ASK_TIMEOUT = 5.0  # seconds per look-up
SECURE_MODES = tuple(m for m in DeviceSecurityMode if m.is_secure)

Channel = Callable[[], grpc.aio.Channel]


class DevicesUnavailable(Exception):
    """Call control, the owner of the devices, could not be asked or did not answer."""


class CallManagerDevices:
    def __init__(self, channel: Channel, *, timeout: float = ASK_TIMEOUT):
        self._channel = channel
        self._timeout = timeout

    def _stub(self) -> callmanager_pb2_grpc.CallManagerStub:
        try:
            return callmanager_pb2_grpc.CallManagerStub(self._channel())
        except SettingsError as exc:  # no callmanager address in the configuration
            raise DevicesUnavailable(f"call control (the devices' owner) cannot be asked: {exc}") from None

    @staticmethod
    def _unavailable(method: str, exc: grpc.aio.AioRpcError) -> DevicesUnavailable:
        log.warning("call control did not answer %s: %s %s", method, exc.code().name, exc.details())
        return DevicesUnavailable(f"call control (the devices' owner) did not answer the device look-up: "
                                  f"{exc.code().name} {exc.details() or ''}".rstrip())

    async def model(self, device: str) -> str | None:
        """The device's model; None when call control does not know the device."""
        try:
            reply = await self._stub().GetDevice(callmanager_pb2.DeviceRequest(device=device),
                                                 timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return None  # unknown, or not even a device name call control would accept
            raise self._unavailable("GetDevice", exc) from None
        return reply.model

    async def exists(self, device: str) -> bool:
        return await self.model(device) is not None

    async def secure(self) -> list[tuple[str, str]]:
        """(name, model) of every device in a secure mode, by name (CHK-8)."""
        found: list[tuple[str, str]] = []
        after = ""
        while True:  # call control answers in pages by name
            request = callmanager_pb2.DevicesRequest(modes=[m.to_proto() for m in SECURE_MODES], after=after)
            try:
                reply = await self._stub().ListDevices(request, timeout=self._timeout)
            except grpc.aio.AioRpcError as exc:
                raise self._unavailable("ListDevices", exc) from None
            found += [(d.device, d.model) for d in reply.devices]
            if not reply.more or not reply.devices or reply.devices[-1].device <= after:
                return found  # the last page (or one that would not move on: never loop)
            after = reply.devices[-1].device

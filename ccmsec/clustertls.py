"""How a service learns the cluster's legacy-TLS setting (LATER-8) from its owner, the CTL
Provider: `CtlProvider/GetClusterTls`, asked while the service starts (a change restarts the
services that follow it), so that a service serving again after a change serves with it. When the
CTL Provider cannot answer then, the question is retried in the background with back-off; until
an answer the caller's listener stays TLS 1.2 only — unknown means off.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

import grpc

from ccmsec.runtime.settings import SettingsError
from ccmsec_proto import common_pb2, ctl_provider_pb2_grpc

log = logging.getLogger("ccmsec.clustertls")

ASK_TIMEOUT = 3.0
MAX_BACKOFF = 10.0

Channel = Callable[[], grpc.aio.Channel]
Apply = Callable[[bool], None]


async def _ask(channel: Channel) -> bool:
    stub = ctl_provider_pb2_grpc.CtlProviderStub(channel())
    return (await stub.GetClusterTls(common_pb2.Empty(), timeout=ASK_TIMEOUT)).legacy_tls


def _applied(apply: Apply, enabled: bool, who: str) -> None:
    apply(enabled)
    if enabled:
        log.warning("LATER-8: legacy TLS is on: %s also accepts TLS 1.0 (AES128-SHA, NULL-SHA)", who)


async def follow_legacy_tls(spawn: Callable[[Awaitable[None]], object], channel: Channel,
                            apply: Apply, *, who: str) -> None:
    """For a service's setup(): ask once now; if that fails, keep asking in the background.
    Without a CTL Provider in the configuration there is nobody to ask: legacy TLS stays off."""
    try:
        enabled = await _ask(channel)
    except SettingsError as exc:
        log.warning("%s: %s; legacy TLS stays off", who, exc)
        apply(False)
        return
    except grpc.aio.AioRpcError as exc:
        log.info("%s: legacy TLS setting not known yet (%s); TLS 1.2 only until the CTL Provider "
                 "answers", who, exc.code().name)
        spawn(_keep_asking(channel, apply, who))
        return
    _applied(apply, enabled, who)


async def _keep_asking(channel: Channel, apply: Apply, who: str) -> None:
    delay = 0.5
    while True:
        await asyncio.sleep(delay)
        try:
            enabled = await _ask(channel)
        except grpc.aio.AioRpcError:
            delay = min(delay * 2, MAX_BACKOFF)
            continue
        _applied(apply, enabled, who)
        return

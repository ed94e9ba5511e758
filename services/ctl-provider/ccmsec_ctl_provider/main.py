"""Entry point of the ctl-provider service: the CTL Provider (TLS 2444) and its gRPC API.

On start it reads its activation flag (CHK-1, off on a fresh cluster) and its TLS port from the
database — a stored port overrides CCMSEC_CTL_PROVIDER_PORT; changing it requires a restart (RST-7).
Then, before commits are served, it takes back a CTL publish a crash left unrecorded (CHK-6,
`TrustOperations.recover`); with the tftp-signer out of reach it starts DEGRADED, saying so, and
tries again every RECOVERY_RETRY seconds until it is done (or a commit's publish settled it). A
commit's publish whose take-back got no answer while running is retried by the same loop.
"""

from __future__ import annotations

import asyncio
import time

from ccmsec.db.cluster import provider_node
from ccmsec.domain import ClusterMode
from ccmsec.pki.tokens import TokenError, list_tokens
from ccmsec.runtime import metrics
from ccmsec.runtime.grpcio import secure_channel
from ccmsec.runtime.service import GRPC_PORT_DEFAULT, Service, run_service
from ccmsec.runtime.settings import resolve_host
from ccmsec_proto import ctl_provider_pb2, ctl_provider_pb2_grpc

from ccmsec_ctl_provider.certificates import gather, gather_call_control_nodes
from ccmsec_ctl_provider.listener import ProviderListener, server_ssl_context
from ccmsec_ctl_provider.servicer import CtlProviderServicer
from ccmsec_ctl_provider.provider_domain import ProviderDomain
from ccmsec_ctl_provider import trust as trust_mod
from ccmsec_ctl_provider.trust import TrustOperations

CERTIFICATE_CACHE_SECONDS = 2.0  # a burst of CTL clients costs one round of RPCs


class CtlProviderService(Service):
    role = "ctl-provider"

    def __init__(self, settings):
        super().__init__(settings)
        self.activated = False
        self.configured_port = settings.ctl_provider_port
        self.listening_port = 0
        self.listener: ProviderListener | None = None
        self.trust = TrustOperations(self)     # the mode, the CTL, the shared-TFTP registry
        self.domain = ProviderDomain(self)     # activation, port, legacy TLS
        self.certificate_origins: dict[str, str] = {}
        self._cache: tuple[float, list] | None = None
        self._bus_problem = ""
        self._take_back_retry: asyncio.Task | None = None  # CHK-6: `take_back_in_background`

    async def setup(self) -> None:
        async with self.db() as session, session.begin():
            row = await provider_node(session, self.node)
            self.activated = row.activated
            if row.port:
                self.configured_port = row.port
        self.listener = ProviderListener(self.node, server_ssl_context(self.identity),
                                         is_active=lambda: self.activated,
                                         certificates=self.server_certificates)
        await self.listener.start(self.settings.host, self.configured_port)
        self.listening_port = self.listener.port
        self.log.info("CTL Provider listening", extra={"port": self.listening_port,
                                                       "activated": self.activated})
        self.grpc.add(ctl_provider_pb2_grpc.add_CtlProviderServicer_to_server,
                      CtlProviderServicer(self), "ccmsec.v1.CtlProvider")
        # CHK-6: a publish a crash left unrecorded is taken back before any commit is served (the
        # gRPC server starts after set-up); one bounded try, then in the background while DEGRADED.
        if not await self.trust.recover(at_start=True):
            self.take_back_in_background()

    def take_back_in_background(self) -> None:
        """CHK-6: publishes left unrecorded and not taken back (at start, or a commit's whose
        take-back got no answer) are taken back by one retry loop, started unless it runs."""
        if self._take_back_retry is None or self._take_back_retry.done():
            self._take_back_retry = self.spawn(self._recover_until_done())

    async def _recover_until_done(self) -> None:
        """Every RECOVERY_RETRY seconds (never a tight loop) until done or settled by a commit's
        publish; cancelled on shutdown (`spawn`). DEGRADED meanwhile, SERVING again once done."""
        failed = ""
        while True:
            try:
                await self._problems_changed()
                if not self.trust.retry_pending:
                    return
                await asyncio.sleep(trust_mod.RECOVERY_RETRY)
                if self.trust.retry_pending:  # a commit's publish may have settled it meanwhile
                    await self.trust.recover()
                failed = ""
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # health, say: kept, tried again; logged once per kind
                if type(exc).__name__ != failed:
                    self.log.warning("CHK-6: taking back a CTL publish left unrecorded failed: %s",
                                     trust_mod.failure(exc))
                failed = type(exc).__name__
                await asyncio.sleep(trust_mod.RECOVERY_RETRY)

    # --- DEGRADED: the bus (BUS-5) or a CTL publish left unrecorded (CHK-6) ------------------------
    def startup_problem(self) -> str:
        return self.trust.recovery_problem

    async def _set_degraded(self, reason: str) -> None:
        self._bus_problem = reason
        await super()._set_degraded("; ".join(r for r in (reason, self.trust.recovery_problem) if r))

    async def _problems_changed(self) -> None:
        combined = "; ".join(r for r in (self._bus_problem, self.trust.recovery_problem) if r)
        if self.grpc is not None and combined != self.degraded:
            await super()._set_degraded(combined)

    async def teardown(self) -> None:
        if self.listener is not None:
            await self.listener.close()

    def status_details(self) -> dict[str, str]:
        details = {"ctl_provider_port": str(self.listening_port),
                   "configured_port": str(self.configured_port)}
        if self.listener is not None:
            details.update(answered=str(self.listener.answered), refused=str(self.listener.refused))
        details.update({f"source_{k}": v for k, v in self.certificate_origins.items()})
        unrecorded = self.trust.unrecorded_publishes()
        if unrecorded:  # CHK-6: the TFTP server may serve one of them, never recorded
            details["ctl_publishes_unrecorded"] = ",".join(map(str, unrecorded))
        return details

    async def sample_metrics(self) -> None:
        """CTL version and cluster mode (the database), and the tokens' expiry (DATA/tokens)."""
        await super().sample_metrics()
        mode, version = await self.trust.mode_state()
        metrics.CLUSTER_MIXED.labels(self.node).set(1 if mode == ClusterMode.MIXED else 0)
        metrics.CTL_VERSION.labels(self.node).set(version or 0)  # versions start at 1; 0 = no CTL
        try:
            tokens = await asyncio.to_thread(list_tokens, self.settings.data_dir / "tokens")
        except TokenError as exc:
            self.log.warning("cannot read the tokens for metrics: %s", exc)
            tokens = []
        for token in tokens:
            metrics.set_certificate_expiry("token", token.name, token.certificate.not_valid_after_utc)

    async def server_certificates(self):
        now = time.monotonic()
        if self._cache is not None and now - self._cache[0] < CERTIFICATE_CACHE_SECONDS:
            return self._cache[1]
        entries, origins = await gather(self.settings.data_dir, self.peer_channel,
                                        self.settings.peer_host)
        nodes = list(self.settings.call_control_nodes)  # addresses, or compose's service names
        if len(nodes) > 1:
            more, node_origins = await gather_call_control_nodes(
                self.settings.data_dir, nodes, self.settings.peers.get("callmanager", ""), self._node_channel,
                resolve_host)
            entries = entries + more
            origins = {**origins, **node_origins}
        self.certificate_origins = origins
        self._cache = (now, entries)
        return entries

    def _node_channel(self, host: str):
        """A cached mTLS channel to one call-control node of the group (by address)."""
        key = ("callmanager@" + host, GRPC_PORT_DEFAULT, str(self.identity.cert_path))
        if key not in self._channels:
            self._channels[key] = secure_channel(self.identity, host, GRPC_PORT_DEFAULT, "callmanager")
        return self._channels[key]

    def provider_settings(self) -> ctl_provider_pb2.ProviderSettingsReply:
        return ctl_provider_pb2.ProviderSettingsReply(
            activated=self.activated, configured_port=self.configured_port,
            listening_port=self.listening_port, host=self.settings.host)


def main() -> None:
    run_service(CtlProviderService)


if __name__ == "__main__":
    main()

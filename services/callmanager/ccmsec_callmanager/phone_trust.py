"""Call control's phone-certificate trust, following CAPF's third-party CA at runtime.

The CAPF CA and the manufacturer CA never change while callmanager runs; the third-party CA of
offline-CA mode may appear or change at any time. It is CAPF's (issue 9 §1, §5): call control learns
it from its owner only — `Capf/GetThirdPartyCa` over mutual TLS as `callmanager`, asked at start (in
the background, until answered), on every `lsc-ca.changed` event CAPF publishes (a consumer takes
it from the capf role only, BUS-3; the event carries no certificate, it only says "ask again") and
every `REFRESH_INTERVAL` (an event waiting in CAPF's outbox). Never from a file: a file in a folder
other roles can write would let any of them make call control trust an attacker's CA.

`PhoneTrustWatcher` holds the trust in force. The 2443 listener keeps one SSLContext for its
lifetime (asyncio binds it to the listening socket), so the watcher installs an SNI callback on it:
OpenSSL runs that callback in every handshake, with or without SNI, and it moves the connection to
the context built for the current trust before the client certificate is verified. A changed CA
therefore applies to the next connection, with no restart and no effect on phones already connected.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from typing import Awaitable, Callable

import grpc
from cryptography import x509

from ccmsec.pki.ca import Issued, fingerprint_sha256
from ccmsec.pki.lsc import LscError, check_third_party_ca
from ccmsec.pki.tls import sccp_server_context
from ccmsec.runtime.settings import SettingsError
from ccmsec_proto import capf_pb2_grpc, common_pb2, events_pb2

from .registration import PhoneTrust

log = logging.getLogger("ccmsec.callmanager")

ASK_TIMEOUT = 3.0
REFRESH_INTERVAL = 30.0  # CAPF is asked again at least this often (an event may wait in its outbox)
MAX_BACKOFF = 5.0


class PhoneTrustWatcher:
    def __init__(self, identity: Issued, base: PhoneTrust):
        """`base`: the fixed CAPF and manufacturer CAs; the third-party CA comes from
        `set_third_party` (what CAPF answered)."""
        self.identity = identity
        self.base = PhoneTrust(base.capf, base.manufacturer)
        self._lock = threading.Lock()  # handshakes may run on other threads (to_thread users)
        self._trust = self.base
        self.legacy_tls = False  # LATER-8: TLS 1.0 too (the cluster setting, see legacy_tls.py)
        self._context = sccp_server_context(identity, self.base.tls_anchors)
        self.reloads = 0
        self.problem = "CAPF not asked yet"  # why no third-party CA is trusted, when none is
        # The listening context: only its SNI callback matters after start-up.
        self.listening_context = self._context
        self.listening_context.sni_callback = self._on_handshake

    # --- the current trust ----------------------------------------------------------------------
    def current(self) -> PhoneTrust:
        return self._trust

    def context(self) -> ssl.SSLContext:
        return self._context

    def set_third_party(self, third: x509.Certificate | None, problem: str = "") -> bool:
        """The third-party CA CAPF answered (None: none configured, or not usable — `problem`
        says why). Rebuilds trust when it changed; True when it did."""
        if third is not None:
            try:
                check_third_party_ca(third)
            except LscError as exc:  # fail closed: CAPF checks it on set, but not for ever (expiry)
                third, problem = None, str(exc)
        with self._lock:
            self.problem = problem
            if third == self._trust.third_party:
                return False
            trust = PhoneTrust(self.base.capf, self.base.manufacturer, third)
            self._context = sccp_server_context(self.identity, trust.tls_anchors, legacy_tls=self.legacy_tls)
            self._trust = trust
            self.reloads += 1
        if third is not None:
            log.info("LSCs from the third-party CA accepted (CAPF's answer)", extra={
                "ca_subject": third.subject.rfc4514_string(), "ca_sha256": fingerprint_sha256(third)})
        elif problem:
            log.error("third-party CA not trusted", extra={"error": problem})
        else:
            log.info("third-party CA removed; only CAPF LSCs and MICs accepted")
        return True

    def set_legacy_tls(self, enabled: bool) -> ssl.SSLContext:
        """LATER-8: rebuild the contexts with (or without) TLS 1.0 and return the new listening
        context. The protocol versions a connection may use are fixed when it is accepted, so
        the listener must switch contexts, not only the SNI callback."""
        with self._lock:
            self.legacy_tls = enabled
            self._context = sccp_server_context(self.identity, self._trust.tls_anchors,
                                                legacy_tls=enabled)
            listening = sccp_server_context(self.identity, self._trust.tls_anchors,
                                            legacy_tls=enabled)
        listening.sni_callback = self._on_handshake
        self.listening_context = listening
        return listening

    # --- TLS --------------------------------------------------------------------------------------
    def _on_handshake(self, ssl_object: ssl.SSLObject, server_name: str | None,
                      context: ssl.SSLContext) -> None:
        current = self._context
        if current is not context:
            ssl_object.context = current
        return None


# --- where the third-party CA comes from: its owner, CAPF --------------------------------------------

Ask = Callable[[], Awaitable[x509.Certificate | None]]


def ask_capf(channel: Callable[[], grpc.aio.Channel], timeout: float = ASK_TIMEOUT) -> Ask:
    """`Capf/GetThirdPartyCa` over the cluster's mutual TLS: the CA, or None when CAPF has none."""
    async def ask() -> x509.Certificate | None:
        stub = capf_pb2_grpc.CapfStub(channel())
        try:
            reply = await stub.GetThirdPartyCa(common_pb2.Empty(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                return None
            raise
        try:
            return x509.load_der_x509_certificate(reply.der)
        except ValueError:
            raise LscError("CAPF answered a third-party CA that is not a DER certificate") from None
    return ask


class ThirdPartyCaFollower:
    """A read cache of CAPF's third-party CA, pushed into a `PhoneTrustWatcher`."""

    def __init__(self, ask: Ask | None, *, refresh_interval: float = REFRESH_INTERVAL):
        self.ask = ask
        self.refresh_interval = refresh_interval
        self.known = False          # CAPF answered at least once
        self.last_error = ""
        self.asked = 0
        self._ca: x509.Certificate | None = None
        self._problem = "" if ask is None else "CAPF not asked yet"
        self._apply: Callable[[x509.Certificate | None, str], object] | None = None
        self._poke = asyncio.Event()

    @classmethod
    def none(cls) -> "ThirdPartyCaFollower":
        """No CAPF to ask (call control alone, tests): no third-party CA, ever."""
        return cls(None)

    def attach(self, apply: Callable[[x509.Certificate | None, str], object]) -> None:
        self._apply = apply
        apply(self._ca, self._problem)

    async def refresh(self) -> bool:
        """Ask CAPF once; True when it answered. Not answering keeps the last known CA (only CAPF
        changes it, and its change event waits in its outbox) — logged, and said in the status."""
        if self.ask is None:
            return True
        self.asked += 1
        try:
            ca = await self.ask()
        except (grpc.aio.AioRpcError, LscError, SettingsError) as exc:
            reason = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else "error"
            self.last_error = f"CAPF did not answer GetThirdPartyCa ({code}: {reason})"[:300]
            if not self.known:
                self._problem = self.last_error + "; only CAPF LSCs and MICs are accepted until it does"
                if self._apply is not None:
                    self._apply(None, self._problem)
            log.warning("third-party CA: %s", self.last_error)
            return False
        self.known, self.last_error, self._ca, self._problem = True, "", ca, ""
        if self._apply is not None:
            self._apply(ca, "")
        return True

    async def on_event(self, event: events_pb2.Event) -> None:
        """`lsc-ca.changed` (from capf only: the bus policy drops anyone else's): ask now."""
        if not await self.refresh():
            self._poke.set()  # not answered: the follow loop keeps asking

    async def follow(self) -> None:
        """Ask until answered (back-off), then every `refresh_interval` or when poked."""
        if self.ask is None:
            return
        delay = 0.5
        while True:
            answered = await self.refresh()
            if answered:
                delay = 0.5
                self._poke.clear()
                try:
                    await asyncio.wait_for(self._poke.wait(), self.refresh_interval)
                except asyncio.TimeoutError:
                    pass
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)

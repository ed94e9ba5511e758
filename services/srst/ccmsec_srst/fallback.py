"""Limited call processing while call control cannot serve the phones (SRST-1).

* **Who may register**: only the phones whose configuration names this reference — the SRST
  directory call control gives (`CallManager/GetSrstDirectory`), refreshed every `refresh`
  seconds and on `config.changed`, and kept in `DATA/srst/<node>/directory.pb` (written atomically,
  0600) so it still serves when call control and its database are gone. An unknown device is
  refused (SRST-1), never auto-registered.
* **Trust**: the same as call control — the registration decision is `ccmsec.policy.registration
  .decide` (DEV-1 transport, AUTH-2/CERT-2 certificate: LSC from the CAPF CA or the offline
  third-party CA, MIC from the manufacturer CA, CN naming the device), with the issuers from the
  directory. On 2443 the router presents its own self-signed certificate, the one call control
  fetched over 2445 and put in the phones' configuration (CERT-6); the phones pin it.
* **Calls**: the call-processing core (`ccmsec.calls`) with registration, calls between the
  phones registered here by directory number, hold/transfer as the core does them; no music on
  hold and no conference bridge (limited service). A held party hears tone on hold streamed from
  the router (`_ResourcePorts`) in a G.711 law it offered (CALL-9), over the media protection of
  the call: SRTP with a fresh key made here when every party of the call may receive keys (the
  condition for the call's own SRTP: ENC-3/5, SRST-2), else RTP — never music, which would make a
  secure call non-secure (CALL-3). A held phone that offers neither law plays tone on hold itself
  (StartTone hold); resume stops either. Media is phone to phone; keys are made here
  (`MasterKey.generate`, the operating system's CSPRNG) and carried in the encryption-info blocks
  exactly as call control does it (`CallKeySource`: ENC-3/4/5 — both phones registered encrypted
  over an encrypting TLS cipher, and only when security is configured on the reference).
* **Notice**: after registration each phone is told it is in fallback — DisplayNotify and an
  idle DisplayPromptStatus "CM Fallback Service Operating", the real router's words.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

from cryptography import x509

from ccmsec.aio.media import SCCP_G711, PortAudio
from ccmsec.aio.media_port import MediaPorts
from ccmsec.aio.sccp import ConnectionClosed, ConnectionDropped, SccpServer
from ccmsec.calls.agent import CallAgent
from ccmsec.calls.config import AgentSettings, DeviceProfile, LineConfig, ProfileError
from ccmsec.calls.media import ResourceKey
from ccmsec.domain import ClusterMode, DeviceSecurityMode
from ccmsec.fsutil import atomic_write
from ccmsec.media import tones
from ccmsec.media.callkeys import CallKeySource, DeviceTransport, PairKeys, may_receive_keys
from ccmsec.media.keys import to_encryption_info
from ccmsec.media.srtp import MasterKey
from ccmsec.pki.ca import Issued
from ccmsec.pki.tls import sccp_server_context
from ccmsec.policy.calls import CallSecurityLevel, EndpointKind
from ccmsec.policy.registration import DeviceRecord, PhoneTrust, decide
from ccmsec.runtime import metrics
from ccmsec.wire import sccp as s
from ccmsec.wire.sccp import (
    CapabilitiesReceived,
    DeviceRegistered,
    DeviceUnregistered,
    KeepAliveTimeout,
    MessageReceived,
    RegistrationDecision,
    RegistrationRequest,
)
from ccmsec.wire.sccp_calls import DisplayNotify, DisplayPromptStatus
from ccmsec_proto import callmanager_pb2 as pb

log = logging.getLogger("ccmsec.srst")

FALLBACK_NOTICE = "CM Fallback Service Operating"
DIRECTORY_FILE = "directory.pb"


# --- the directory ------------------------------------------------------------------------------

class SrstDirectory:
    """The phones this reference serves and the trust to check them with (see the module doc)."""

    def __init__(self, folder: Path, fetch: Callable[[], Awaitable[pb.SrstDirectory]]) -> None:
        self.path = Path(folder) / DIRECTORY_FILE
        self._fetch = fetch
        self.current = pb.SrstDirectory()
        self.phones: dict[str, pb.SrstPhone] = {}
        self.trust = PhoneTrust(None, None)
        self.last_error = ""
        self.loads = 0

    def load_file(self) -> bool:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return False
        directory = pb.SrstDirectory()
        try:
            directory.ParseFromString(data)
        except Exception as exc:  # a damaged copy must not stop the router: refresh replaces it
            log.error("SRST directory copy unreadable", extra={"path": str(self.path), "error": str(exc)})
            return False
        self._apply(directory)
        return True

    async def refresh(self) -> bool:
        try:
            directory = await self._fetch()
        except Exception as exc:  # call control away: keep serving with what we have
            self.last_error = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            return False
        self.last_error = ""
        self._apply(directory)
        await asyncio.to_thread(atomic_write, self.path, directory.SerializeToString(), 0o600)
        return True

    def _apply(self, directory: pb.SrstDirectory) -> None:
        def cert(der: bytes) -> x509.Certificate | None:
            try:
                return x509.load_der_x509_certificate(der)
            except ValueError:
                return None
        issuers = [c for c in (cert(d) for d in directory.lsc_issuers) if c is not None]
        capf = issuers[0] if issuers else None
        third = issuers[1] if len(issuers) > 1 else None
        manufacturer = cert(directory.manufacturer_ca) if directory.manufacturer_ca else None
        self.current = directory
        self.phones = {p.device: p for p in directory.phones}
        self.trust = PhoneTrust(capf, manufacturer, third)
        self.loads += 1

    @property
    def cluster_mode(self) -> ClusterMode:
        return ClusterMode.from_proto(self.current.cluster_mode, default=ClusterMode.NON_SECURE)

    def profile(self, name: str, mode: DeviceSecurityMode) -> DeviceProfile:
        phone = self.phones[name]
        try:
            lines = tuple(LineConfig(ln.dn, label=ln.label) for ln in phone.lines)
            return DeviceProfile(name, model=phone.model, security_mode=mode, lines=lines)
        except ProfileError:
            return DeviceProfile(name, model=phone.model, security_mode=mode)


# --- registrations and calls --------------------------------------------------------------------

@dataclass
class FallbackRegistration:
    device: str
    mode: DeviceSecurityMode
    transport_port: int
    cipher: str
    certificate_kind: str
    since: float
    connection: object


class FallbackCallControl:
    def __init__(self, node: str, host: str, sccp_port: int, sccp_tls_port: int, identity: Issued,
                 directory: SrstDirectory, *, keepalive_interval: int = 30,
                 register_timeout: float = 10.0) -> None:
        self.node = node
        self.host = host
        self.identity = identity
        self.directory = directory
        self.keepalive_interval = keepalive_interval
        self.register_timeout = register_timeout
        self.ports = (sccp_port, sccp_tls_port)
        self.plain: SccpServer | None = None
        self.tls: SccpServer | None = None
        self.registrations: dict[str, FallbackRegistration] = {}
        self._pending: dict[tuple, tuple[DeviceProfile, str]] = {}  # (device, peer) -> (profile, kind)
        self.resources = MediaPorts(host, limit=64)
        self.keys = CallKeySource(lambda: PairKeys(MasterKey.generate(), MasterKey.generate()),
                                  self._transport)
        self.hold_tones = _ResourcePorts(self.resources)
        self.agent = CallAgent(AgentSettings(server_name=node, music_on_hold=False, tone_on_hold=True),
                               resources=self.hold_tones, key_source=self._key_source)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._contexts: tuple[tuple, ssl.SSLContext] | None = None
        self.registered_total = 0
        self.refused_total = 0

    # lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.agent.wall_offset = time.time() - self._loop.time()
        common = dict(keepalive_interval=self.keepalive_interval, register_timeout=self.register_timeout)
        self.plain = SccpServer(self.decide, host=self.host, port=self.ports[0],
                                on_event=self._listener(secure=False), **common)
        listening = self._context()
        listening.sni_callback = self._on_handshake
        self.tls = SccpServer(self.decide, host=self.host, port=self.ports[1], ssl_context=listening,
                              on_event=self._listener(secure=True), **common)
        await self.plain.start()
        await self.tls.start()
        self.agent.settings = AgentSettings(server_name=self.node, music_on_hold=False, tone_on_hold=True,
                                            servers=((self.node, self.host, self.plain.port),))
        log.info("SRST SCCP listening", extra={"sccp": f"{self.host}:{self.plain.port}",
                                               "sccp_tls": f"{self.host}:{self.tls.port}"})
        for mode in DeviceSecurityMode:  # exported from the start, at 0
            metrics.REGISTRATIONS.labels(self.node, mode.value)
        metrics.add_sampler(metrics.PHONES_REGISTERED, self._phones_by_mode)
        metrics.add_sampler(metrics.CALLS_IN_PROGRESS, self._calls_by_security)

    # scrape-time samples (the metrics thread reads copies, never writes) --------------------
    def _phones_by_mode(self):
        counts = collections.Counter({m.value: 0 for m in DeviceSecurityMode})
        counts.update(DeviceSecurityMode.parse(r.mode).value for r in list(self.registrations.values()))
        return [((self.node, mode), n) for mode, n in sorted(counts.items())]

    def _calls_by_security(self):
        counts = collections.Counter({level.name.lower().replace("_", "-"): 0 for level in CallSecurityLevel})
        for call in list(self.agent.calls.values()):
            counts[self.agent.view(call).status_name] += 1
        return [((self.node, status), n) for status, n in sorted(counts.items())]

    async def close(self) -> None:
        metrics.remove_sampler(metrics.PHONES_REGISTERED, self._phones_by_mode)
        metrics.remove_sampler(metrics.CALLS_IN_PROGRESS, self._calls_by_security)
        if self._timer is not None:
            self._timer.cancel()
        for server in (self.plain, self.tls):
            if server is not None:
                await server.close()
        self.resources.close_all()

    # TLS: the router's certificate; phone certificates from the directory's issuers ----------
    def _context(self) -> ssl.SSLContext:
        trust = self.directory.trust
        # keyed by the certificates themselves (equal when their DER is): not by `id()`, which
        # CPython reuses once a refresh frees the old objects — a new CAPF certificate at a
        # reused address kept the old trust on the listener
        key = tuple(trust.tls_anchors)
        if self._contexts is None or self._contexts[0] != key:
            # Without issuers yet (no directory), trust only the router itself: no phone
            # certificate chains to it, so TLS registrations fail closed until call control answered.
            anchors = trust.tls_anchors or [self.identity.cert]
            self._contexts = (key, sccp_server_context(self.identity, anchors))
        return self._contexts[1]

    def _on_handshake(self, ssl_object, server_name, context) -> None:
        try:
            current = self._context()
        except Exception:
            log.exception("SRST TLS context rebuild failed")
            return None
        if current is not context:
            ssl_object.context = current
        return None

    # decisions ------------------------------------------------------------------------------
    async def decide(self, request: RegistrationRequest) -> RegistrationDecision:
        name = request.device_name
        phone = self.directory.phones.get(name)
        if phone is None:
            self.refused_total += 1
            metrics.REGISTRATION_REFUSALS.labels(self.node, "SRST-1").inc()
            log.info("SRST registration refused", extra={"device": name, "reason": "not ours"})
            return RegistrationDecision.reject(f"SRST-1: {name} not served here"[:31])
        device = DeviceRecord(name, phone.model, DeviceSecurityMode.from_proto(
            phone.mode, default=DeviceSecurityMode.NON_SECURE).value)
        # Security not configured on the reference (SRST-2): phones fall back non-secure, on 2000,
        # as in a non-secure cluster (their configuration carries no certificate to pin).
        mode = self.directory.cluster_mode if self.directory.current.secure else ClusterMode.NON_SECURE
        verdict = decide(request, device, mode, self.directory.trust)
        if not verdict.accepted:
            self.refused_total += 1
            metrics.REGISTRATION_REFUSALS.labels(self.node, verdict.rule or "other").inc()
            log.info("SRST registration refused", extra={"device": name, "reason": verdict.reason})
            return RegistrationDecision.reject(verdict.reject_text)
        mode = DeviceSecurityMode.parse(verdict.device.security_mode)
        kind = verdict.certificate_kind.value if verdict.certificate_kind else ""
        self._pending[(name, request.peer_address)] = (self.directory.profile(name, mode), kind)
        return RegistrationDecision.accept()

    def _listener(self, *, secure: bool):
        def on_event(conn, event) -> None:
            session = conn.session
            if isinstance(event, MessageReceived):
                name = conn.device_name
                reg = self.registrations.get(name) if name else None
                if reg is not None and reg.connection is conn:
                    self.agent.receive(name, event.message, self._now())
                    self._pump()
            elif isinstance(event, CapabilitiesReceived):
                self.agent.capabilities(event.device_name, event.capabilities)
            elif isinstance(event, DeviceRegistered):
                pending = self._pending.pop((event.device_name, session.peer_address), None)
                if pending is None:
                    return
                profile, kind = pending
                name = event.device_name
                old = self.registrations.get(name)
                if old is not None:
                    self.agent.unregister(name, self._now())
                self.registrations[name] = FallbackRegistration(
                    name, profile.security_mode, (self.tls if secure else self.plain).port,
                    session.tls_cipher or "", kind, time.time(), conn)
                self.registered_total += 1
                metrics.REGISTRATIONS.labels(self.node, DeviceSecurityMode.parse(profile.security_mode).value).inc()
                self.agent.register(profile, self._now())
                conn.session.send(DisplayNotify(timeout=0, text=FALLBACK_NOTICE))
                conn.session.send(DisplayPromptStatus(timeout=0, text=FALLBACK_NOTICE))
                self._pump()
                conn.flush()
                log.info("phone in fallback", extra={"device": name, "secure": secure})
            elif isinstance(event, (DeviceUnregistered, KeepAliveTimeout, ConnectionClosed,
                                    ConnectionDropped)):
                name = getattr(event, "device_name", None)
                reg = self.registrations.get(name) if name else None
                if reg is not None and reg.connection is conn:
                    del self.registrations[name]
                    self.agent.unregister(name, self._now())   # its calls are cleared for the others
                    self._pump()
                if isinstance(event, ConnectionClosed):
                    self._pending.pop((name, session.peer_address), None)
        return on_event

    def _transport(self, device: str) -> DeviceTransport | None:
        reg = self.registrations.get(device)
        station = self.agent.stations.get(device)
        if reg is None or station is None:
            return None
        if not self.directory.current.secure:
            # Security is not configured on this reference (SRST-2): no keys are handed out.
            return DeviceTransport(DeviceSecurityMode.NON_SECURE, False)
        on_tls = self.tls is not None and reg.transport_port == self.tls.port
        return DeviceTransport(reg.mode, on_tls, reg.cipher if on_tls else "",
                               srtp_capable=station.srtp_capable)

    def _key_source(self, call, channel, direction: str) -> s.EncryptionInfo:
        if channel.peer and channel.peer[0] is EndpointKind.TONE_ON_HOLD:
            return self._tone_key(call, channel)
        return self.keys.key_source(call, channel, direction)

    def _tone_key(self, call, channel) -> s.EncryptionInfo:
        """The held phone's receive block for the tone on hold: the call's own protection. SRTP
        only when every party of the call may receive keys — what gives the call SRTP between the
        phones (ENC-3/5; none at all when the reference is not secure, SRST-2) — with a fresh key
        made here for this stream alone, carried in the held phone's OpenReceiveChannel over its
        encrypting TLS (ENC-5) and to the router's sender, forgotten when the stream closes.
        Otherwise RTP, as the call."""
        parties = call.parties()
        transports = [self._transport(lg.station.name) for lg in parties]
        secure = bool(parties) and all(t is not None and may_receive_keys(t)[0] for t in transports)
        info = to_encryption_info(MasterKey.generate() if secure else None)
        self.hold_tones.keys[channel.peer] = info
        return info

    # the pump -------------------------------------------------------------------------------
    def _now(self) -> float:
        return (self._loop or asyncio.get_running_loop()).time()

    def _pump(self) -> None:
        touched = set()
        for device, message in self.agent.messages_to_send():
            reg = self.registrations.get(device)
            if reg is not None:
                reg.connection.session.send(message)
                touched.add(reg.connection)
        for conn in touched:
            conn.flush()
        live = set(self.agent.calls)
        for call_id in {pair[0] for pair in self.keys.ring._pairs} - live:
            self.keys.forget_call(call_id)   # keys live only as long as their call
        self._arm_timer()
        while self.agent.next_event() is not None:
            pass  # no watchers on the router; events are not kept

    def _arm_timer(self) -> None:
        when = self.agent.next_timer()
        if when is None or (self._timer is not None and self._timer_at is not None
                            and self._timer_at <= when):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = (self._loop or asyncio.get_running_loop()).call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self.agent.tick(self._now())
        self._pump()

    def registered(self) -> list[str]:
        return list(self.registrations)


class _ResourcePorts:
    """Real UDP ports for what the core inserts. Tone on hold plays the tone to the held phone in
    the law it offered, SRTP with the key `_tone_key` made for the stream (else RTP); a conference
    or barge bridge port receives and counts, nothing more — the router offers limited service,
    not a mixing bridge."""

    def __init__(self, ports: MediaPorts) -> None:
        self.ports = ports
        self.keys: dict[ResourceKey, s.EncryptionInfo] = {}   # tone on hold: the held phone's block
        self.audio: dict[ResourceKey, PortAudio] = {}

    def open(self, key: ResourceKey) -> tuple[str, int]:
        port = self.ports.open(key)
        if key[0] is EndpointKind.TONE_ON_HOLD and key not in self.audio:
            self.audio[key] = PortAudio(port, tones.tone_on_hold().frame)
        return port.local

    def start(self, key: ResourceKey, remote: tuple[str, int], codec: int) -> None:
        port = self.ports.get(key)
        if port is None:
            return
        if key[0] is EndpointKind.TONE_ON_HOLD:
            if codec not in SCCP_G711:   # the core asks for a law the phone offered (CALL-9)
                log.error("tone on hold %s/%s: codec %s is not G.711; not started (CALL-9)",
                          key[1], key[2], codec)
                return
            port.start(remote, codec, self.keys.get(key))
        else:
            port.start(remote, codec)

    def stop(self, key: ResourceKey) -> None:
        port = self.ports.get(key)
        if port is not None:
            port.stop()

    def close(self, key: ResourceKey) -> None:
        audio = self.audio.pop(key, None)
        if audio is not None:
            audio.close()
        self.keys.pop(key, None)   # the stream's key goes with it
        self.ports.close(key)

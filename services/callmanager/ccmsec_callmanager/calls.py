"""Callmanager's call agent: the asyncio adapter around the sans-IO core (`ccmsec.calls`).

* Phones: every SCCP message of a registered device goes to `CallAgent.receive`; what the agent
  sends goes out on that device's connection (plain 2000 or TLS 2443, whichever it registered on).
  A device that unregisters or drops is removed from the agent, which clears its calls for the
  other parties and frees their media resources.
* Media resources (CALL-3 participants): the conference bridge and music on hold get a real UDP
  port per stream on callmanager's address (`ResourcePorts`). Sending audio is the media plane's;
  the ports exist, are reported to the phones and count what reaches them.
* Devices that do not speak SCCP over a socket run inside callmanager as `VirtualDevice`s: the
  same phone-side machine as phone-sim (`ccmsec.wire.sccp_phone`) with its own UDP ports. CTI
  ports are driven over gRPC (`cti`); the inter-cluster trunk stands for the far cluster, which
  answers every call routed to the trunk's pattern. Both are never secure (CALL-3).
* Watchers (gRPC WatchCalls, the HTTPS API's event stream) get every call event through a bounded
  queue each; one that does not keep up is dropped, never the call agent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from ccmsec.aio.media import SCCP_G711, PortAudio
from ccmsec.aio.media_port import MediaPortError, MediaPorts
from ccmsec.media import tones
from ccmsec.media.mixer import Mixer
from ccmsec.media.packetiser import FRAME_MS
from ccmsec.media.stream import AudioReceived, MediaStream
from ccmsec.calls.agent import CallAgent
from ccmsec.calls.config import AgentSettings, DeviceProfile, LineConfig
from ccmsec.calls.media import ResourceKey
from ccmsec.calls.model import CallEvent, CallView
from ccmsec.policy.calls import EndpointKind
from ccmsec.wire import sccp as s
from ccmsec.wire.sccp_phone import (
    CloseChannel,
    OpenChannel,
    PhoneActionError,
    SccpPhone,
    StartTransmit,
    StopTransmit,
)
from ccmsec.wire.sccp_calls import CallStateCode, SoftKey

log = logging.getLogger("ccmsec.callmanager.calls")

WATCH_QUEUE = 1024
MAX_WATCHERS = 64


class Bridge:
    """One conference (or cBarge) bridge: a stream per leg, each leg hears the others (mixed with
    `ccmsec.media.mixer.Mixer`), never itself. Plain RTP only: the bridge is a CALL-3 participant,
    so a call through it is non-secure and its legs get no keys."""

    def __init__(self) -> None:
        self.mixer = Mixer()
        self.streams: dict[ResourceKey, tuple[object, MediaStream]] = {}
        self._task: asyncio.Task | None = None

    def add(self, key: ResourceKey, port) -> None:
        stream = MediaStream(SCCP_G711.get(port.codec or 4, 0))
        self.streams[key] = (port, stream)
        self.mixer.add(key)
        port.on_datagram = lambda data, addr, key=key: self._received(key, data)

    def _received(self, key: ResourceKey, data: bytes) -> None:
        entry = self.streams.get(key)
        if entry is None:
            return
        event = entry[1].receive(data)
        if isinstance(event, AudioReceived):
            self.mixer.push(key, event.pcm)

    def started(self, key: ResourceKey, codec: int) -> None:
        entry = self.streams.get(key)
        if entry is None:
            return
        port, stream = entry
        pt = SCCP_G711.get(codec, stream.payload_type)
        if pt != stream.payload_type:
            self.streams[key] = (port, MediaStream(pt))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._pace(), name="conference bridge")

    def remove(self, key: ResourceKey) -> bool:
        """True when the bridge is empty afterwards."""
        self.streams.pop(key, None)
        self.mixer.remove(key)
        if not self.streams and self._task is not None:
            self._task.cancel()
            self._task = None
        return not self.streams

    async def _pace(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while self.streams:
            for key, pcm in self.mixer.tick().items():
                entry = self.streams.get(key)
                if entry is not None and entry[0].remote is not None:
                    entry[0].send(entry[1].packet_for(pcm))
            due += FRAME_MS / 1000
            now = loop.time()
            if now - due > 0.2:     # behind (a loaded loop): carry on from now, do not burst
                due = now
            await asyncio.sleep(max(0.0, due - now))


class ResourcePorts:
    """`MediaResources` for the core on real UDP ports of callmanager's address: music on hold
    plays music, the conference bridge mixes its legs (one `Bridge` per call)."""

    def __init__(self, host: str) -> None:
        self.ports = MediaPorts(host)
        self.audio: dict[ResourceKey, PortAudio] = {}
        self.bridges: dict[int, Bridge] = {}

    def open(self, key: ResourceKey) -> tuple[str, int]:
        port = self.ports.open(key)
        if key[0] is EndpointKind.MUSIC_ON_HOLD and key not in self.audio:
            # real music, always plain RTP: music on hold is never secure media (CALL-3, GW-3)
            self.audio[key] = PortAudio(port, tones.music_on_hold().frame)
        elif key[0] is EndpointKind.CONFERENCE:
            bridge = self.bridges.setdefault(key[1], Bridge())
            if key not in bridge.streams:
                bridge.add(key, port)
        return port.local

    def start(self, key: ResourceKey, remote: tuple[str, int], codec: int) -> None:
        if codec not in SCCP_G711:
            # Music on hold and the bridge encode G.711 only; anything else would go out as µ-law
            # to a phone that may never have offered it (CALL-9). The core asks for the law the
            # leg offered, so this is a bug elsewhere: send nothing rather than the wrong codec.
            log.error("%s stream %s/%s: codec %s is not G.711; not started (CALL-9)",
                      key[0].value, key[1], key[2], codec)
            return
        port = self.ports.get(key)
        if port is not None:
            port.start(remote, codec)
            bridge = self.bridges.get(key[1]) if key[0] is EndpointKind.CONFERENCE else None
            if bridge is not None:
                bridge.started(key, codec)

    def stop(self, key: ResourceKey) -> None:
        port = self.ports.get(key)
        if port is not None:
            port.stop()

    def close(self, key: ResourceKey) -> None:
        audio = self.audio.pop(key, None)
        if audio is not None:
            audio.close()
        if key[0] is EndpointKind.CONFERENCE:
            bridge = self.bridges.get(key[1])
            if bridge is not None and bridge.remove(key):
                del self.bridges[key[1]]
        self.ports.close(key)


class VirtualDevice:
    """A non-SCCP participant run inside callmanager on the phone-side machine."""

    def __init__(self, profile: DeviceProfile, host: str) -> None:
        self.profile = profile
        self.phone = SccpPhone(profile.name)
        self.ports = MediaPorts(host, limit=64)
        self.answered = 0

    def handle(self, message: s.Message) -> None:
        for event in self.phone.handle(message):
            self.media(event)
        if self.profile.auto_answer and self.phone.ready:
            # The far cluster answers as soon as the phone offers Answer (the ringing softkeys).
            for call in list(self.phone.calls.values()):
                if call.state == CallStateCode.RING_IN and SoftKey.ANSWER in self.phone.offered(call):
                    self.answered += 1
                    self.phone.answer(call.reference)

    def media(self, event: object) -> None:
        """A channel event: its own UDP ports here (the SRTP gateway's device overrides this)."""
        if isinstance(event, OpenChannel):
            try:
                port = self.ports.open(event.channel.party_id)
            except MediaPortError:
                self.phone.channel_failed(event.channel.party_id)
                return
            self.phone.channel_opened(event.channel.party_id, *port.local)
        elif isinstance(event, StartTransmit):
            port = self.ports.get(event.channel.party_id)
            if port is not None and event.channel.tx is not None:
                port.start(event.channel.tx, event.channel.codec, event.channel.tx_encryption)
        elif isinstance(event, StopTransmit):
            port = self.ports.get(event.channel.party_id)
            if port is not None:
                port.stop()
        elif isinstance(event, CloseChannel):
            self.ports.close(event.channel.party_id)


@dataclass(frozen=True)
class Stats:
    active: int
    total: int
    refused_barges: int
    ignored: int


class CallService:
    def __init__(self, host: str, *, settings: AgentSettings | None = None,
                 cti_numbers: tuple[str, ...] = (), trunk_pattern: str = "",
                 trunk_number: str = "8000", node: str = "callmanager") -> None:
        self.host = host
        self.resources = ResourcePorts(host)
        self.agent = CallAgent(settings or AgentSettings(server_name=node), resources=self.resources)
        self.connections: dict[str, object] = {}   # device -> ServerConnection
        self.virtual: dict[str, VirtualDevice] = {}
        self.watchers: set[asyncio.Queue] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cti_numbers = cti_numbers
        self._trunk = (trunk_pattern, trunk_number)
        self.node = node

    # lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.agent.wall_offset = time.time() - self._loop.time()
        for number in self._cti_numbers:
            self._add_virtual(DeviceProfile(f"CTI{number}", model="CTI Port", kind=EndpointKind.CTI,
                                            lines=(LineConfig(number, label=f"CTI {number}"),)))
        pattern, number = self._trunk
        if pattern:
            self._add_virtual(DeviceProfile(
                "ICT-CLUSTER2", model="Intercluster Trunk", kind=EndpointKind.INTER_CLUSTER_TRUNK,
                lines=(LineConfig(number, label="to cluster 2"),), route_pattern=pattern,
                auto_answer=True))

    def _add_virtual(self, profile: DeviceProfile) -> None:
        self.add_device(VirtualDevice(profile, self.host))

    def add_device(self, device: VirtualDevice) -> None:
        """A participant that runs inside callmanager (e.g. the SRTP gateway's device)."""
        profile = device.profile
        self.virtual[profile.name] = device
        self.agent.register(profile, self._now())
        device.phone.start_setup()
        self._pump()

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for name in list(self.connections):
            self.agent.unregister(name, self._now())
        for device in self.virtual.values():
            self.agent.unregister(device.profile.name, self._now())
            device.ports.close_all()
        self.agent.messages_to_send()
        self.resources.ports.close_all()
        for queue in list(self.watchers):
            queue.put_nowait(None)

    def _now(self) -> float:
        return (self._loop or asyncio.get_running_loop()).time()

    # phones ---------------------------------------------------------------------------------
    def registered(self, connection, profile: DeviceProfile) -> None:
        name = profile.name
        if name in self.virtual:
            return
        self.connections[name] = connection
        self.agent.register(profile, self._now())
        self._pump()

    def capabilities(self, name: str, caps: s.CapabilitiesRes) -> None:
        self.agent.capabilities(name, caps)

    def message(self, connection, message: s.Message) -> None:
        name = connection.device_name
        if name is None or self.connections.get(name) is not connection:
            return  # a connection that no longer holds the registration
        self.agent.receive(name, message, self._now())
        self._pump()

    def gone(self, name: str, connection) -> None:
        if self.connections.get(name) is not connection:
            return
        del self.connections[name]
        self.agent.unregister(name, self._now())
        self._pump()

    def set_configured_numbers(self, numbers: set[str]) -> None:
        self.agent.set_configured_numbers(numbers)

    # CTI ports (gRPC) -------------------------------------------------------------------------
    def cti(self, port: str, action: str, number: str = "") -> VirtualDevice:
        device = self.virtual.get(port)
        if device is None or device.profile.kind is not EndpointKind.CTI:
            ports = ", ".join(n for n, d in self.virtual.items() if d.profile.kind is EndpointKind.CTI)
            raise PhoneActionError(f"no CTI port {port!r} (CTI ports: {ports or 'none'})")
        phone = device.phone
        if action == "dial":
            phone.dial(number)
        elif action == "answer":
            phone.answer()
        elif action == "hangup":
            phone.hang_up()
        else:
            raise PhoneActionError(f"unknown CTI action {action!r}: dial, answer or hangup")
        self._pump()
        return device

    # the pump ---------------------------------------------------------------------------------
    def _pump(self) -> None:
        """Deliver what the agent sends; feed back what virtual devices answer; flush sockets."""
        touched = set()
        now = self._now()
        for _ in range(100):
            out = self.agent.messages_to_send()
            moved = bool(out)
            for device, message in out:
                conn = self.connections.get(device)
                if conn is not None:
                    conn.session.send(message)
                    touched.add(conn)
                    continue
                virtual = self.virtual.get(device)
                if virtual is not None:
                    virtual.handle(message)
            for name, virtual in self.virtual.items():
                for message in virtual.phone.messages_to_send():
                    moved = True
                    self.agent.receive(name, message, now)
            if not moved:
                break
        for conn in touched:
            conn.flush()
        self._arm_timer()
        self._publish_events()

    def _arm_timer(self) -> None:
        when = self.agent.next_timer()
        if when is None or (self._timer_at is not None and self._timer_at <= when
                            and self._timer is not None):
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = self._loop or asyncio.get_running_loop()
        self._timer_at = when
        self._timer = loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.agent.tick(self._now())
        self._pump()

    # watchers -----------------------------------------------------------------------------------
    def _publish_events(self) -> None:
        while (event := self.agent.next_event()) is not None:
            for queue in list(self.watchers):
                try:
                    queue.put_nowait(event)
                except asyncio.QueueFull:
                    self.watchers.discard(queue)   # too slow: it is told and dropped
                    log.warning("call watcher dropped: it did not keep up")
                    try:
                        queue.get_nowait()
                        queue.put_nowait(None)
                    except (asyncio.QueueEmpty, asyncio.QueueFull):
                        pass

    def watch(self) -> asyncio.Queue:
        if len(self.watchers) >= MAX_WATCHERS:
            raise RuntimeError(f"at most {MAX_WATCHERS} call watchers at once")
        queue: asyncio.Queue[CallEvent | None] = asyncio.Queue(WATCH_QUEUE)
        self.watchers.add(queue)
        return queue

    def unwatch(self, queue: asyncio.Queue) -> None:
        self.watchers.discard(queue)

    def calls(self) -> list[CallView]:
        return sorted(self.agent.views(), key=lambda v: v.id)

    @property
    def stats(self) -> Stats:
        return Stats(len(self.agent.calls), self.agent.calls_total, self.agent.barges_refused,
                     self.agent.ignored)

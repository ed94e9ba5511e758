"""Media resources the core inserts into calls: the conference bridge and music on hold.

The core asks a `MediaResources` object, synchronously, for a receive address per stream it
inserts and tells it where to send (`start`) and when to stop. Callmanager's implementation binds
real UDP sockets (`ccmsec_callmanager.media_resources`); `AddressPool` hands out addresses without
sockets, for tests and for a caller that has no resources (SRST's limited call processing).

Both kinds are CALL-3 participants: a call through either is non-secure.

Both encode G.711 only, either law (`G711_CODECS`): each stream is set up in a law the leg's
device offered (CALL-9, there is no transcoder). The bridge decodes every leg to linear PCM, mixes,
and encodes each leg's mix in that leg's own law, so µ-law and A-law phones share a conference; a
device that offers neither law cannot join one. A held phone that offers neither law gets no music
on hold channel: it plays tone on hold itself (StartTone hold).

Without music on hold (SRST's limited service, `AgentSettings.tone_on_hold`) the held party's
stream is a tone-on-hold one (`EndpointKind.TONE_ON_HOLD`), chosen the same way; it is no party of
the call (not CALL-3): its key source gives it the call's own protection.
"""

from __future__ import annotations

from typing import Protocol

from ccmsec.policy.calls import EndpointKind

# SCCP compression types the bridge and the music-on-hold source can encode (G.711 µ-law 64k,
# G.711 A-law 64k); a bridge stream uses the first of them in the device's own CapabilitiesRes
# order, a music- or tone-on-hold stream the call's law when the held device offered it, else that.
G711_CODECS = (4, 2)

# (kind, call id, leg id): one stream of a resource towards one leg.
ResourceKey = tuple[EndpointKind, int, int]


class MediaResources(Protocol):
    def open(self, key: ResourceKey) -> tuple[str, int]:
        """Allocate the resource's receive address for this stream."""

    def start(self, key: ResourceKey, remote: tuple[str, int], codec: int) -> None:
        """The resource sends to `remote` (the leg's receive address) in `codec` (one of
        `G711_CODECS`: the law the leg's device offered)."""

    def stop(self, key: ResourceKey) -> None:
        """Stop sending; the receive address stays."""

    def close(self, key: ResourceKey) -> None:
        """Release the stream (idempotent)."""


class AddressPool:
    """Addresses without sockets: `host`, ports counting up from `first_port` (even ports)."""

    def __init__(self, host: str = "127.0.0.1", first_port: int = 40000, last_port: int = 60000):
        self.host = host
        self._next = first_port
        self._first, self._last = first_port, last_port
        self.open_streams: dict[ResourceKey, tuple[str, int]] = {}
        self.sending: dict[ResourceKey, tuple[str, int]] = {}
        self.codecs: dict[ResourceKey, int] = {}   # the codec each stream was started in

    def open(self, key: ResourceKey) -> tuple[str, int]:
        if key not in self.open_streams:
            port = self._next
            self._next = self._first if self._next + 2 > self._last else self._next + 2
            self.open_streams[key] = (self.host, port)
        return self.open_streams[key]

    def start(self, key: ResourceKey, remote: tuple[str, int], codec: int) -> None:
        if key in self.open_streams:
            self.sending[key] = remote
            self.codecs[key] = codec

    def stop(self, key: ResourceKey) -> None:
        self.sending.pop(key, None)

    def close(self, key: ResourceKey) -> None:
        self.sending.pop(key, None)
        self.codecs.pop(key, None)
        self.open_streams.pop(key, None)

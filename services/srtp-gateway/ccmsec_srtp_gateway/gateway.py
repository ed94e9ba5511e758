"""The gateway's media core: endpoints, connections and the relay between the IP leg (RTP or
SRTP over UDP, through `ccmsec.aio.media_relay`) and the simulated telephone network (`pstn`).

Free of gRPC: the servicer turns requests into calls here and `MgcpError`s into statuses. One
ticker task sends every talking party's next frame each 20 ms for all connections at once; the
echo party answers each received packet immediately (decrypt, re-originate, encrypt — in place,
in the relay's one packet buffer). Every IP leg's socket is drained by the one `MediaRelay`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field

from ccmsec.aio.media_relay import MediaRelay, RelayEndpoint
from ccmsec.aio.relay_core import RelayCore
from ccmsec.formats.sdp import SdpError, SessionDescription, audio_session, parse_sdp
from ccmsec.media.packetiser import FRAME_MS
from ccmsec.media.srtp import MasterKey
from ccmsec.media.stream import MediaStream

from . import pstn
from .mgcp import (
    ConnectionMode,
    EndpointName,
    LocalOptions,
    MgcpError,
    check_call_id,
    check_number,
    parse_endpoint,
)

log = logging.getLogger("ccmsec.srtp-gateway")

MAX_LAG = 0.2


class SecurityRefused(Exception):
    """SRTP asked where the rules forbid it (GW-2, GW-4); the text starts with the rule id."""


@dataclass
class Connection:
    id: str
    endpoint: EndpointName
    call_id: str
    number: str
    mode: ConnectionMode
    srtp: bool
    media: RelayEndpoint
    party: pstn.Party
    send_key: MasterKey | None = field(default=None, repr=False)
    receive_key: MasterKey | None = field(default=None, repr=False)
    payload_type: int = 0
    # chosen by a remote description or the `a:` local connection option (not the PCMU default):
    # from then on a different codec is refused (534)
    codec_chosen: bool = False

    @property
    def remote(self) -> str:
        r = self.media.remote
        return f"{r[0]}:{r[1]}" if r else ""

    @property
    def local(self) -> str:
        host, port = self.media.local_address
        return f"{host}:{port}"


@dataclass(frozen=True)
class RemoteLeg:
    address: str
    port: int
    payload_type: int
    key: MasterKey | None


def remote_leg(text: str, *, srtp: bool) -> RemoteLeg:
    """The IP leg from a RemoteConnectionDescriptor, consistent with the security asked for."""
    try:
        sd: SessionDescription = parse_sdp(text)
        audio = sd.audio()
        address = sd.address_of(audio)
    except SdpError as exc:
        raise MgcpError(MgcpError.PROTOCOL_ERROR, f"remote session description: {exc}") from None
    pt = next((int(f) for f in audio.formats if f in ("0", "8")), None)
    if pt is None:
        raise MgcpError(MgcpError.CODEC_NEGOTIATION, f"no G.711 format (0 PCMU, 8 PCMA) offered: {' '.join(audio.formats)}")
    if srtp:
        if not audio.srtp or not audio.crypto:
            raise MgcpError(MgcpError.LCO_INCONSISTENT, "GW-1: an SRTP connection needs an RTP/SAVP "
                            "remote description with an a=crypto line")
        key = audio.crypto[0].key
    else:
        if audio.srtp or audio.crypto:
            raise MgcpError(MgcpError.LCO_INCONSISTENT, "GW-2: an RTP connection takes an RTP/AVP "
                            "remote description without a=crypto")
        key = None
    return RemoteLeg(address, audio.port, pt, key)


def codec_of(leg: RemoteLeg | None, options: LocalOptions) -> int | None:
    """The connection's payload type from the remote description and the local connection
    options (`a:`); the two must agree (524), else the description's, else the options'."""
    asked = options.payload_types
    if leg is not None and asked and leg.payload_type not in asked:
        raise MgcpError(MgcpError.LCO_INCONSISTENT, f"remote description's payload type "
                        f"{leg.payload_type} is not one the local connection options ask for "
                        f"({options.to_text()})")
    if leg is not None:
        return leg.payload_type
    return options.payload_type


WILDCARDS = ("0.0.0.0", "::", "")


class Gateway:
    def __init__(self, name: str, host: str, *, lines: int = 24, srtp_capable: bool = True,
                 max_connections: int = 4096, advertise: str | None = None,
                 relay_core: "RelayCore | None" = None):
        self.name = name
        self.host = host
        # The address the SDP gives for media when `host` is a wildcard (a container binds 0.0.0.0):
        # a peer told 0.0.0.0 sends to itself (the echo never came back in compose).
        self.advertise = advertise
        self.srtp_capable = srtp_capable
        self.max_connections = max_connections
        self.endpoints = [parse_endpoint(f"aaln/S1/SU0/{i}@{name}") for i in range(1, lines + 1)]
        self._keys = {e: e.key for e in self.endpoints}
        # what a name resolves to never changes (the lines are fixed): resolved once, not by
        # matching every line on each request (4,096 lines made a CreateConnection ~10 ms)
        self._resolved: dict[str, list[EndpointName]] = {}
        self.connections: dict[str, Connection] = {}     # by connection id
        self._by_endpoint: dict[str, Connection] = {}    # one connection per analogue line
        self._talkers: dict[str, Connection] = {}        # those whose party sends by itself
        self._relay: MediaRelay | None = None
        self.relay_core = relay_core     # the relay's C packet path (None: Python's)
        self._ticker: asyncio.Task | None = None
        self.totals = {"created": 0, "deleted": 0}

    # -- lookup ------------------------------------------------------------------------------
    def _resolve(self, text: str, *, allow_any: bool = False, allow_all: bool = False) -> list[EndpointName]:
        name = parse_endpoint(text)
        if name.wildcard == "$" and not allow_any or name.wildcard == "*" and not allow_all:
            raise MgcpError(MgcpError.PROTOCOL_ERROR, f"wildcard {name.wildcard!r} not allowed here")
        found = self._resolved.get(text)
        if found is None:
            found = [e for e in self.endpoints if name.matches(e)]
            if found and len(self._resolved) < 4 * len(self.endpoints) + 64:   # bounded
                self._resolved[text] = found
        if not found:
            raise MgcpError(MgcpError.UNKNOWN_ENDPOINT, f"endpoint unknown: {text} (this gateway has "
                            f"aaln/S1/SU0/1..{len(self.endpoints)}@{self.name})")
        return found

    def _connection(self, endpoint: str, call_id: str, connection_id: str) -> Connection:
        [ep] = self._resolve(endpoint)
        conn = self.connections.get(connection_id.upper() if connection_id else "")
        if conn is None or conn.endpoint != ep:
            raise MgcpError(MgcpError.BAD_CONNECTION_ID, f"incorrect connection id {connection_id!r} on {ep}")
        if call_id and check_call_id(call_id) != conn.call_id:
            raise MgcpError(MgcpError.UNKNOWN_CALL_ID, f"call id {call_id} does not own connection {conn.id}")
        return conn

    # -- CRCX --------------------------------------------------------------------------------
    async def create(self, *, endpoint: str, call_id: str, number: str, mode: ConnectionMode | None,
                     remote_sdp: str, srtp: bool, send_key: MasterKey | None,
                     options: LocalOptions = LocalOptions()) -> Connection:
        call_id = check_call_id(call_id)
        number = check_number(number)
        mode = mode or ConnectionMode.SENDRECV
        if srtp and not self.srtp_capable:
            raise SecurityRefused("GW-2: this gateway has no SRTP support; call control must use RTP")
        if srtp and send_key is None:
            raise MgcpError(MgcpError.LCO_INCONSISTENT, "GW-1: SRTP needs the master key and salt the "
                            "gateway encrypts with (send_key)")
        if not srtp and send_key is not None:
            raise MgcpError(MgcpError.LCO_INCONSISTENT, "GW-2: an RTP connection carries no key")
        leg = remote_leg(remote_sdp, srtp=srtp) if remote_sdp else None
        chosen = codec_of(leg, options)
        if len(self.connections) >= self.max_connections:
            raise MgcpError(MgcpError.NO_RESOURCES, "insufficient resources: connection limit reached")
        candidates = self._resolve(endpoint, allow_any=True)
        keys = self._keys
        free = next((e for e in candidates if keys[e] not in self._by_endpoint), None)
        if free is None:
            raise MgcpError(MgcpError.NO_RESOURCES, f"endpoint busy: {endpoint} (one connection per line)")
        payload_type = chosen if chosen is not None else 0
        party = pstn.party_for(number, payload_type)
        if party is None:
            known = ", ".join(f"{n} ({what})" for n, (what, _) in pstn.NUMBERS.items())
            raise MgcpError(MgcpError.UNKNOWN_ENDPOINT, f"the telephone network has no number "
                            f"{number!r} (known: {known})")
        ep = free
        receive_key = leg.key if leg else None
        stream = MediaStream(payload_type, send_key=send_key, receive_key=receive_key)
        conn_id = secrets.token_hex(8).upper()
        try:
            if self._relay is None:
                self._relay = MediaRelay(self.relay_core)
            media = self._relay.open(self.host, 0, stream)
        except OSError as exc:   # out of descriptors or ports, or an address not this host's
            raise MgcpError(MgcpError.NO_RESOURCES, f"insufficient resources: cannot open a media "
                            f"port on {self.host}: {exc.strerror or exc}") from None
        conn = Connection(conn_id, ep, call_id, number, mode, srtp, media, party, send_key, receive_key,
                          payload_type, chosen is not None)
        self._attach_party(conn)
        media.receiving, media.sending = mode.receives, mode.sends
        if leg:
            media.remote = (leg.address, leg.port)
        self.connections[conn_id] = conn
        self._by_endpoint[ep.key] = conn
        self.totals["created"] += 1
        self._ensure_ticker()
        log.info("connection created", extra={"endpoint": str(ep), "call_id": call_id, "connection": conn_id,
                                               "number": number, "mode": mode.name.lower(), "srtp": srtp})
        return conn

    def _attach_party(self, conn: Connection) -> None:
        """Wire the connection's telephone-network party to its IP leg."""
        party, media = conn.party, conn.media
        # the echo answers in place in the relay's buffer; other parties hear through a callback
        media.echo = party.echoes
        media.on_payload = self._hearing(conn) if party.answers and not party.echoes else None
        if party.talks:
            self._talkers[conn.id] = conn
        else:
            self._talkers.pop(conn.id, None)

    def _hearing(self, conn: Connection):
        party, media = conn.party, conn.media

        def on_payload(payload: bytes) -> None:
            back = party.hear(payload)
            if back is not None and conn.mode.sends:
                media.send_payload(back)
        return on_payload

    # -- MDCX --------------------------------------------------------------------------------
    async def modify(self, *, endpoint: str, call_id: str, connection_id: str, mode: ConnectionMode | None,
                     remote_sdp: str, change_security: bool, srtp: bool,
                     send_key: MasterKey | None, options: LocalOptions = LocalOptions()) -> Connection:
        conn = self._connection(endpoint, call_id, connection_id)
        new_srtp = srtp if change_security else conn.srtp
        new_send = send_key if change_security else conn.send_key
        if change_security:
            if new_srtp and not self.srtp_capable:
                raise SecurityRefused("GW-2: this gateway has no SRTP support; call control must use RTP")
            if new_srtp and new_send is None:
                raise MgcpError(MgcpError.LCO_INCONSISTENT, "GW-1: SRTP needs send_key")
            if not new_srtp and new_send is not None:
                raise MgcpError(MgcpError.LCO_INCONSISTENT, "GW-2: an RTP connection carries no key")
            if not remote_sdp:
                raise MgcpError(MgcpError.NO_REMOTE_DESCRIPTOR, "changing SRTP/RTP needs a new remote "
                                "session description")
        leg = remote_leg(remote_sdp, srtp=new_srtp) if remote_sdp else None
        chosen = codec_of(leg, options)
        # every refusal before any change: a refused MDCX leaves the connection as it was
        if chosen is not None and chosen != conn.payload_type and conn.codec_chosen:
            raise MgcpError(MgcpError.CODEC_NEGOTIATION, "codec change within a connection is not "
                            f"supported (it runs payload type {conn.payload_type})")
        if mode is not None:
            conn.mode = mode
            conn.media.receiving, conn.media.sending = mode.receives, mode.sends
        fresh = chosen is not None and chosen != conn.payload_type
        if fresh:
            # the first remote description (or `a:` option) chooses the codec
            conn.payload_type = chosen
            conn.party = pstn.party_for(conn.number, chosen)
            conn.media.stream = MediaStream(chosen, send_key=conn.send_key,
                                            receive_key=conn.receive_key)
            self._attach_party(conn)
        conn.codec_chosen = conn.codec_chosen or chosen is not None
        if leg is not None:
            # A side whose SRTP key did not change keeps its session: a new one would restart the
            # sender's rollover counter (after a sequence wrap the far end refuses every packet,
            # and the keystream of earlier indices is used again) and empty the receiver's replay
            # window (every packet recorded before the modify would be accepted once more). An RTP
            # leg's receive side starts afresh as before: a new far end brings its own SSRC.
            conn.media.set_keys(new_send, leg.key, send=fresh or new_send != conn.send_key,
                                receive=fresh or leg.key is None or leg.key != conn.receive_key)
            conn.srtp, conn.send_key, conn.receive_key = new_srtp, new_send, leg.key
            conn.media.remote = (leg.address, leg.port)
        log.info("connection modified", extra={"connection": conn.id, "mode": conn.mode.name.lower(),
                                                "srtp": conn.srtp, "remote": conn.remote})
        return conn

    # -- DLCX --------------------------------------------------------------------------------
    async def delete(self, *, endpoint: str, call_id: str, connection_id: str) -> list[Connection]:
        if connection_id:
            doomed = [self._connection(endpoint, call_id, connection_id)]
        else:
            names = self._resolve(endpoint, allow_all=True)
            keys = {self._keys[e] for e in names}
            doomed = [c for c in self.connections.values() if c.endpoint.key in keys]
            if call_id:
                cid = check_call_id(call_id)
                doomed = [c for c in doomed if c.call_id == cid]
                if not doomed:
                    raise MgcpError(MgcpError.UNKNOWN_CALL_ID, f"no connection of call {cid} on {endpoint}")
        for conn in doomed:
            await self._drop(conn)
        return doomed

    async def _drop(self, conn: Connection) -> None:
        self.connections.pop(conn.id, None)
        self._by_endpoint.pop(conn.endpoint.key, None)
        self._talkers.pop(conn.id, None)
        await conn.media.close()
        conn.send_key = conn.receive_key = None   # the call is over: forget its keys
        self.totals["deleted"] += 1
        log.info("connection deleted", extra={"connection": conn.id, **conn.media.counters()})

    def audit(self, endpoint: str) -> list[tuple[EndpointName, list[Connection]]]:
        names = self._resolve(endpoint, allow_all=True)
        return [(e, [c for c in self.connections.values() if c.endpoint == e]) for e in names]

    def local_sdp(self, conn: Connection) -> str:
        host, port = conn.media.local_address
        if host in WILDCARDS and self.advertise:
            host = self.advertise
        return audio_session(host, port, key=conn.send_key, payload_type=conn.payload_type,
                             direction=conn.mode.sdp_direction,
                             session_id=int(conn.id, 16) & 0x7FFFFFFF).to_text()

    # -- the 20 ms ticker --------------------------------------------------------------------
    def _ensure_ticker(self) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while self.connections:
            for conn in list(self._talkers.values()):
                if conn.mode.sends and conn.party.talks and conn.media.remote is not None:
                    payload = conn.party.payload()
                    if payload is not None:
                        conn.media.send_payload(payload)
            due += FRAME_MS / 1000
            now = loop.time()
            if now - due > MAX_LAG:
                due = now
            await asyncio.sleep(max(0.0, due - now))

    async def close(self) -> None:
        for conn in list(self.connections.values()):
            await self._drop(conn)
        if self._ticker is not None:
            self._ticker.cancel()
            try:
                await self._ticker
            except asyncio.CancelledError:
                pass
        if self._relay is not None:
            self._relay.close()
            self._relay = None

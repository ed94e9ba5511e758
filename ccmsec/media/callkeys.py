"""Which media keys a call's devices get (ENC-3, ENC-4, ENC-5) — pure, no I/O.

For each pair of devices that exchange media in a call, call control holds one pair of master
values from the key manager: `a_to_b` and `b_to_a`, where A is the device whose leg reference is
lower. A device encrypts what it sends with its direction's set and decrypts what it receives with
the other's (ENC-4), so the block of A's StartMediaTransmission carries `a_to_b` and the block of
A's OpenReceiveChannel carries `b_to_a`; B gets the reverse.

A device gets key material only when it can receive it safely (ENC-3, ENC-5): registered in the
encrypted security mode, over TLS on the secure SCCP port, with a cipher that encrypts (an
integrity-only NULL cipher does not). When either end of a pair is not eligible, neither gets keys
and both run RTP: a one-sided SRTP stream could not be decrypted.

A pair of sets serves exactly the two channels it was first given to (A's towards B, B's towards
A). When the agent plans the pair's media again — resume after hold, a new codec — the new
channels get a fresh pair, taken as at set-up with both devices' eligibility checked again, and
the old one is forgotten: a master key never outlives the media it was made for. The keys of an
ended call are forgotten with it (`forget`), and never leave this object except in the blocks
themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ccmsec.domain import DeviceSecurityMode
from ccmsec.media.srtp import MasterKey
from ccmsec.pki.tls import SccpTransportMode, TransportModeMismatch, transport_mode_of_cipher


@dataclass(frozen=True)
class DeviceTransport:
    """What call control knows of a device's registration."""

    security_mode: DeviceSecurityMode | str   # the mode the device registered with
    tls: bool                 # registered on the TLS port (2443), not on 2000
    cipher: str = ""          # the negotiated TLS cipher
    srtp_capable: bool = True  # the phone said so in CapabilitiesRes


def may_receive_keys(device: DeviceTransport) -> tuple[bool, str]:
    """ENC-3 / ENC-5, with the reason when not."""
    mode = DeviceSecurityMode.parse(device.security_mode)
    if mode is not DeviceSecurityMode.ENCRYPTED:
        return False, f"ENC-3: device security mode is {mode.value}, not encrypted"
    if not device.tls:
        return False, "ENC-5: registered on the clear SCCP port"
    try:
        encrypts = transport_mode_of_cipher(device.cipher) is SccpTransportMode.ENCRYPTED
    except TransportModeMismatch:          # neither AES nor NULL: not encrypted (DEV-1)
        encrypts = False
    if not encrypts:
        return False, f"ENC-5: TLS cipher {device.cipher or '(none)'} does not encrypt with AES"
    if not device.srtp_capable:
        return False, "ENC-3: the device did not announce SRTP capability"
    return True, ""


@dataclass
class PairKeys:
    a_to_b: MasterKey = field(repr=False)
    b_to_a: MasterKey = field(repr=False)


class CallKeyRing:
    def __init__(self) -> None:
        self._pairs: dict[tuple, PairKeys] = {}
        self._channels: dict[tuple, set] = {}   # pair -> the channels its keys were given to

    @staticmethod
    def pair_id(call_id: object, leg_a: int, leg_b: int) -> tuple:
        low, high = sorted((leg_a, leg_b))
        return (call_id, low, high)

    def has(self, pair: tuple) -> bool:
        return pair in self._pairs

    def put(self, pair: tuple, keys: PairKeys) -> None:
        self._pairs[pair] = keys
        self._channels[pair] = set()

    def given_to(self, pair: tuple, channel: object) -> bool:
        """Note that `channel` uses the pair's keys; False (nothing noted) when the pair already
        served two other channels — its media was planned again and needs a fresh pair."""
        users = self._channels.setdefault(pair, set())
        if channel not in users:
            if len(users) >= 2:
                return False
            users.add(channel)
        return True

    def key_for(self, call_id: object, leg: int, peer_leg: int, direction: str) -> MasterKey | None:
        """The master values `leg`'s device needs on its channel towards `peer_leg`:
        direction "tx" (what it sends) or "rx" (what it receives)."""
        keys = self._pairs.get(self.pair_id(call_id, leg, peer_leg))
        if keys is None:
            return None
        leg_is_a = leg < peer_leg
        if direction == "tx":
            return keys.a_to_b if leg_is_a else keys.b_to_a
        if direction == "rx":
            return keys.b_to_a if leg_is_a else keys.a_to_b
        raise ValueError(f"direction must be 'tx' or 'rx', not {direction!r}")

    def drop(self, pair: tuple) -> None:
        """Forget one pair's keys."""
        self._pairs.pop(pair, None)
        self._channels.pop(pair, None)

    def forget(self, call_id: object, leg: int | None = None) -> int:
        """Drop every key of the call (or of pairs involving `leg`); returns how many pairs."""
        doomed = [p for p in self._pairs if p[0] == call_id and (leg is None or leg in p[1:])]
        for p in doomed:
            del self._pairs[p]
            self._channels.pop(p, None)
        return len(doomed)

    def __len__(self) -> int:
        return len(self._pairs)


class CallKeySource:
    """The call agent's key source (ENC-3/4/5): `key_source(call, channel, direction)` returns the
    encryption-info block for one direction of one channel.

    A channel between two devices gets that direction's set of the pair's keys — a fresh pair is
    taken (`take_pair`, e.g. from a `KeyPool`) the first time the two devices of a call need one,
    and only when both may receive keys (`device_transport(name)` says how each registered). A
    channel to a media resource (music on hold, conference bridge) never gets keys (CALL-3,
    GW-3). Works on the agent's objects by their attributes: a call's `id` and `legs`, a channel's
    `leg` and `peer` ("leg", reference, tag), a leg's `reference` and `station.name`.
    """

    def __init__(self, take_pair, device_transport):
        self._take = take_pair
        self._transport = device_transport
        self.ring = CallKeyRing()
        self.refusals: dict[str, str] = {}   # device -> why it got no keys the last time
        self.dry = 0                         # pairs that wanted keys when none were ready

    def _eligible(self, device: str) -> bool:
        transport = self._transport(device)
        ok, why = (False, "not registered") if transport is None else may_receive_keys(transport)
        if ok:
            self.refusals.pop(device, None)
        else:
            self.refusals[device] = why
        return ok

    def key_source(self, call, channel, direction: str):
        from ccmsec.media.keys import to_encryption_info

        peer = channel.peer
        if not peer or peer[0] != "leg":
            return to_encryption_info(None)
        peer_leg = next((lg for lg in call.legs if lg.reference == peer[1]), None)
        if peer_leg is None:
            return to_encryption_info(None)
        mine = channel.leg.reference
        pair = self.ring.pair_id(call.id, mine, peer_leg.reference)
        if self.ring.has(pair) and not self.ring.given_to(pair, channel.party_id):
            self.ring.drop(pair)   # its media was planned again: never the old keys
        if not self.ring.has(pair):
            both = [self._eligible(channel.leg.station.name), self._eligible(peer_leg.station.name)]
            if not all(both):
                return to_encryption_info(None)   # one end cannot take keys: both run RTP
            keys = self._take()
            if keys is None:
                self.dry += 1
                return to_encryption_info(None)
            self.ring.put(pair, keys)
            self.ring.given_to(pair, channel.party_id)
        return to_encryption_info(self.ring.key_for(call.id, mine, peer_leg.reference, direction))

    def forget_call(self, call_id) -> int:
        return self.ring.forget(call_id)

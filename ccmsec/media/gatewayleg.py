"""A phone's media leg through the SRTP gateway as call control drives it — pure, no I/O.

The gateway is a device of the call agent, so whether a leg is SRTP was already decided when the
agent planned the call's media (ENC-3/ENC-5 for the phone, GW-2/GW-4 for the gateway:
`ccmsec.media.callkeys` with callmanager's `MediaPlaneMixin._transport`): a channel with both
encryption blocks is SRTP, one without is RTP. GW-1: the keys go to the gateway for the SRTP
stream only, as SDP: the phone's send key in the remote description's a=crypto (the gateway
decrypts with it), the phone's receive key as the gateway's `send_key` (it encrypts with it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ccmsec.formats.sdp import audio_session
from ccmsec.media.keys import from_encryption_info
from ccmsec.media.srtp import MasterKey
from ccmsec.wire.sccp import EncryptionInfo


@dataclass(frozen=True)
class GatewayLegPlan:
    srtp: bool
    reason: str = ""                                           # why RTP, with the rule id
    phone_send: MasterKey | None = field(default=None, repr=False)   # phone -> gateway
    phone_receive: MasterKey | None = field(default=None, repr=False)  # gateway -> phone

    @classmethod
    def for_channel(cls, rx_encryption: EncryptionInfo, tx_encryption: EncryptionInfo) -> "GatewayLegPlan":
        """The gateway device's channel blocks: `rx` is what it receives with (the phone's send
        key), `tx` what it transmits with. SRTP only with both; otherwise RTP and no key at all."""
        phone_send = from_encryption_info(rx_encryption)
        gateway_send = from_encryption_info(tx_encryption)
        if phone_send is None or gateway_send is None:
            return cls(False, "GW-2: call control gave this leg no keys")
        return cls(True, "", phone_send, gateway_send)

    def remote_sdp(self, phone_address: tuple[str, int], payload_type: int = 0) -> str:
        """The RemoteConnectionDescriptor: where the phone receives, and the key it sends with."""
        return audio_session(phone_address[0], phone_address[1], key=self.phone_send,
                             payload_type=payload_type).to_text()

"""Call control's decisions for a phone's media leg through the SRTP gateway — pure, no I/O.

GW-2: SRTP only when the phone can take keys (ENC-3/ENC-5) and the gateway supports SRTP;
otherwise call control tells the gateway to use RTP. GW-4: gateway SRTP also needs the cluster in
mixed mode. GW-1: the keys go to the gateway for the SRTP stream only, as SDP: the phone's send
key in the remote description's a=crypto (the gateway decrypts with it), the phone's receive key
as the gateway's `send_key` (the gateway encrypts with it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ccmsec.formats.sdp import audio_session
from ccmsec.media.callkeys import DeviceTransport, may_receive_keys
from ccmsec.media.srtp import MasterKey


@dataclass(frozen=True)
class GatewayLegPlan:
    srtp: bool
    reason: str = ""                                           # why RTP, with the rule id
    phone_send: MasterKey | None = field(default=None, repr=False)   # phone -> gateway
    phone_receive: MasterKey | None = field(default=None, repr=False)  # gateway -> phone

    def remote_sdp(self, phone_address: tuple[str, int], payload_type: int = 0) -> str:
        """The RemoteConnectionDescriptor: where the phone receives, and the key it sends with."""
        return audio_session(phone_address[0], phone_address[1], key=self.phone_send,
                             payload_type=payload_type).to_text()


def plan_gateway_leg(phone: DeviceTransport, *, gateway_srtp: bool, cluster_mixed: bool,
                     phone_send: MasterKey | None, phone_receive: MasterKey | None) -> GatewayLegPlan:
    eligible, why = may_receive_keys(phone)
    if not eligible:
        return GatewayLegPlan(False, f"GW-2: the phone cannot do SRTP here ({why})")
    if not gateway_srtp:
        return GatewayLegPlan(False, "GW-2: the gateway has no SRTP support")
    if not cluster_mixed:
        return GatewayLegPlan(False, "GW-4: the cluster is not in mixed mode")
    if phone_send is None or phone_receive is None:
        return GatewayLegPlan(False, "ENC-4: no keys from the key manager for this call")
    return GatewayLegPlan(True, "", phone_send, phone_receive)

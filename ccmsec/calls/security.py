"""Each call's security status, through the one policy (`ccmsec.policy.calls`).

Two levels are computed for a call, both by `call_security`:

* **shown** — CALL-1 as written: *encrypted* only when every device is registered encrypted and
  every media leg is keyed (SRTP). Until the key manager and SRTP are wired in (issue 11) no leg
  is keyed, so a call between encrypted phones shows *authenticated*; the phones display what
  this says.
* **potential** — the same with every leg counted as keyed and without the music a held party
  hears: what the call is by its devices. It decides who may barge (CALL-4…8: "an encrypted
  call" is a call between encrypted devices, whose keys a non-encrypted initiator must not get —
  also while one of them holds it) and the codec (CALL-9).

Resources and device kinds that never carry security (CALL-3: conference bridge, music on hold,
CTI port, inter-cluster trunk, phone models without security, a gateway whose profile says it has
no SRTP) join the endpoint list whenever they take part, so any call through them is non-secure.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from ccmsec.calls.config import DeviceProfile
from ccmsec.policy.calls import (
    CallSecurity,
    CallSecurityLevel,
    Endpoint,
    EndpointKind,
    call_security,
)


def endpoint(profile: DeviceProfile, *, keyed: bool) -> Endpoint:
    model = profile.model if profile.kind is EndpointKind.PHONE else None
    return Endpoint(name=profile.name, kind=profile.kind, model=model,
                    configured_mode=profile.security_mode, registered_mode=profile.security_mode,
                    media_srtp=keyed, srtp_capable=profile.srtp_capable)


def resource_endpoint(kind: EndpointKind) -> Endpoint:
    return Endpoint(name=kind.value, kind=kind)


def evaluate(profiles: Sequence[tuple[DeviceProfile, bool]],
             resources: Iterable[EndpointKind] = (), *, assume_keyed: bool = False) -> CallSecurity:
    """CALL-1/CALL-3 for the devices (with whether each one's media is keyed) and resources."""
    eps = [endpoint(p, keyed=keyed or assume_keyed) for p, keyed in profiles]
    eps += [resource_endpoint(k) for k in resources]
    if len(eps) < 2:  # a lone device (the other party still dialling): its own level
        eps.append(eps[0])
    return call_security(eps)


def lower(*levels: CallSecurityLevel) -> CallSecurityLevel:
    return CallSecurityLevel(min(levels))

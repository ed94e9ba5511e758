"""A user at a simulated phone (issue 10): the actions the PhoneSim gRPC API offers and what the
phone's display shows afterwards, including each call's security icon and the audio counters.

The phone is the registered `CallingPhone` of its runner (`PhoneRunner.calling`); actions go
through its display machine (`ccmsec.wire.sccp_phone.SccpPhone`), which only presses softkeys the
display offers — so what the API allows is what a real user could do. Every phone talks: its
`PhoneAudio` sends a tone of its own pitch as G.711 every 20 ms on each media channel, SRTP when
call control gave keys (ENC-4), and counts what it receives, loses and refuses (tampered / wrong
key, replay).
"""

from __future__ import annotations

import asyncio
import zlib

from ccmsec.aio.media import PhoneAudio
from ccmsec.wire.sccp_calls import Tone
from ccmsec.wire.sccp_phone import PhoneActionError
from ccmsec_proto import phone_sim_pb2 as pb

MAX_WAIT = 10.0
DEFAULT_WAIT = 2.0
ACTIONS = ("dial", "digits", "off-hook", "on-hook", "answer", "hangup", "hold", "resume", "transfer",
           "conference", "barge", "cbarge", "forward-all", "login", "logout")


class NotRegistered(Exception):
    """The phone has no call control to talk to (off, booting, failed)."""


def phone_audio(name: str) -> PhoneAudio:
    """Each phone its own pitch (300…1060 Hz), so a recording tells who was heard."""
    return PhoneAudio(300.0 + 40 * (zlib.crc32(name.encode()) % 20))


def _calling(runner):
    calling = runner.calling
    if calling is None or calling.conn.closed or calling.lost:
        raise NotRegistered(f"{runner.phone.name} is not registered with call control "
                            f"(state {runner.phone.state.value}); boot it first")
    return calling


def _do(display, action: str, number: str, reference: int, line: int, pin: str = "") -> None:
    if action == "login":       # extension mobility: the user types user id and PIN (DEV-2)
        display.mobility_login(number, pin)
    elif action == "logout":
        display.mobility_logout()
    elif action == "dial":
        display.dial(number, line)
    elif action == "digits":
        display.keypad(number)
    elif action == "off-hook":
        display.off_hook(line)
    elif action == "on-hook":
        display.on_hook()
    elif action == "answer":
        display.answer(reference)
    elif action == "hangup":
        display.hang_up(reference)
    elif action == "hold":
        display.hold(reference)
    elif action == "resume":
        display.resume(reference)
    elif action == "transfer":
        display.transfer(reference)
    elif action == "conference":
        display.conference(reference)
    elif action in ("barge", "cbarge"):
        display.barge(cbarge=action == "cbarge", reference=reference)
    elif action == "forward-all":
        if number and any(d not in "0123456789*" for d in number):
            raise PhoneActionError(f"{number!r} is not a number to forward to")
        display.forward_all(number, line or 1)
    else:
        raise PhoneActionError(f"unknown action {action!r}: one of {', '.join(ACTIONS)}")


async def act(runner, request: pb.PhoneActionRequest) -> pb.PhoneCallsReply:
    """Do what the user asked; wait (bounded) until call control changed the display."""
    action = request.action.strip().lower()
    if action not in ACTIONS:
        raise PhoneActionError(f"unknown action {request.action!r}: one of {', '.join(ACTIONS)}")
    if action in ("dial", "digits") and not request.number:
        raise PhoneActionError(f"{action} needs a number")
    if action == "login" and not (request.number and request.pin):
        raise PhoneActionError("login needs the user id (number) and the PIN")
    if not 0 <= request.line <= 64 or not 0 <= request.call_reference <= 0xFFFFFFFF:
        raise PhoneActionError("line or call reference out of range")
    failover = runner.failover
    if action in ("hangup", "on-hook") and failover is not None and failover.preserved:
        # A call kept through a failover (LATER-7) is no longer on any node's display: hanging up
        # ends it on the phone, and the far end clears it once the media stops.
        failover.hang_up()
        return calls_reply(runner)
    calling = _calling(runner)
    wait = request.wait_seconds if request.wait_seconds > 0 else DEFAULT_WAIT
    wait = min(wait, MAX_WAIT)
    before = _signature(calling.display)
    calling.act(_do, calling.display, action, request.number, request.call_reference, request.line,
                request.pin)
    try:
        await calling.wait_for(lambda d: _signature(d) != before, timeout=wait, what="answer")
    except (TimeoutError, ConnectionError):
        pass   # the reply shows the display as it is; call control may simply not have answered yet
    await asyncio.sleep(0)
    reply = calls_reply(runner)
    if action in ("login", "logout"):
        # call control restarts the phone right after its answer: keep the answer in the reply
        # even when the display it was shown on is already gone
        answer = next((n for n in reversed(calling.display.notifications)
                       if n.startswith("Extension mobility")), "")
        if answer and answer not in reply.notifications:
            reply.notifications.append(answer)
    return reply


def _signature(display) -> tuple:
    return tuple((c.reference, c.state, c.security, c.tone, c.ringing, c.softkey_set,
                  c.softkey_mask)
                 for c in display.calls.values()) + (len(display.ended), len(display.notifications))


def _tone(code: int) -> str:
    if not code:
        return ""
    try:
        return Tone(code).name.lower().replace("_", "-")
    except ValueError:
        return f"tone-{code:#x}"


def calls_reply(runner) -> pb.PhoneCallsReply:
    p = runner.phone
    reply = pb.PhoneCallsReply(name=p.name, registered_with=p.registered_with, transport=p.transport)
    audio: PhoneAudio = runner.audio
    totals = audio.totals()
    reply.media.CopyFrom(pb.PhoneMediaCounters(
        sent=totals["sent"], received=totals["received"], lost=totals["lost"],
        refused_authentication=totals.get("refused_authentication", 0),
        refused_replay=totals.get("refused_replay", 0), malformed=totals.get("malformed", 0),
        streams=len(audio.by_port), srtp_both_ways=audio.srtp_both_ways))
    calling = runner.calling
    if calling is None:
        return reply
    d = calling.display
    reply.ready = d.ready
    reply.lines.extend(pb.PhoneLineState(instance=i, number=li.number, label=li.label)
                       for i, li in sorted(d.lines.items()))
    for c in d.calls.values():
        reply.calls.append(pb.PhoneCallState(
            reference=c.reference, line=c.line, state=c.state_name, calling=c.calling, called=c.called,
            icon=c.icon, softkeys=d.offered_names(c), prompt=c.prompt, ringing=c.ringing,
            tone=_tone(c.tone)))
    reply.notifications.extend(list(d.notifications)[-8:])
    reply.ended.extend(f"{c.reference} {c.calling or '?'}->{c.called or '?'} {c.state_name}"
                       for c in list(d.ended)[-8:])
    return reply

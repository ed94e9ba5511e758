"""Call control's read cache of the CTL Provider's mode and CTL (issue 9 §5,
services/callmanager/ccmsec_callmanager/cluster_state.py): the rules that keep a decision from
using a stale or assumed mode, with the owner's answers given by a coroutine (the gRPC side is
proved in tests/integration/test_callmanager_service.py against the real ctl-provider)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from ccmsec_callmanager.cluster_state import ClusterState, ClusterStateFollower, ClusterStateUnknown
from ccmsec.runtime.bus import make_event
from ccmsec_proto import common_pb2, events_pb2

MIXED = ClusterState("mixed", True, 1)
NON_SECURE = ClusterState("non-secure", False, 0)


class Owner:
    """What the CTL Provider answers, and how often it was asked."""

    def __init__(self, state=NON_SECURE, delay: float = 0.0):
        self.state, self.delay, self.asked, self.down = state, delay, 0, False
        self.during_ask = None  # called while an answer is on its way

    async def __call__(self) -> ClusterState:
        self.asked += 1
        answer = self.state
        if self.during_ask is not None:
            hook, self.during_ask = self.during_ask, None
            await hook()
        await asyncio.sleep(self.delay)
        if self.down:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                       details="connection refused")
        return answer


def mode_event(mode: int) -> events_pb2.Event:
    return make_event("mode.changed", "ctl-provider", mode_changed=events_pb2.SecurityModeChanged(mode=mode))


async def test_never_answered_is_unknown_with_the_reason_never_an_assumed_mode():
    owner = Owner()
    owner.down = True
    follower = ClusterStateFollower(owner, timeout=1.0)
    with pytest.raises(ClusterStateUnknown, match="CTL Provider did not answer.*connection refused"):
        await follower.current()
    owner.down = False
    assert await follower.current() == NON_SECURE


async def test_an_answer_overtaken_by_an_event_is_asked_again():
    """The owner read non-secure; before its answer arrived a mode.changed (mixed) did: that answer
    may be older than the event, so the owner is asked again and its second answer is used."""
    owner = Owner(NON_SECURE)
    follower = ClusterStateFollower(owner)

    async def change_meanwhile():
        owner.state = MIXED  # committed by the owner after it read the first answer
        await follower.on_event(mode_event(common_pb2.CLUSTER_MIXED))

    owner.during_ask = change_meanwhile
    assert await follower.current() == MIXED
    assert owner.asked == 2


async def test_a_late_event_is_confirmed_with_the_owner_and_does_not_stick():
    owner = Owner(MIXED)
    follower = ClusterStateFollower(owner)
    assert await follower.current() == MIXED
    await follower.on_event(mode_event(common_pb2.CLUSTER_NON_SECURE))  # an old one, redelivered
    assert follower.known.mode == "non-secure"  # applied at once ...
    assert await follower.current() == MIXED    # ... and confirmed by the owner at the next decision
    assert owner.asked == 2


async def test_a_storm_of_decisions_after_a_reset_shares_one_question():
    owner = Owner(MIXED, delay=0.05)
    follower = ClusterStateFollower(owner)
    await follower.current()
    follower.forget()  # a reset was delivered
    answers = await asyncio.gather(*(follower.current() for _ in range(200)))
    assert set(answers) == {MIXED} and owner.asked == 2


async def test_owner_away_keeps_the_last_known_state_logged_and_is_not_asked_per_decision(caplog):
    owner = Owner(MIXED, delay=0.01)
    follower = ClusterStateFollower(owner)
    await follower.current()
    owner.down = True
    follower.forget()
    answers = await asyncio.gather(*(follower.current() for _ in range(50)))
    assert set(answers) == {MIXED}
    assert owner.asked == 2  # one failed question for the whole burst
    assert "deciding on the last known cluster state" in caplog.text
    assert "connection refused" in follower.last_error


async def test_ctl_updated_marks_the_ctl_present():
    owner = Owner(ClusterState("non-secure", False, 0))
    follower = ClusterStateFollower(owner)
    await follower.current()
    owner.state = ClusterState("non-secure", True, 4)
    await follower.on_event(make_event("ctl.updated", "ctl-provider",
                                       ctl_updated=events_pb2.CtlUpdated(version=4, sha256="00" * 32)))
    assert follower.known == ClusterState("non-secure", True, 4)
    assert await follower.current() == ClusterState("non-secure", True, 4)


async def test_without_an_owner_to_ask_the_cluster_is_mode_1():
    follower = ClusterStateFollower.fixed()
    assert await follower.current() == NON_SECURE


async def test_an_event_before_the_first_answer_is_not_a_known_state():
    """A ctl.updated replayed before the owner ever answered must not become 'non-secure with a
    CTL': with the owner away, decisions stay refused rather than run on a mode nobody answered."""
    owner = Owner(MIXED)
    owner.down = True
    follower = ClusterStateFollower(owner, timeout=0.5)
    await follower.on_event(make_event("ctl.updated", "ctl-provider",
                                       ctl_updated=events_pb2.CtlUpdated(version=3, sha256="00" * 32)))
    assert follower.known is None
    with pytest.raises(ClusterStateUnknown):
        await follower.current()
    owner.down = False
    assert await follower.current() == MIXED


async def test_the_background_follower_survives_a_decision_failing_at_the_same_moment():
    """follow() and a decision ask together while the owner is away: follow() is told the other
    question just failed (no second question) and must go on asking, not die."""
    owner = Owner(MIXED, delay=0.1)
    owner.down = True
    follower = ClusterStateFollower(owner, timeout=1.0, refresh_interval=0.1)
    decision = asyncio.create_task(follower.current())
    await asyncio.sleep(0.02)  # the decision holds the question; follow() waits behind it
    task = asyncio.create_task(follower.follow())
    try:
        with pytest.raises(ClusterStateUnknown):
            await decision
        await asyncio.sleep(0.3)
        assert not task.done(), task.exception() if not task.cancelled() else "cancelled"
        owner.down = False
        for _ in range(100):
            if follower.known == MIXED:
                break
            await asyncio.sleep(0.05)
        assert follower.known == MIXED  # found by the background follower, still running
        assert not task.done()
    finally:
        task.cancel()

"""GW-4: the gateway allows SRTP only in a mixed-mode cluster. It asks call control once, then
follows `mode.changed`; an event that arrives while the question is under way is newer than the
answer (which call control may have read before the change) — the answer overwrote it, and the
gateway went on allowing SRTP in a cluster that had just become non-secure."""

from __future__ import annotations

import asyncio

from ccmsec.domain import ClusterMode
from ccmsec_proto import events_pb2
from ccmsec_srtp_gateway.clustermode import ClusterModeWatcher

MIXED, NON_SECURE = ClusterMode.MIXED.to_proto(), ClusterMode.NON_SECURE.to_proto()


def changed(mode) -> events_pb2.Event:
    return events_pb2.Event(mode_changed=events_pb2.SecurityModeChanged(mode=mode))


async def test_a_mode_change_during_the_question_wins_over_its_answer_GW_4():
    asked, answer = asyncio.Event(), asyncio.Event()

    async def ask():
        asked.set()
        await answer.wait()
        return MIXED                 # read by call control before the change

    watcher = ClusterModeWatcher(ask)
    question = asyncio.create_task(watcher.is_mixed())
    await asyncio.wait_for(asked.wait(), 2)
    await watcher.on_event(changed(NON_SECURE))
    answer.set()
    await asyncio.wait_for(question, 2)
    assert watcher.mode == NON_SECURE and not await watcher.is_mixed()


async def test_the_answer_is_kept_and_later_events_followed():
    calls = []

    async def ask():
        calls.append(1)
        return MIXED

    watcher = ClusterModeWatcher(ask)
    assert await watcher.is_mixed() and await watcher.is_mixed() and calls == [1]   # asked once
    await watcher.on_event(changed(NON_SECURE))
    assert not await watcher.is_mixed() and calls == [1]

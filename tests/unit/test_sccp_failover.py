"""The phone's choice of call-control node (LATER-7, SRST-1): order, standby, back-off with
jitter, SRST last, fail-back only after the stable period and never in a call."""

from __future__ import annotations

import pytest

from ccmsec.formats.cnfxml import CallManagerMember, SrstInfo
from ccmsec.wire.sccp_failover import (
    CallControlSelector,
    FailoverSettings,
    Target,
    TargetKind,
    targets_from_config,
)

CM1, CM2, CM3 = Target("10.0.0.1", 2000), Target("10.0.0.2", 2000), Target("10.0.0.3", 2000)
SRST = Target("10.0.9.1", 2000, TargetKind.SRST)


def selector(**kw):
    settings = FailoverSettings(**{"stable_period": 30, "retry_base": 1, "retry_max": 8, "jitter": 0.5, **kw})
    return CallControlSelector([CM1, CM2, CM3, SRST], settings, random=lambda: 1.0)


def test_boot_tries_the_list_in_order_then_backs_off_with_jitter_LATER_7():
    sel = selector()
    seen = []
    now = 0.0
    for _ in range(4):
        attempt = sel.next_attempt(now)
        seen.append(attempt.target)
        sel.attempt_failed(attempt.index, now, "refused")
    assert seen == [CM1, CM2, CM3, SRST]            # down the list, SRST last
    again = sel.next_attempt(now)
    assert again.index == 0 and again.not_before == 0.5   # 1 s halved by the jitter (random()=1)
    for _ in range(4):
        sel.attempt_failed(sel.next_attempt(now).index, now)
    assert sel.next_attempt(now).not_before == 1.0   # doubled
    for _ in range(20):
        sel.attempt_failed(sel.next_attempt(now).index, now)
    assert sel.next_attempt(now).not_before == 4.0   # capped at retry_max (8) * (1 - 0.5)


def test_backoff_after_very_many_failed_passes_stays_at_the_cap():
    sel = CallControlSelector([CM1], FailoverSettings(retry_base=1.0, retry_max=5.0, jitter=0.0))
    assert sel.backoff(2_000) == 5.0 and sel.backoff(10**6) == 5.0
    for _ in range(2_000):   # a phone that keeps failing for hours keeps retrying at the cap
        sel.attempt_failed(sel.next_attempt(0.0).index, 0.0)
    assert sel.next_attempt(0.0).not_before == 5.0


def test_jitter_spreads_a_fleet():
    waits = {CallControlSelector([CM1], FailoverSettings(retry_base=10, retry_max=10, jitter=0.5),
                                 random=lambda r=r: r).backoff(1) for r in (0.0, 0.3, 0.9)}
    assert waits == {10.0, 8.5, 5.5}


def test_loss_moves_down_to_the_standby_and_then_srst():
    sel = selector()
    sel.registered(0, 0.0)
    assert sel.standby_target() == 1 and sel.higher_targets() == []
    sel.lost(5.0, "connection reset")
    assert sel.next_attempt(5.0) .index == 1 and sel.next_attempt(5.0).not_before == 5.0  # at once
    sel.attempt_failed(1, 5.0)
    assert sel.next_attempt(5.0).index == 2
    sel.attempt_failed(2, 5.0)
    attempt = sel.next_attempt(5.0)
    assert attempt.target is SRST and attempt.not_before == 5.0
    sel.registered(3, 6.0)
    assert sel.standby_target() is None and sel.higher_targets() == [0, 1, 2]


def test_fail_back_waits_for_the_stable_period_and_never_during_a_call():
    sel = selector(stable_period=30)
    sel.registered(3, 0.0)                      # on SRST
    sel.probe(1, 10.0, True)
    sel.probe(0, 20.0, True)
    assert sel.fail_back_target(39.0, in_call=False) is None
    assert sel.fail_back_target(40.0, in_call=False) == 1     # CM2 reachable for 30 s
    assert sel.fail_back_target(50.0, in_call=True) is None   # never in the middle of a call
    assert sel.fail_back_target(50.0, in_call=False) == 0     # the highest one that qualifies
    sel.probe(0, 51.0, False)                                 # a flap restarts its clock
    sel.probe(0, 52.0, True)
    assert sel.fail_back_target(60.0, in_call=False) == 1
    assert sel.fail_back_target(82.0, in_call=False) == 0
    sel.left(82.0)
    assert sel.next_attempt(82.0).index == 0


def test_a_node_that_closed_its_probe_connection_early_starts_its_stable_period_again_LATER_7():
    """A kept probe connection found closed sooner than the node's silence limit means the node
    restarted (or shed the phone): its stable period starts again with the next answer. Closed
    after the limit, the node only dropped a quiet connection: the clock keeps running."""
    sel = selector(stable_period=30)
    sel.registered(1, 0.0)
    sel.probe(0, 10.0, True)
    sel.closed_early(0, silence_allowed=60.0, last_answer=20.0, now=30.0)   # restarted meanwhile
    sel.probe(0, 30.0, True)
    assert sel.fail_back_target(45.0, in_call=False) is None              # 30 s from 10.0: not any more
    assert sel.fail_back_target(60.0, in_call=False) == 0                 # 30 s from the restart
    sel.closed_early(0, silence_allowed=60.0, last_answer=61.0, now=130.0)  # quiet too long: its own limit
    sel.probe(0, 130.0, True)
    assert sel.reachable_since(0) == 30.0


def test_registered_at_the_top_never_fails_back():
    sel = selector()
    sel.registered(0, 0.0)
    sel.probe(1, 0.0, True)
    assert sel.fail_back_target(1000.0, in_call=False) is None


def test_bad_settings_and_lists_are_refused():
    with pytest.raises(ValueError, match="no call-control node"):
        CallControlSelector([])
    with pytest.raises(ValueError, match="at most 4"):
        CallControlSelector([CM1, CM2, CM3, SRST, CM1])
    with pytest.raises(ValueError):
        FailoverSettings(jitter=1.0)
    with pytest.raises(ValueError):
        FailoverSettings(retry_base=5, retry_max=1)


def test_targets_from_the_configuration_file():
    members = [CallManagerMember("10.0.0.1", 2000, 2443), CallManagerMember("10.0.0.2", 2000, 2443)]
    secure_srst = SrstInfo("Enable", ("10.0.9.1",), (2000,), True, b"cert", (2443,))
    out = targets_from_config(members, secure_srst, secure=True, srst_secure_allowed=True)
    assert [(t.host, t.port, t.kind, t.secure) for t in out] == [
        ("10.0.0.1", 2443, TargetKind.CALL_CONTROL, True), ("10.0.0.2", 2443, TargetKind.CALL_CONTROL, True),
        ("10.0.9.1", 2443, TargetKind.SRST, True)]
    # A non-secure reference: the phone falls back on the clear port.
    plain = SrstInfo("Enable", ("10.0.9.1",), (2000,))
    assert targets_from_config(members, plain, secure=True, srst_secure_allowed=True)[-1].port == 2000
    assert len(targets_from_config(members, SrstInfo("Disable"), secure=False, srst_secure_allowed=False)) == 2

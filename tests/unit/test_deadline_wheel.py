"""The deadline wheel call control's SCCP server keeps its connections' deadlines in (issue 15:
one loop timer for all phones instead of a timer handle per phone)."""

from __future__ import annotations

import random

import pytest

from ccmsec.aio.deadlines import DeadlineWheel


def test_an_item_is_never_due_early_and_at_most_one_resolution_late():
    wheel = DeadlineWheel(0.1)
    rng = random.Random(15)
    deadlines = {i: 1000.0 + rng.uniform(0, 70) for i in range(2000)}
    for item, when in deadlines.items():
        wheel.add(item, when)
    seen: dict[int, float] = {}
    now = 1000.0
    while len(seen) < len(deadlines):
        now += 0.013
        for item in wheel.pop_due(now):
            assert item not in seen
            seen[item] = now
    for item, when in deadlines.items():
        assert when <= seen[item] <= when + 0.1 + 0.013, (when, seen[item])
    assert len(wheel) == 0 and wheel.next_time() is None


def test_discarded_items_are_never_due_and_next_time_skips_emptied_buckets():
    wheel = DeadlineWheel(0.5)
    a = wheel.add("a", 10.2)
    wheel.add("b", 20.0)
    assert wheel.next_time() == pytest.approx(10.5)
    wheel.discard("a", a)
    wheel.discard("a", a)   # twice is harmless
    assert wheel.next_time() == pytest.approx(20.0)
    assert wheel.pop_due(15.0) == []
    assert wheel.pop_due(20.0) == ["b"]
    assert wheel.next_time() is None


def test_an_item_filed_again_after_it_was_due_is_due_at_its_new_deadline():
    wheel = DeadlineWheel(0.1)
    wheel.add("phone", 5.0)
    assert wheel.pop_due(5.0) == ["phone"]
    wheel.add("phone", 40.0)   # heard from meanwhile: the lazy deadline moves on
    assert wheel.pop_due(39.9) == []
    assert wheel.pop_due(40.0) == ["phone"]


def test_resolution_must_be_positive():
    with pytest.raises(ValueError):
        DeadlineWheel(0)

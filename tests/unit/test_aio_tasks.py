"""cancel_and_wait: a task that loses its cancellation is still ended, and quickly."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from ccmsec.aio.tasks import cancel_and_wait


async def test_a_task_that_swallows_its_first_cancellation_is_cancelled_again_and_ends():
    swallowed = []

    async def stubborn():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed.append(True)  # as Python 3.11's wait_for can do: carry on waiting
        await asyncio.Event().wait()

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    started = time.monotonic()
    await asyncio.wait_for(cancel_and_wait(task, grace=0.1), 5)
    assert task.cancelled() and swallowed == [True]
    assert time.monotonic() - started < 2


async def test_the_error_of_a_stopped_task_is_consumed_and_a_finished_task_returns_at_once():
    async def failing():
        raise RuntimeError("boom")

    loop = asyncio.get_running_loop()
    reported: list[dict] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        task = asyncio.create_task(failing())
        await asyncio.sleep(0)
        await cancel_and_wait(task)  # no raise
        assert task.done() and not task.cancelled()
        del task
        gc.collect()  # a task whose error nobody retrieved says so when it is freed
    finally:
        loop.set_exception_handler(previous)
    assert [c.get("message") for c in reported] == []  # no "Task exception was never retrieved"


async def test_the_callers_own_cancellation_is_not_swallowed():
    released = asyncio.Event()

    async def stubborn_until_released():
        while not released.is_set():
            try:
                await released.wait()
            except asyncio.CancelledError:
                pass

    stubborn = asyncio.create_task(stubborn_until_released())
    await asyncio.sleep(0)  # started: its cancellations are now swallowed
    outer = asyncio.create_task(cancel_and_wait(stubborn, grace=10))
    await asyncio.sleep(0.05)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert not stubborn.done()
    released.set()
    await asyncio.wait_for(stubborn, 2)


async def test_a_task_stopping_itself_is_cancelled_without_waiting_on_itself():
    async def self_stop():
        await cancel_and_wait(asyncio.current_task())
        await asyncio.sleep(3600)

    task = asyncio.create_task(self_stop())
    await asyncio.wait({task}, timeout=2)
    assert task.cancelled()

"""Ending background tasks for sure.

`task.cancel()` followed by `await task` hangs for ever when the task loses its cancellation: on
Python 3.11, `asyncio.wait_for` returns the result instead of raising when a cancellation arrives
just as the operation it waits for completes (fixed in 3.12), and the task then goes on to its next
wait. Seen in CI: a phone's task cancelled during a CAPF visit carried on and waited for a reset
that never came, and the test's teardown waited with it.
"""

from __future__ import annotations

import asyncio


async def cancel_and_wait(task: asyncio.Task, *, grace: float = 1.0) -> None:
    """Cancel `task` and return once it has ended, cancelling it again every `grace` seconds
    while it runs on. Its outcome (an error included) is consumed; the caller's own cancellation
    is not swallowed."""
    if task is asyncio.current_task():  # stopping itself: the cancellation ends it at its next wait
        task.cancel()
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=grace)
    if not task.cancelled():
        task.exception()  # retrieved: a task being stopped has nothing more to say

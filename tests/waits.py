"""Waiting on a condition in tests: bounded, polled, never a bare sleep."""

from __future__ import annotations

import asyncio
import time


async def until(fn, what: str, timeout: float = 30.0, step: float = 0.2):
    """The first truthy value of `await fn()`, polled every `step` s; AssertionError naming `what`
    after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = await fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        await asyncio.sleep(step)

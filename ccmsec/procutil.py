"""Child processes die with the service that started them.

A process-pool worker blocks reading its job queue; when its service is killed (`kill -9`, OOM)
nothing closes that queue, so the worker would live on, orphaned, holding the signing key.
`exit_with_parent` (a pool initializer) watches for the parent's death and exits at once.
(PR_SET_PDEATHSIG is not used: it fires when the *thread* that spawned the worker ends, which
in a pool is not the life of the service.)
"""

from __future__ import annotations

import os
import threading
import time

WATCH_INTERVAL = 0.2  # seconds between two looks at the parent


def exit_with_parent(parent_pid: int, interval: float = WATCH_INTERVAL) -> None:
    """Process-pool initializer: `initializer=exit_with_parent, initargs=(os.getpid(),)`."""
    if os.getppid() != parent_pid:  # the parent died while this worker was starting
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os._exit(1)  # reparented: the service is gone; no cleanup, nothing to flush

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()

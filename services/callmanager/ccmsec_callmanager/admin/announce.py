"""How long the API run without a service (no outbox: tests, tools) waits for a direct publish.

Inside the callmanager service every change the API makes goes through the domain layer
(`ccmsec_callmanager/domain.py`): its events are committed with it in callmanager's outbox and
relayed until JetStream acknowledges them (issue 9 §4); nothing here publishes.
"""

from __future__ import annotations

PUBLISH_TIMEOUT = 5.0  # seconds; a stuck bus must not hang the request

"""What call control knows of the cluster security mode and the CTL: the CTL Provider's state
(issue 9 §5), never read from its table.

`ClusterStateFollower` keeps a read cache of the owner's answer to `CtlProvider/GetSecurityMode`
(mode, whether a CTL exists, its version), fed this way:

* at start the service subscribes to `mode.changed` and `ctl.updated` first, then asks (in the
  background, with back-off, until answered) — so no change can fall between the answer and the
  subscription;
* an event is applied at once (it is published after the owner committed the change) and marks
  the cache for confirmation: the next decision asks the owner again, so an old event delivered
  late (a durable consumer catching up after a restart) never outlives the owner's next answer;
  before the owner's first answer an event only makes that answer be asked again (it never becomes
  a known state by itself);
* an answer obtained while an event arrived is asked again (the event may be newer than it);
* `forget()` (before every reset is delivered, as the mode change's RST-3 resets are) makes the
  next decision ask the owner; and every `refresh_interval` the owner is asked anyway (a change
  whose event waits in the owner's outbox while NATS is away).

Decisions never run on a mode nobody answered: before the first answer `current()` asks (bounded
by `timeout`) and raises `ClusterStateUnknown` with a clear reason when the owner does not answer —
registrations are refused, the administration API answers 503. Once known, the owner being briefly
away keeps the last known state (logged): the mode changes only through the owner, and its change
events wait in its outbox until delivered.

Used without an owner to ask (`fixed`: tests and benchmarks of call control alone, a cluster with no
CTL Provider configured): MODE-1's non-secure cluster without a CTL — nobody can have made it mixed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import grpc

from ccmsec.domain import ClusterMode
from ccmsec.runtime.settings import SettingsError
from ccmsec_proto import common_pb2, ctl_provider_pb2_grpc, events_pb2

log = logging.getLogger("ccmsec.callmanager")

ASK_TIMEOUT = 3.0        # one GetSecurityMode
DECISION_WAIT = 5.0      # the most a decision waits for the owner's first answer
REFRESH_INTERVAL = 5.0   # the owner is asked again at least this often
MAX_BACKOFF = 5.0
RETRY_AFTER_FAILURE = 1.0  # once known, the owner is not asked again sooner after it failed to answer


@dataclass(frozen=True)
class ClusterState:
    mode: str              # ClusterMode value
    ctl_present: bool      # MODE-5: a CTL exists
    ctl_version: int = 0


NON_SECURE = ClusterState(ClusterMode.NON_SECURE.value, False, 0)


class ClusterStateUnknown(Exception):
    """The CTL Provider has not answered yet: no decision may assume a mode."""


class _JustFailed(Exception):
    """Another decision asked the owner while this one waited, and got no answer."""


Ask = Callable[[], Awaitable[ClusterState]]


def ask_ctl_provider(channel: Callable[[], grpc.aio.Channel], timeout: float = ASK_TIMEOUT) -> Ask:
    """`CtlProvider/GetSecurityMode` over the cluster's mutual TLS."""
    async def ask() -> ClusterState:
        stub = ctl_provider_pb2_grpc.CtlProviderStub(channel())
        reply = await stub.GetSecurityMode(common_pb2.Empty(), timeout=timeout)
        return ClusterState(ClusterMode.from_proto(reply.mode).value, reply.ctl_present, reply.ctl_version)
    return ask


class ClusterStateFollower:
    def __init__(self, ask: Ask | None, *, timeout: float = DECISION_WAIT,
                 refresh_interval: float = REFRESH_INTERVAL):
        self._ask = ask
        self._timeout = timeout
        self._refresh_interval = refresh_interval
        self._state: ClusterState | None = None if ask is not None else NON_SECURE
        self._asked_at = 0.0
        self._confirm = False        # an event or forget() since the last answer
        self._generation = 0         # bumped by every event
        self._answers = 0            # answers received
        self._failed_at = -1.0       # when asking last failed
        self._warned = False         # the last-known warning was logged since the last answer
        self._lock = asyncio.Lock()
        self.last_error = ""         # why the owner did not answer (Status)

    @classmethod
    def fixed(cls, state: ClusterState = NON_SECURE) -> "ClusterStateFollower":
        follower = cls(None)
        follower._state = state
        return follower

    # --- reading ---------------------------------------------------------------------------
    @property
    def known(self) -> ClusterState | None:
        return self._state

    def usable_now(self) -> ClusterState | None:
        """What `current()` would return without awaiting anything (known, fresh, no event
        asking to confirm it); None when it would ask the owner or is not known."""
        state = self._state
        if self._ask is None:
            return state
        if state is not None and not self._confirm \
                and time.monotonic() - self._asked_at < self._refresh_interval:
            return state
        return None

    async def current(self) -> ClusterState:
        """The state a decision may use: confirmed by the owner when an event or `forget()` asked
        for it (the last known one if the owner cannot answer now), asked first if never known."""
        state = self._state
        if self._ask is None:
            return state  # type: ignore[return-value]
        now = time.monotonic()
        fresh = now - self._asked_at < self._refresh_interval
        if state is not None and fresh and not self._confirm:
            return state
        if state is not None and now - self._failed_at < RETRY_AFTER_FAILURE:
            self._warn_last_known()  # the owner did not answer a moment ago: asked again soon
            return state
        try:
            return await asyncio.wait_for(self.refresh(), self._timeout)
        except SettingsError as exc:  # no CTL Provider configured: nobody can make it mixed
            log.warning("%s; the cluster is non-secure without a CTL (MODE-1)", exc)
            self._state, self._ask = NON_SECURE, None
            return NON_SECURE
        except (asyncio.TimeoutError, grpc.aio.AioRpcError, OSError, ValueError, _JustFailed) as exc:
            if not isinstance(exc, _JustFailed):
                self.last_error, self._failed_at = _reason(exc), time.monotonic()
            if self._state is None:
                raise ClusterStateUnknown(
                    f"the cluster security mode is not known yet: the CTL Provider did not answer "
                    f"({self.last_error})") from None
            self._warn_last_known()
            return self._state

    def _warn_last_known(self) -> None:
        """Once per time the owner stops answering (its next answer re-arms it)."""
        if not self._warned:
            self._warned = True
            log.warning("CTL Provider did not answer; deciding on the last known cluster state",
                        extra={"mode": self._state.mode if self._state else "", "error": self.last_error})

    async def mode(self) -> str:
        return (await self.current()).mode

    async def refresh(self) -> ClusterState:
        """Ask the owner until an answer is not overtaken by an event that arrived meanwhile. A
        storm of decisions (every phone re-registering after a reset) shares one question: who
        waited for the lock while another asked takes that answer."""
        answers, entered = self._answers, time.monotonic()
        async with self._lock:
            if self._answers != answers and not self._confirm and self._state is not None:
                return self._state
            if self._failed_at >= entered:  # the owner just did not answer another: not again now
                raise _JustFailed(self.last_error)
            while True:
                generation = self._generation
                try:
                    answer = await self._ask()  # type: ignore[misc]
                except (grpc.aio.AioRpcError, OSError, ValueError, asyncio.CancelledError) as exc:
                    self._failed_at = time.monotonic()  # before the lock goes to whoever waits
                    if not isinstance(exc, asyncio.CancelledError):
                        self.last_error = _reason(exc)
                    raise
                if generation == self._generation:
                    break
            if answer != self._state:
                log.info("cluster state from the CTL Provider", extra={
                    "mode": answer.mode, "ctl_present": answer.ctl_present, "ctl_version": answer.ctl_version})
            self._state, self._asked_at, self._confirm, self.last_error = answer, time.monotonic(), False, ""
            self._answers += 1
            self._warned = False
            return answer

    def forget(self) -> None:
        """The next decision asks the owner (last known state if it cannot answer)."""
        self._confirm = True

    # --- feeding ---------------------------------------------------------------------------
    async def on_event(self, event: events_pb2.Event) -> None:
        body = event.WhichOneof("body")
        if body not in ("mode_changed", "ctl_updated"):
            return
        if self._state is None:
            # Nothing answered yet: an event alone (perhaps a late one replayed by this node's
            # durable consumer) must not become a known state. The owner's answer decides; one in
            # flight is asked again, since the event may be newer than it.
            self._generation += 1
            self._confirm = True
            log.info("cluster state event before the CTL Provider's first answer: asking it",
                     extra={"event_id": event.id, "kind": event.kind})
            return
        state = self._state
        if body == "mode_changed":
            try:
                mode = ClusterMode.from_proto(event.mode_changed.mode).value
            except ValueError:
                log.warning("mode.changed with an unknown mode ignored", extra={"event_id": event.id})
                return
            self._state = ClusterState(mode, state.ctl_present, state.ctl_version)
        else:
            self._state = ClusterState(state.mode, True, max(state.ctl_version, event.ctl_updated.version))
        self._generation += 1
        self._confirm = True  # confirmed by the owner at the next decision (a late event must not stick)
        log.info("cluster state changed by event", extra={"event_id": event.id, "kind": event.kind,
                                                         "mode": self._state.mode})

    async def follow(self) -> None:
        """Background: ask until the owner answered once, then again every refresh interval."""
        if self._ask is None:
            return
        delay = 0.5
        while True:
            try:
                await self.refresh()
                delay = self._refresh_interval
            except SettingsError as exc:  # no CTL Provider configured: nobody can make it mixed
                log.warning("%s; the cluster is non-secure without a CTL (MODE-1)", exc)
                self._state, self._ask = NON_SECURE, None
                return
            except (grpc.aio.AioRpcError, OSError, ValueError, _JustFailed) as exc:
                if not isinstance(exc, _JustFailed):  # a decision's question just failed: its reason stands
                    self.last_error, self._failed_at = _reason(exc), time.monotonic()
                if self._state is None:
                    log.warning("CTL Provider not answering GetSecurityMode; asking again",
                                extra={"error": self.last_error})
                else:
                    self._warn_last_known()
                delay = min(delay * 2, MAX_BACKOFF) if self._state is None else self._refresh_interval
            await asyncio.sleep(delay)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name} {exc.details() or ''}".strip()
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer in time"
    return str(exc) or type(exc).__name__

"""Authorization of every RPC, before any handler runs: `rpc_policy` enforced by the runtime.

`guard_servicer` wraps each method a service's proto declares (found in the descriptor pool, so a
method nobody wrote a handler for is guarded too) with one closure that

1. takes the caller's certificate from the TLS session and its identity from `IdentityCache`
   (parsed once per certificate; later calls find it by the peer's verified names, one dict
   look-up per call),
2. refuses with PERMISSION_DENIED a role the policy does not list — or any role when the method
   has no entry (default deny) — naming the caller and the method; a certificate stating no valid
   identity gets UNAUTHENTICATED,
3. counts and times the call (Prometheus) — failed calls too, and a streaming call until its
   stream ends — under the caller's trace id (metadata `x-ccmsec-trace-id`, `ccmsec.runtime.logs`),
   so the handler's log lines and the events it publishes carry it.

A refusal is counted (`ccmsec_grpc_denied_total`), logged (one line, no secrets) and handed to
`Gate.on_denied` — the service stages it as an `access.denied` event in its outbox (relayed until
acknowledged, so a NATS outage delays the record but never loses it), which callmanager, the
owner of the audit log, records. Log lines and events are rate-limited (a token bucket) so a caller
hammering a refused method cannot flood logs or the bus; the suppressed count travels with the next
report and in the metric.

Wrapping each method once at registration costs far less per call than a grpc.aio server
interceptor (no extra continuation per RPC); see docs/performance.md.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from dataclasses import dataclass
from typing import Callable

import grpc
from google.protobuf import descriptor_pool

from ccmsec.runtime import rpc_policy
from ccmsec.runtime.identity import Identity, IdentityCache, IdentityError
from ccmsec.runtime.logs import (
    TRACE_ID, TRACE_METADATA_KEY, LazyTraceId, bind_trace_id, clean_trace_id, new_trace_id,
)
from ccmsec.runtime.metrics import GRPC_DENIED, GRPC_LATENCY, GRPC_REQUESTS

log = logging.getLogger("ccmsec.authz")

_PEM_KEY = "x509_pem_cert"


@dataclass(frozen=True)
class Refusal:
    method: str
    caller: Identity | None
    reason: str
    suppressed: int = 0  # refusals not reported one by one since the previous report

    @property
    def caller_text(self) -> str:
        return str(self.caller) if self.caller else "unidentified caller"


class _Bucket:
    """Token bucket: `burst` reports at once, then `rate` per second."""

    def __init__(self, burst: float = 20, rate: float = 5):
        self.burst, self.rate = burst, rate
        self.tokens, self.at = burst, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Gate:
    """The per-server authorization state: identity cache, refusal reporting."""

    def __init__(self, server_name: str = "", *, on_denied: Callable[[Refusal], None] | None = None,
                 policy: dict[str, frozenset[str]] | None = None):
        self.server_name = server_name
        self.on_denied = on_denied
        self.policy = rpc_policy.POLICY if policy is None else policy
        self.identities = IdentityCache()
        self._bucket = _Bucket()
        self._suppressed = 0
        self.denied = 0

    def caller(self, context) -> Identity:
        """The caller's identity (raises IdentityError)."""
        pems = context.auth_context().get(_PEM_KEY)
        if not pems:
            raise IdentityError("no client certificate")
        identity = self.identities.get(pems[0])
        # later calls on this certificate find it by its verified names (the fast path)
        self.identities.remember_names(context.peer_identities(), identity)
        return identity

    async def refuse(self, context, method: str, caller: Identity | None, reason: str):
        """Count, log, report and abort the call (raises)."""
        self.denied += 1
        GRPC_DENIED.labels(method, caller.role if caller else "none").inc()
        if self._bucket.take():
            refusal = Refusal(method, caller, reason, self._suppressed)
            self._suppressed = 0
            log.warning("refused %s for %s: %s", method, refusal.caller_text, reason,
                        extra={"method": method, "caller": refusal.caller_text,
                               "suppressed": refusal.suppressed})
            if self.on_denied is not None:
                try:
                    self.on_denied(refusal)
                except Exception:  # reporting must never turn a refusal into a crash
                    log.exception("could not report a refusal")
        else:
            self._suppressed += 1
        if caller is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                f"{method}: caller certificate states no ccmsec identity ({reason})")
        await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                            f"{caller} ({caller.uri}) may not call {method}: {reason}")


def _method_names(service_full_name: str) -> list[tuple[str, bool, bool]]:
    service = descriptor_pool.Default().FindServiceByName(service_full_name)
    return [(m.name, m.client_streaming, m.server_streaming) for m in service.methods]


def _code_of(context, exc: BaseException) -> str:
    """The status a failed call ends with: the handler's abort/set_code, else UNKNOWN
    (CANCELLED when the client went away)."""
    code = context.code() if hasattr(context, "code") else None
    if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK:
        return code.name
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return "CANCELLED"  # the client went away (a stream closed early)
    return "UNKNOWN"


def _trace_of(context) -> str:
    """The caller's trace id (metadata `x-ccmsec-trace-id`), or a new one for this call."""
    return _caller_trace(context) or new_trace_id()


def _caller_trace(context) -> str:
    try:
        for key, value in context.invocation_metadata() or ():
            if key == TRACE_METADATA_KEY:
                return clean_trace_id(value)
    except Exception:
        pass
    return ""


def _lazy_trace_of(context) -> LazyTraceId:
    """`_trace_of`, read from the call's metadata only if the call logs, publishes or calls on."""
    return LazyTraceId(lambda: _caller_trace(context), new_trace_id())


def guard_servicer(servicer, service_full_name: str, gate: Gate, *, metrics: bool = True) -> None:
    """Wrap every method of `service_full_name` on `servicer` (in place, before registration)."""
    for name, _client_streaming, _server_streaming in _method_names(service_full_name):
        method = f"/{service_full_name}/{name}"
        inner = getattr(servicer, name)
        setattr(servicer, name, _guarded(inner, method, gate.policy.get(method), gate, metrics))


def _guarded(inner, method: str, roles: frozenset[str] | None, gate: Gate, metrics: bool):
    allowed = frozenset() if roles is None else roles
    any_identity = roles is rpc_policy.ANY
    reason = ("not allowed by the policy" if roles is not None
              else "no policy entry for this method (default deny)")
    by_names = gate.identities.by_names  # the peer's verified names -> Identity, for the fast path
    ok = GRPC_REQUESTS.labels(method, "OK")
    latency = GRPC_LATENCY.labels(method)
    perf = time.perf_counter
    trace_var = TRACE_ID

    async def slow_check(context) -> None:
        """First call on a certificate, or a refusal: parse (and cache), then decide."""
        try:
            caller = gate.caller(context)
        except IdentityError as exc:
            await gate.refuse(context, method, None, str(exc))
            return
        if not (any_identity or caller.role in allowed):
            await gate.refuse(context, method, caller, reason)

    def admitted(context) -> bool:
        names = context.peer_identities()
        caller = by_names.get(tuple(names)) if names else None
        return caller is not None and (any_identity or caller.role in allowed)

    if inspect.isasyncgenfunction(inner):
        async def streaming(request, context):
            if not metrics:
                if not admitted(context):
                    await slow_check(context)
                async for item in inner(request, context):
                    yield item
                return
            start = perf()
            # The caller's trace id covers the refusal's log line and event too.
            with bind_trace_id(_trace_of(context)):
                if not admitted(context):
                    await slow_check(context)
                try:
                    async for item in inner(request, context):
                        yield item
                except BaseException as exc:
                    latency.observe(perf() - start)
                    GRPC_REQUESTS.labels(method, _code_of(context, exc)).inc()
                    raise
            latency.observe(perf() - start)
            ok.inc()

        return streaming

    is_coroutine = inspect.iscoroutinefunction(inner)

    async def behaviour(request, context):
        if not metrics:
            if not admitted(context):
                await slow_check(context)
            return (await inner(request, context)) if is_coroutine else inner(request, context)
        # The caller's trace id covers the refusal's log line and event too (set and reset by
        # hand: a context manager per call cost more than the rest of the check).
        token = trace_var.set(_lazy_trace_of(context))
        try:
            if not admitted(context):
                await slow_check(context)
            start = perf()
            try:
                reply = (await inner(request, context)) if is_coroutine else inner(request, context)
            except BaseException as exc:
                latency.observe(perf() - start)  # failed calls are timed too
                GRPC_REQUESTS.labels(method, _code_of(context, exc)).inc()
                raise
        finally:
            trace_var.reset(token)
        latency.observe(perf() - start)
        ok.inc()
        return reply

    return behaviour

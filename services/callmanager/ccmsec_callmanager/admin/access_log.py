"""Access log and metrics of the administration API (an ASGI middleware, outermost).

One JSON record per request, logger `ccmsec.admin.access`: method, path (never the query string,
which may carry secrets), route template, status, duration, response bytes, client address and the
request's trace id. The trace id is the client's `X-Request-Id` when it is a sane token, otherwise a
new one; it is bound while the request runs (so the API's own log lines, the gRPC calls it makes
and the events it publishes carry it) and sent back in `X-Request-Id`.

Requests are counted in `ccmsec_admin_api_requests_total{method,route,status}` and timed in
`ccmsec_admin_api_request_seconds{method,route}`; `route` is the route's template
(`/api/v1/devices/{name}`), `unmatched` for paths no route serves, so labels stay bounded.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ccmsec.textsafe import bounded
from ccmsec.runtime.logs import REQUEST_ID_HEADER, bind_trace_id, clean_trace_id
from ccmsec.runtime.metrics import ADMIN_LATENCY, ADMIN_REQUESTS

access_log = logging.getLogger("ccmsec.admin.access")

_HEADER = REQUEST_ID_HEADER.lower().encode()
_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = ""
        for key, value in scope.get("headers", ()):
            if key == _HEADER:
                given = clean_trace_id(value)
                break
        started = time.perf_counter()
        status, sent = 500, 0
        with bind_trace_id(given or None) as trace_id:
            async def send_logged(message: Message) -> None:
                nonlocal status, sent
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != _HEADER]
                    headers.append((_HEADER, trace_id.encode()))
                    message = {**message, "headers": headers}
                elif message["type"] == "http.response.body":
                    sent += len(message.get("body", b""))
                await send(message)

            try:
                await self.app(scope, receive, send_logged)
            finally:
                seconds = time.perf_counter() - started
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                method = scope.get("method", "?")
                method = method if method in _METHODS else "other"
                ADMIN_REQUESTS.labels(method, route, str(status)).inc()
                ADMIN_LATENCY.labels(method, route).observe(seconds)
                client = scope.get("client") or ("", 0)
                path = bounded(scope.get("path", ""), 512)  # percent-decoded: the client's text
                access_log.info("%s %s %d", method, path, status, extra={
                    "method": method, "path": path, "route": route,
                    "status": status, "duration_ms": round(seconds * 1000, 2), "bytes": sent,
                    "client": f"{client[0]}:{client[1]}" if client[0] else ""})

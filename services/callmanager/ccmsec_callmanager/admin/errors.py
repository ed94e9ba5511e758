"""One error shape for the whole API: RFC 9457 problem details, `application/problem+json`:
`{"type", "title", "status", "detail", "instance", "rule", "error"}` — `rule` names the rule ID
that refused the request (null when none applies) and `type` is `urn:ccmsec:rule:<ID>` then
(`about:blank` otherwise); `error` repeats `detail` for clients of the first version.

Also the JSON body reader (bounded, strict pydantic validation) and the request-size guard, so no
bad input can reach a handler as an unexpected exception (never a 500 on bad input).
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ccmsec.textsafe import bounded, shown

MAX_BODY_BYTES = 64 * 1024
PROBLEM_JSON = "application/problem+json"

ModelT = TypeVar("ModelT", bound=BaseModel)


class ApiError(Exception):
    """A refusal the client caused; becomes a 4xx JSON answer and an audit row."""

    def __init__(self, status: int, error: str, rule: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(error)
        self.status = status
        self.error = error
        self.rule = rule
        self.headers = headers


class Problem(BaseModel):
    """RFC 9457 problem details, as every error of this API answers."""

    model_config = ConfigDict(extra="forbid", title="Problem")
    type: str = Field(description="`urn:ccmsec:rule:<ID>` when a rule refused, else `about:blank`")
    title: str = Field(description="the HTTP status phrase")
    status: int = Field(ge=400, le=599)
    detail: str = Field(description="what went wrong, for a person")
    instance: str | None = Field(None, description="the request path")
    rule: str | None = Field(description="the rule ID that refused the request (docs/rules.md), if any")
    error: str = Field(description="same as `detail` (the first version's field)")


def error_body(error: str, rule: str | None = None, status: int = 400,
               instance: str | None = None) -> dict:
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    if instance is not None:  # the request's path, percent-decoded: the client's own text
        instance = bounded(instance, 512)
    return {"type": f"urn:ccmsec:rule:{rule}" if rule else "about:blank", "title": title,
            "status": status, "detail": error, "instance": instance, "rule": rule, "error": error}


# Errors every operation may answer, and those only some do (app.py adds them to the document).
ERROR_DESCRIPTIONS = {
    401: "missing or bad credentials (Basic or Bearer)",
    403: "the account's role may not do this",
    404: "no such object (device, pool, SRST reference, account, reset request, endpoint)",
    409: "conflicts with the current state: duplicate, concurrent change, or a rule about the "
         "cluster's state (e.g. MODE-5, CERT-6, CHK-2)",
    413: "request body over 64 KiB",
    415: "request body is not application/json",
    422: "bad input, or a device model that cannot do it (DEV-3)",
    429: "too many failed authentications from this address",
    500: "internal error (logged by the callmanager)",
    502: "a peer answered with an error (CAPF service, SRST router)",
    503: "a peer is unreachable (CAPF service, event bus, reset tracker)",
}


def problem_responses(*statuses: int) -> dict:
    """OpenAPI `responses` entries for these error statuses, each an application/problem+json."""
    return {status: {"description": ERROR_DESCRIPTIONS[status], "model": Problem,
                     "content": {PROBLEM_JSON: {}}} for status in statuses}


def describe_validation_errors(errors: list[dict]) -> str:
    """pydantic's error list → one readable line (field path and message, first few only)."""
    parts = []
    for err in errors[:3]:
        # a loc part may be a key the client sent (an unknown field): quoted escaped and bounded
        loc = ".".join(shown(p) for p in err.get("loc", ()) if p not in ("body",))
        msg = err.get("msg", "invalid")
        parts.append(f"{loc}: {msg}" if loc else msg)
    if len(errors) > 3:
        parts.append(f"... and {len(errors) - 3} more")
    return "; ".join(parts)


async def read_json(request: Request, model: type[ModelT]) -> ModelT:
    """Read and validate a JSON body (called after authentication, so anonymous input is not parsed)."""
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise ApiError(415, f"content type must be application/json, not '{shown(ctype)}'")
    raw = await request.body()
    if not raw:
        raise ApiError(422, "request body is empty (JSON object expected)")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ApiError(422, f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(422, f"request body must be a JSON object, not {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, describe_validation_errors(exc.errors())) from None


def body_schema(model: type[BaseModel]) -> dict:
    """OpenAPI requestBody for handlers that read their body with read_json."""
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": model.model_json_schema()}}}}


class BodyTooLarge(ApiError):
    def __init__(self, limit: int):
        super().__init__(413, f"request body larger than {limit} bytes")


class BodyLimitMiddleware:
    """Refuse bodies over `limit` bytes: by Content-Length up front, and by counting when streamed."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                if not value.isdigit() or int(value) > self.limit:
                    await _send_json(send, 413, error_body(
                        f"request body larger than {self.limit} bytes"
                        if value.isdigit() else "bad Content-Length header", status=413,
                        instance=scope.get("path")))
                    return
        seen = 0
        limit = self.limit

        async def bounded_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)  # surfaces in the app as a 413 JSON answer
            return message

        await self.app(scope, bounded_receive, send)


async def _send_json(send: Send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", PROBLEM_JSON.encode()),
                            (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": data})

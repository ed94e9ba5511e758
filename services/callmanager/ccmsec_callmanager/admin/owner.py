"""The API's door onto callmanager's domain layer (`ccmsec_callmanager/domain.py`): who asks, and
the layer's refusals as the API's errors."""

from __future__ import annotations

from typing import Awaitable, TypeVar

from starlette.requests import Request

from ccmsec_callmanager.domain import Actor, OwnerRefused

from .audit import actor_of
from .errors import ApiError

T = TypeVar("T")


def actor_of_request(request: Request) -> Actor:
    client = request.client
    return Actor(name=actor_of(request), door="admin-api",
                 remote=f"{client.host}:{client.port}" if client else None)


async def owner_call(request: Request, change: Awaitable[T]) -> T:
    try:
        return await change
    except OwnerRefused as exc:
        raise ApiError(exc.http_status, exc.message, rule=exc.rule) from None

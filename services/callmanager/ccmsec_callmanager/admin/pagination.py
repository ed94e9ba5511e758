"""Cursors for every list: `?limit=N&cursor=C`, answers carry `next_cursor` (null on the last page).

A cursor is opaque to clients: base64url of a small JSON array holding the sort key of the last
row of the page (a device name, an id, …), so the next page starts after it even when rows were
added or removed meanwhile. A cursor that does not decode to the expected key is a 422.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Callable, Sequence, TypeVar

from fastapi import Query

from .errors import ApiError

MAX_CURSOR = 512
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000

T = TypeVar("T")


def encode_cursor(*key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key), separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, *types: type) -> tuple | None:
    """The key inside `cursor`, checked against `types` (None when there is no cursor)."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(422, "cursor: not a cursor this API handed out") from None
    if (not isinstance(key, list) or len(key) != len(types)
            or not all(type(k) is t for k, t in zip(key, types))):
        raise ApiError(422, "cursor: not a cursor of this list")
    return tuple(key)


def cursor_query() -> Any:
    return Query(None, min_length=1, max_length=MAX_CURSOR,
                 description="`next_cursor` of the previous page; omit for the first page")


def limit_query(default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> Any:
    return Query(default, ge=1, le=maximum, description="rows per page")


def page(rows: Sequence[T], limit: int, key: Callable[[T], tuple]) -> tuple[list[T], str | None]:
    """`rows` was fetched with limit + 1: the page, and the cursor after it (None: last page)."""
    if len(rows) <= limit:
        return list(rows), None
    kept = list(rows[:limit])
    return kept, encode_cursor(*key(kept[-1]))

"""Keyset paging shared by the list endpoints: `limit` and opaque, signed cursors.

A cursor is the key of the last item a page showed (a record id, a timestamp and id...), signed
with the SECRET_KEY and bound to what it pages (`kind`) and to whose list it is (`scope`: the
session, the user). A cursor that was altered, or that belongs to another list, is refused with
400 `INVALID_CURSOR`; it can never make a query read another tenant's rows, since the list's own
filter is applied whatever the cursor holds.
"""

from __future__ import annotations

from typing import Any

from django.core import signing

from .errors import InvalidInput

MAX_LIMIT = 200
_SALT = "stello.paging"


class InvalidCursor(InvalidInput):
    code = "INVALID_CURSOR"
    default_message = "Invalid cursor"


def parse_limit(value: Any, *, maximum: int = MAX_LIMIT) -> int:
    """A page size from a query parameter: an integer from 1 to `maximum`."""
    text = str(value).strip()
    if not text.isdigit() or not 1 <= int(text) <= maximum:
        raise InvalidInput(f"limit must be an integer from 1 to {maximum}")
    return int(text)


def make_cursor(kind: str, scope: str, key: Any) -> str:
    return signing.dumps([kind, scope, key], salt=_SALT, compress=False)


def read_cursor(token: Any, kind: str, scope: str) -> Any:
    """The key a cursor of this list carries; InvalidCursor otherwise."""
    if not isinstance(token, str) or not token or len(token) > 512:
        raise InvalidCursor()
    try:
        value = signing.loads(token, salt=_SALT)
    except (signing.BadSignature, ValueError):
        raise InvalidCursor() from None
    if not (isinstance(value, list) and len(value) == 3 and value[:2] == [kind, scope]):
        raise InvalidCursor()
    return value[2]


def paging_requested(params: Any, *names: str) -> bool:
    """Whether a list request asks for paging (otherwise the endpoint keeps its old shape)."""
    return any(name in params for name in ("limit", *names))

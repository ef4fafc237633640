"""JSON in and out of the server, with limits that hold whatever a client or a row contains.

In: `loads` parses a request body or a WebSocket frame with orjson, which is strict (invalid
UTF-8 and lone surrogates such as `"\\ud800"` are refused, as is nesting beyond 1024 levels),
then refuses NUL characters (PostgreSQL text and jsonb cannot store them) and nesting deeper
than STELLO["MAX_JSON_DEPTH"]. The walk is iterative, so no input can exhaust the recursion
limit, and it runs only when a cheap scan of the raw text says it could find something.

Out: `dumps` never fails on data we produced or stored. orjson is tried first (fast); it
refuses nesting beyond 254 levels, lone surrogates and integers wider than 64 bits, so
anything it refuses (e.g. a deep config stored before the depth limit existed) goes through an
iterative encoder with no depth limit that writes lone surrogates as U+FFFD.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import orjson
from django.conf import settings

ORJSON_MAX_DEPTH = 1024  # orjson.loads refuses deeper input itself
INVALID_JSON = "Invalid JSON"
HAS_NUL = "JSON must not contain NUL characters (\\u0000)"

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class JSONRejected(ValueError):
    """Input refused by `loads`; `message` is fit to show the client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def max_depth() -> int:
    return min(int(settings.STELLO.get("MAX_JSON_DEPTH", 64)), ORJSON_MAX_DEPTH)


def too_deep_message(limit: int) -> str:
    return f"JSON nested too deeply (at most {limit} levels)"


def loads(raw: bytes | str) -> Any:
    """The parsed value of `raw`, or JSONRejected (invalid JSON, NUL, or too deep)."""
    limit = max_depth()
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):  # orjson's own limit, beyond ours
            raise JSONRejected(too_deep_message(limit)) from None
        raise JSONRejected(INVALID_JSON) from None
    # Brackets inside strings only over-count, and NUL can only arrive as an escape.
    if isinstance(raw, bytes):
        suspect = raw.count(b"{") + raw.count(b"[") > limit or b"\\u0000" in raw
    else:
        suspect = raw.count("{") + raw.count("[") > limit or "\\u0000" in raw
    if suspect:
        check(value, limit)
    return value


def check(value: Any, limit: int) -> None:
    """Raise JSONRejected if `value` nests deeper than `limit` or holds a NUL (iteratively)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise JSONRejected(HAS_NUL)
            continue
        if isinstance(item, dict):
            children: Any = item.values()
            if any("\x00" in key for key in item):
                raise JSONRejected(HAS_NUL)
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            raise JSONRejected(too_deep_message(limit))
        stack.extend((child, depth + 1) for child in children)


def dumps(value: Any) -> bytes:
    """JSON bytes of `value`: orjson when it can, else `dumps_any_depth` (see the docstring)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return dumps_any_depth(value)


class _Text(str):
    """A piece of output already encoded (a bracket, a separator, a key)."""


def dumps_any_depth(value: Any) -> bytes:
    """JSON of `value` with an explicit stack instead of recursion: any depth, lone surrogates
    written as U+FFFD. Containers are mappings, lists and tuples; other leaves go to orjson,
    then to the json module."""
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if type(item) is _Text:
            out.append(item)
        elif isinstance(item, str):
            out.append(_string(item))
        elif isinstance(item, Mapping):
            entries = list(item.items())
            out.append("{")
            stack.append(_Text("}"))
            for n in range(len(entries) - 1, -1, -1):
                key, child = entries[n]
                stack.append(child)
                stack.append(_Text(("," if n else "") + _string(str(key)) + ":"))
        elif isinstance(item, list | tuple):
            out.append("[")
            stack.append(_Text("]"))
            for n in range(len(item) - 1, -1, -1):
                stack.append(item[n])
                if n:
                    stack.append(_Text(","))
        else:
            out.append(_leaf(item))
    return "".join(out).encode("utf-8")


def _string(text: str) -> str:
    return json.dumps(_LONE_SURROGATE.sub("\ufffd", text), ensure_ascii=False)


def _leaf(value: Any) -> str:
    try:
        return orjson.dumps(value).decode("utf-8")
    except orjson.JSONEncodeError:  # e.g. an integer wider than 64 bits
        return json.dumps(value, default=str)

"""Request bodies are JSON whatever the Content-Type says, as in the original server."""

from __future__ import annotations

from typing import Any

import orjson
from django.conf import settings
from rest_framework import status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.parsers import BaseParser


class PayloadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body too large"
    default_code = "payload_too_large"


def _contains_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_contains_nul(v) for v in value)
    return False


class AnyJSONParser(BaseParser):
    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise PayloadTooLarge(f"Request body too large (limit {limit} bytes)")
        if not raw.strip():
            return {}  # an absent body is an empty object; handlers validate what they need
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ParseError("Invalid JSON body") from None
        if _contains_nul(data):
            # PostgreSQL text and jsonb cannot store NUL; refuse it up front, on every backend.
            raise ParseError("JSON body must not contain NUL characters (\\u0000)")
        return data

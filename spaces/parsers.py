"""Request bodies are JSON whatever the Content-Type says, as in the original server.

Bodies are bounded in size (STELLO_MAX_BODY_BYTES, 413) and in nesting depth
(STELLO_MAX_JSON_DEPTH, 400); see `spaces.safejson` for what else is refused.
"""

from __future__ import annotations

from django.conf import settings
from rest_framework import status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.parsers import BaseParser

from . import safejson


class PayloadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body too large"
    default_code = "payload_too_large"


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
            return safejson.loads(raw)
        except safejson.JSONRejected as exc:
            message = "Invalid JSON body" if exc.message == safejson.INVALID_JSON else exc.message
            raise ParseError(message) from None

"""The OpenAPI side of `spaces.idempotency`: every mutating operation documents the optional
`Idempotency-Key` header, the `Idempotent-Replayed` response header and the errors the key
adds. A postprocessing hook, so a route added later is covered without a line of its own."""

from __future__ import annotations

from typing import Any

from .errors import IdempotencyKeyInUse, IdempotencyKeyReused, InvalidIdempotencyKey
from .idempotency import HEADER, MAX_KEY_LENGTH, MUTATING, REPLAYED_HEADER

KEY_PARAMETER = {
    "in": "header",
    "name": HEADER,
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH,
               "pattern": "^[\\x20-\\x7e]*[\\x21-\\x7e][\\x20-\\x7e]*$"},
    "description": (
        "Run this request at most once: a repeat with the same key and the same method, path "
        "and body gets the first answer again (marked `Idempotent-Replayed: true`) without "
        "running anything; one that arrives while the first still runs waits for it. Keys are "
        "per user and live `STELLO_IDEMPOTENCY_KEY_TTL_SECONDS` (24 h by default). 2xx and "
        "most 4xx answers are kept; 5xx, 408, 409, 425 and 429 are not, so they may be retried "
        f"with the same key. 1 to {MAX_KEY_LENGTH} visible ASCII characters, else 400 "
        f"`{InvalidIdempotencyKey.code}`."),
}
REPLAYED = {
    "schema": {"type": "string", "enum": ["true"]},
    "description": f"Present when this is the stored answer to an earlier request with the same "
                   f"`{HEADER}`.",
}
REUSED_SCHEMA = "IdempotencyKeyReusedError"


def postprocess_schema(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas[REUSED_SCHEMA] = {
        "type": "object",
        "description": '`{"error": message, "code": CODE}`, the shape of every error.',
        "properties": {"error": {"type": "string", "description": "Human-readable message."},
                       "code": {"type": "string", "enum": [IdempotencyKeyReused.code],
                                "description": "Machine-readable code."}},
        "required": ["code", "error"],
    }
    for enum, code in (("BadRequestErrorCodeEnum", InvalidIdempotencyKey.code),
                       ("ConflictErrorCodeEnum", IdempotencyKeyInUse.code)):
        if enum in schemas and code not in schemas[enum]["enum"]:
            schemas[enum]["enum"].append(code)
    for item in result.get("paths", {}).values():
        for method, operation in item.items():
            if method.upper() in MUTATING and "responses" in operation:
                _document(operation)
    return result


def _error(component: str, description: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {
        "$ref": f"#/components/schemas/{component}"}}}, "description": description}


def _document(operation: dict[str, Any]) -> None:
    operation.setdefault("parameters", []).append(KEY_PARAMETER)
    responses = operation["responses"]
    for status, response in responses.items():
        if status.startswith("2"):
            response.setdefault("headers", {})[REPLAYED_HEADER] = REPLAYED
    responses.setdefault("400", _error("BadRequestError", "Invalid request."))
    responses["400"]["description"] += (
        f" A malformed `{HEADER}`: `{InvalidIdempotencyKey.code}`.")
    responses.setdefault("409", _error("ConflictError", "Conflict."))
    responses["409"]["description"] += (
        f" The first request with this `{HEADER}` was still running after the lock timeout: "
        f"`{IdempotencyKeyInUse.code}` (nothing ran; retry later).")
    responses["422"] = _error(REUSED_SCHEMA, f"This `{HEADER}` was used before for another "
                                             f"method, path or body: nothing ran.")
    operation["responses"] = dict(sorted(responses.items()))

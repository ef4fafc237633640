"""The OpenAPI schema documents `Idempotency-Key` on every mutating operation, and only there."""

from __future__ import annotations

from tests.test_openapi import fetch_schema, operations

MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def test_every_mutating_operation_documents_the_key_and_its_errors() -> None:
    schema = fetch_schema()
    mutating = {k: op for k, op in operations(schema).items() if k[0] in MUTATING}
    assert ("POST", "/spaces") in mutating
    assert ("POST", "/spaces/{space_id}/sessions/{session_id}/turn") in mutating
    for (method, path), operation in mutating.items():
        headers = [p for p in operation["parameters"] if p["in"] == "header"]
        assert [h["name"] for h in headers] == ["Idempotency-Key"], (method, path)
        assert headers[0]["required"] is False
        assert headers[0]["schema"]["maxLength"] == 255
        responses = operation["responses"]
        assert responses["422"]["content"]["application/json"]["schema"]["$ref"] == (
            "#/components/schemas/IdempotencyKeyReusedError")
        assert "INVALID_IDEMPOTENCY_KEY" in responses["400"]["description"]
        assert "IDEMPOTENCY_KEY_IN_USE" in responses["409"]["description"]
        for status in (s for s in responses if s.startswith("2")):
            assert "Idempotent-Replayed" in responses[status]["headers"], (method, path, status)
    enums = schema["components"]["schemas"]
    assert "INVALID_IDEMPOTENCY_KEY" in enums["BadRequestErrorCodeEnum"]["enum"]
    assert "IDEMPOTENCY_KEY_IN_USE" in enums["ConflictErrorCodeEnum"]["enum"]
    assert enums["IdempotencyKeyReusedError"]["properties"]["code"]["enum"] == [
        "IDEMPOTENCY_KEY_REUSED"]


def test_reads_do_not_mention_the_key() -> None:
    for (method, path), operation in operations(fetch_schema()).items():
        if method not in MUTATING:
            names = [p["name"] for p in operation.get("parameters", [])]
            assert "Idempotency-Key" not in names, (method, path)
            assert "422" not in operation["responses"], (method, path)

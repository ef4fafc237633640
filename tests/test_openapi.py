"""The OpenAPI schema (/api/schema/) and its docs page (/api/docs/).

The schema must be public, valid OpenAPI 3 without a single drf-spectacular warning, and list
every route of the README's REST table; the behaviour behind it is fuzzed in test_fuzz_rest.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

README = Path(__file__).resolve().parent.parent / "README.md"
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def fetch_schema(client: APIClient | None = None) -> dict[str, Any]:
    response = (client or APIClient()).get("/api/schema/",
                                           HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200, response.content
    return json.loads(response.content)


def operations(schema: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method.upper(), path): operation for path, item in schema["paths"].items()
            for method, operation in item.items() if method in HTTP_METHODS}


def readme_routes() -> set[tuple[str, str]]:
    """(METHOD, path) of every row of the README's REST table, in the schema's notation."""
    readme = README.read_text(encoding="utf-8")
    sections = [readme.split(heading, 1)[1].split("\n## ", 1)[0]
                for heading in ("## REST API", "## Conversations as data")]
    routes = set()
    for line in "\n".join(sections).splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not re.fullmatch(r"[A-Z]+(, [A-Z]+)*", cells[0]):
            continue
        for path in re.findall(r"`([^`]+)`", cells[1]):
            path = path.replace(".../", "/spaces/{spaceId}/sessions/{id}/")
            path = path.replace("{spaceId}", "{space_id}").replace("{id}", "{session_id}")
            path = path.replace("{messageId}", "{message_id}")
            path = path.replace("{turnId}", "{turn_id}")
            routes.update((method, path) for method in cells[0].split(", "))
    return routes


def test_the_schema_is_public_json_without_a_key() -> None:
    schema = fetch_schema()
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"] == "Stello for Django"


def test_the_schema_answers_even_with_a_bad_key() -> None:
    client = APIClient()
    client.credentials(HTTP_X_API_KEY="stello_not_a_real_key")
    assert fetch_schema(client)["paths"]


def test_the_schema_is_valid_openapi_3_without_warnings(tmp_path) -> None:
    out = tmp_path / "schema.yaml"
    # --fail-on-warn turns every drf-spectacular warning or error into a failure;
    # --validate checks the result against the OpenAPI 3 JSON schema.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    assert out.read_text(encoding="utf-8").startswith("openapi: 3.")


def test_every_readme_route_is_documented_and_nothing_else() -> None:
    routes = readme_routes()
    assert len(routes) == 50  # guards the README parsing itself
    documented = set(operations(fetch_schema()))
    assert routes <= documented, sorted(routes - documented)
    health = {("GET", "/healthz"), ("GET", "/readyz")}
    assert documented - routes == health


def test_paths_are_canonical_and_ids_are_documented_strings() -> None:
    schema = fetch_schema()
    assert all(not path.endswith("/") for path in schema["paths"])
    for (_, path), operation in operations(schema).items():
        params = {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "path"}
        assert set(params) == set(re.findall(r"\{(\w+)\}", path)), path
        for param in params.values():
            # Malformed ids answer 404, so ids are strings (one path segment), not `format: uuid`.
            assert param["schema"] == {"type": "string", "pattern": "^[^/]+$"}
            assert param["required"] and "404" in param["description"]


def test_every_space_operation_needs_the_key_and_documents_its_errors() -> None:
    schema = fetch_schema()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["ApiKeyAuth"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert {k: v for k, v in schemes["BearerAuth"].items() if k != "description"} == {
        "type": "http", "scheme": "bearer"}
    for (method, path), operation in operations(schema).items():
        statuses = set(operation["responses"])
        if not path.startswith(("/spaces", "/usage")):
            assert operation["security"] == [], path
            continue
        assert operation["security"] == [{"ApiKeyAuth": []}, {"BearerAuth": []}], path
        assert {"401", "429"} <= statuses, path
        if "{space_id}" in path:
            assert {"403", "404"} <= statuses, path
        if "requestBody" in operation:
            assert {"400", "413"} <= statuses, (method, path)
            # An import's body is an export (NDJSON); every other body is JSON.
            expected = ["application/x-ndjson"] if path == "/spaces/import" else [
                "application/json"]
            assert list(operation["requestBody"]["content"]) == expected
        for status, response in operation["responses"].items():
            if status.startswith(("4", "5")):
                ref = response["content"]["application/json"]["schema"]["$ref"]
                error = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
                assert set(error["required"]) == {"error", "code"}, (status, path)


@pytest.mark.parametrize(("component", "fields", "nullable"), [
    ("Space", {"id", "userId", "label", "systemPrompt", "consolidatePrompt", "integratePrompt",
               "config", "createdAt", "updatedAt"},
     {"systemPrompt", "consolidatePrompt", "integratePrompt"}),
    ("SessionMeta", {"id", "label", "role", "status", "scope", "tags", "metadata", "turnCount",
                     "createdAt", "updatedAt", "lastActiveAt"}, {"scope"}),
    ("ArchivedSession", {"sessionId", "id", "label", "role", "status", "scope", "tags",
                         "metadata", "turnCount", "createdAt", "updatedAt", "lastActiveAt"},
     {"scope"}),
    ("ForkChild", {"id", "parentId", "children", "refs", "depth", "index", "label",
                   "sourceSessionId", "role", "status", "scope", "tags", "metadata", "turnCount",
                   "createdAt", "updatedAt", "lastActiveAt"},
     {"parentId", "sourceSessionId", "scope"}),
    ("EngineTurnResult", {"finalContent", "toolRoundCount", "toolCallsExecuted", "rawResponse",
                          "usage"},
     {"finalContent"}),
    ("SlotContent", {"content"}, {"content"}),
])
def test_response_components_have_the_wire_keys(component, fields, nullable) -> None:
    schema = fetch_schema()["components"]["schemas"][component]
    assert set(schema["properties"]) == fields
    assert set(schema["required"]) == fields
    assert {name for name, prop in schema["properties"].items() if prop.get("nullable")} == nullable
    timestamps = {name for name, prop in schema["properties"].items()
                  if prop.get("format") == "date-time"}
    assert timestamps == {name for name in fields if name.endswith("At")}


def test_the_tree_node_is_recursive_and_messages_have_optional_tool_keys() -> None:
    schemas = fetch_schema()["components"]["schemas"]
    node = schemas["SessionTreeNode"]
    assert node["properties"]["children"]["items"] == {
        "$ref": "#/components/schemas/SessionTreeNode"}
    assert set(node["required"]) == {"id", "label", "status", "turnCount", "children"}
    message = schemas["Message"]
    assert set(message["required"]) == {"id", "role", "content", "timestamp", "metadata"}
    assert {"toolCalls", "toolCallId"} <= set(message["properties"])


def test_the_docs_page_answers_without_a_key() -> None:
    response = APIClient().get("/api/docs/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "swagger-ui" in page.lower() and "/api/schema/" in page

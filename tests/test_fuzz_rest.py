"""Property-based fuzzing of every REST operation, generated from the OpenAPI schema.

Schemathesis reads `/api/schema/` from the WSGI app (in process, inside the test's database
transaction) and, per operation, sends the schema's examples, its coverage cases (boundary values
and undeclared methods) and a fixed number of generated requests, positive and negative. Every
response must pass the built-in checks: never a 5xx, a documented status, the documented
content type, headers and body schema, schema-valid input accepted and invalid input rejected,
and authentication enforced (each successful call is replayed without a key and with a bad one).

Path parameters are drawn from real ids much of the time (a schema-level hook), so the
operations run on alice's real space and sessions (active, archived, another space's, bob's) as
well as on random strings. The second test fuzzes alice's ids with bob's key: only 401/403/404
(405 for undeclared methods), no alice data in any body, and alice's data unchanged afterwards.
The health endpoints are fuzzed without a key; a last test provokes the statuses random input
cannot (401, 409, 413, 429, 502) and validates them against the schema too.

Bounded for CI: MAX_EXAMPLES generated cases per operation, deterministic (derandomized, no
example database), no deadline. The default offline LLM answers the turns; no network.
"""

from __future__ import annotations

import json
import re
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core.cache import cache
from django.core.handlers.wsgi import WSGIHandler
from django.db.backends.base.base import BaseDatabaseWrapper
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation.meta import TestPhase

from sessions_app.models import Record, Session, SessionData
from spaces.models import Space
from tests.conftest import HOT_PATH_DB

from .conftest import client_for

pytestmark = HOT_PATH_DB

MAX_EXAMPLES = 30
SEGMENT = re.compile(r"^[^/]+$")  # the schema's pattern for path parameters

CONFIG = schemathesis.Config.from_dict({
    "seed": 20260101,
    "generation": {
        "max-examples": MAX_EXAMPLES,
        "deterministic": True,
        "database": "none",
        # NUL is refused in every body (documented 400), a transport rule the schema states
        # in prose only: it cannot constrain the keys of the free-form `config` object.
        "allow-x00": False,
        # The key is sent by the tests; `ignored_auth` replays every success without it and
        # with a bad one, so generated keys would only spend the budget on 401s.
        "with-security-parameters": False,
    },
    "phases": {"stateful": {"enabled": False}},
    "operations": [{
        # A `since` the schema allows may be ahead of the session's newest event (400); a
        # cancel finds the turn ended (409): rules about the data, which no schema states.
        "include-operation-id": "sessionEvents",
        "checks": {"positive_data_acceptance": {
            "expected-statuses": ["2xx", "400", "401", "403", "404", "429", "5xx"]}},
    }, {
        "include-operation-id": "cancelTurn",
        "checks": {"positive_data_acceptance": {
            "expected-statuses": ["2xx", "401", "403", "404", "409", "429", "5xx"]}},
    }] + [{
        # Consolidating the main session is refused with a documented 400 ("the main session
        # integrates"): a rule about which session the id names, which no schema can state.
        "include-operation-id": operation,
        "checks": {"positive_data_acceptance": {
            "expected-statuses": ["2xx", "400", "401", "403", "404", "409", "429", "5xx"]}},
    } for operation in (
        "consolidateSession",
        # Paging cursors are opaque signed strings: which ones are valid (400 INVALID_CURSOR
        # otherwise) no schema can state; nor that `before` and `after` exclude each other.
        "listSpaces", "listMessages", "listSessionsFlat",
        # `fromMessage` must name a message of the source session, and `config.provider` one
        # of the server's LLM profiles (a setting): 400 otherwise.
        "forkSession",
    )] + [{
        # A search cursor is valid only for the query that gave it out, and an import body
        # must be an export: rules no schema can state (documented 400s).
        "include-operation-id": "searchSpace",
        "checks": {"positive_data_acceptance": {
            "expected-statuses": ["2xx", "400", "401", "403", "404", "429", "5xx"]}},
    }, {
        "include-operation-id": "importSpace",
        "checks": {"positive_data_acceptance": {
            "expected-statuses": ["2xx", "400", "401", "413", "429", "5xx"]}},
    }, *({
        # Core memory keys follow a pattern (and values a size limit) that OpenAPI 3.0 cannot
        # state for an object's property names: a documented 400 for a schema-valid body.
        "include-operation-id": operation,
        "checks": {"positive_data_acceptance": {
            "expected-statuses": ["2xx", "400", "401", "403", "404", "409", "429", "5xx"]}},
    } for operation in ("replaceCore", "patchCore", "putCoreValue"))] + [{
        # A usage report whose `from` is after its `to` (or a range of ten years and more) is
        # a documented 400: a rule between two parameters, which no schema can state.
        "include-operation-id": operation_id,
        "checks": {"positive_data_acceptance": {
            "expected-statuses": ["2xx", "400", "401", "403", "404", "429", "5xx"]}},
    } for operation_id in ("getUsage", "getSpaceUsage")],
})


@schemathesis.serializer("application/x-ndjson")
def ndjson_body(context, value: Any) -> bytes:
    """POST /spaces/import takes an NDJSON export: a generated body is sent as bytes."""
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "replace")


APP = WSGIHandler()
SCHEMA = schemathesis.openapi.from_wsgi("/api/schema/?format=json", APP, config=CONFIG)
HYPOTHESIS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


class World:
    """Real ids the path-parameter hook draws from, rebuilt when a fuzzed call destroys them
    (a DELETE of alice's space, an archive of her active child, an unarchive of the archived
    one)."""

    def __init__(self, alice_key: str, bob_key: str) -> None:
        self.alice = client_for(alice_key)
        self.bob = client_for(bob_key)
        self.pools: dict[str, list[str]] = {}
        self.bob_space, self.bob_root = self._space(self.bob, "Bob's space")
        self.other_space, self.other_root = self._space(self.alice, "Alice's other space")
        self.build()

    @staticmethod
    def _post(client: APIClient, path: str, body: Any = None, status: int = 200) -> Any:
        response = client.post(path, body or {}, format="json")
        assert response.status_code == status, response.content
        return response.json()

    def _space(self, client: APIClient, label: str) -> tuple[str, str]:
        space = self._post(client, "/spaces", {"label": label, "systemPrompt": f"{label} prompt",
                                               "config": {"secret": f"{label} config"}}, 201)
        root = str(Session.objects.get(space_id=space["id"], role="main").id)
        return space["id"], root

    def build(self) -> None:
        """Alice's main space: the main session, an active child with a turn, an archived one."""
        self.space, self.root = self._space(self.alice, "Alice's space")
        base = f"/spaces/{self.space}/sessions"
        self.child = self._post(self.alice, f"{base}/{self.root}/fork", {"label": "Child"},
                                201)["id"]
        self._post(self.alice, f"{base}/{self.child}/turn", {"input": "Alice's question"})
        # The child's last user message: what the message routes edit and delete.
        self.message = str(Record.objects.filter(session_id=self.child, role="user")
                           .latest("id").id)
        self.archived = self._post(self.alice, f"{base}/{self.root}/fork", {"label": "Old"},
                                   201)["id"]
        self._post(self.alice, f"{base}/{self.archived}/archive")
        self.use_alice_pools()

    def ensure(self) -> None:
        statuses = dict(Session.objects.filter(pk__in=[self.root, self.child, self.archived])
                        .values_list("id", "status"))
        wanted = {self.root: "active", self.child: "active", self.archived: "archived"}
        if {str(k): v for k, v in statuses.items()} != wanted:
            self.build()

    def use_alice_pools(self) -> None:
        # Repetition weights the draw: alice's main space and its live sessions come most often.
        self.pools = {
            "space_id": [self.space] * 4 + [self.other_space, self.bob_space],
            "session_id": [self.root, self.root, self.child, self.child, self.archived,
                           self.other_root, self.bob_root],
            "message_id": [self.message, self.message],
            "key": ["motto", "motto", "unset"],  # core memory keys
        }

    def use_bob_target_pools(self) -> None:
        """Bob's test: every space id is one of alice's; sessions hers or random."""
        self.pools = {
            "space_id": [self.space, self.space, self.other_space],
            "session_id": [self.root, self.child, self.archived, self.other_root],
            "message_id": [self.message],
            "key": ["motto", "unset"],
        }

    def alice_secrets(self) -> list[str]:
        """What must never reach bob: alice's ids, and "Alice", which starts the labels, prompts
        and config values of her spaces and her turn's input."""
        ids = [self.space, self.other_space, self.root, self.child, self.archived,
               self.other_root]
        return [*ids, "Alice"]

    def alice_snapshot(self) -> dict[str, Any]:
        spaces = list(Space.objects.filter(owner__username="alice").order_by("id").values())
        sessions = list(Session.objects.filter(space__owner__username="alice").order_by("id")
                        .values("id", "label", "status", "turn_count", "updated_at"))
        data = list(SessionData.objects.filter(session__space__owner__username="alice")
                    .order_by("id").values("session_id", "key", "content"))
        records = Record.objects.filter(session__space__owner__username="alice").count()
        return {"spaces": spaces, "sessions": sessions, "data": data, "records": records}


WORLD: dict[str, World] = {}


@pytest.fixture(autouse=True)
def keep_the_test_connection(monkeypatch) -> None:
    """Requests go through Django's real WSGI handler, which closes "old" database connections
    when a request starts and ends (so does /readyz). Inside the test's transaction that would
    close the connection holding it (PostgreSQL); like Django's test client, leave it open."""
    close_if_obsolete = BaseDatabaseWrapper.close_if_unusable_or_obsolete

    def close_unless_in_transaction(connection) -> None:
        if not connection.in_atomic_block:
            close_if_obsolete(connection)

    monkeypatch.setattr(BaseDatabaseWrapper, "close_if_unusable_or_obsolete",
                        close_unless_in_transaction)


@SCHEMA.hook
def flatmap_path_parameters(context, path_parameters: dict[str, Any]):
    """Swap a generated (schema-valid) id for a real one most of the time. Drawn at run time,
    so the pools are the current test's; negative values (with a `/`) are kept as they are."""
    world = WORLD.get("current")
    if world is None or not path_parameters:
        return st.just(path_parameters)
    choices = {}
    for name, value in path_parameters.items():
        pool = world.pools.get(name, [])
        if pool and isinstance(value, str) and SEGMENT.match(value):
            # Hypothesis favours the first elements: the real ids, then the generated string.
            choices[name] = st.sampled_from([*pool, value])
        else:
            choices[name] = st.just(value)
    return st.fixed_dictionaries(choices)


def unique_idempotency_key(case) -> None:
    """A schema-valid `Idempotency-Key` becomes unique per call: generated keys repeat, and a
    key reused with another body is a documented 422 that the "valid data is accepted" check
    would count as a rejection (reuse is tested in tests/api/test_idempotency.py)."""
    from spaces.errors import InvalidIdempotencyKey
    from spaces.idempotency import parse_key

    key = (case.headers or {}).get("Idempotency-Key")
    if key is None:
        return
    try:
        parse_key(key)
    except InvalidIdempotencyKey:
        return  # an invalid key stays: it must answer 400
    case.headers["Idempotency-Key"] = f"fuzz-{uuid.uuid4().hex}"


@pytest.fixture
def world(alice_key: str, bob_key: str) -> Iterator[World]:
    WORLD["current"] = built = World(alice_key, bob_key)
    yield built
    WORLD.pop("current", None)


@pytest.fixture
def bob_world(world: World) -> World:
    """The same world, with alice's ids as the only real ones to draw (before the first draw)."""
    world.use_bob_target_pools()
    return world


def aim(case, world: World) -> None:
    """Schema examples and coverage cases come with placeholder path parameters ("0",
    "content"), which would stop every body variant at 404. Point them at alice's main space and
    active child, unless the case is about a path parameter itself."""
    meta = case.meta
    if (not case.path_parameters or meta is None or meta.phase.name == TestPhase.FUZZING
            or meta.phase.data.parameter_location == ParameterLocation.PATH):
        return
    targets = {"space_id": world.space, "session_id": world.child,
               "message_id": world.message, "key": "motto"}
    # A turn id stays as generated (no turn is in the world): TURN_NOT_FOUND, documented.
    case.path_parameters.update({name: targets.get(name, value)
                                 for name, value in case.path_parameters.items()})
    assert case.meta is not None  # revalidates the case's metadata after the edit


# Filters by `exclude`: with per-operation config, schemathesis ORs an `include` with its own
# filter and keeps every operation.
KEYED = ("/spaces", "/usage")  # the operations that need the API key
SPACES = SCHEMA.exclude(func=lambda ctx: not ctx.operation.path.startswith(KEYED))
HEALTH = SCHEMA.exclude(func=lambda ctx: ctx.operation.path.startswith(KEYED))
BOB_TARGETS = SCHEMA.exclude(func=lambda ctx: "{space_id}" not in ctx.operation.path)


@SPACES.parametrize()
@HYPOTHESIS
def test_every_operation_conforms_to_the_schema_as_alice(case, world: World, alice_key) -> None:
    aim(case, world)
    try:
        unique_idempotency_key(case)
        case.call_and_validate(headers={"X-API-Key": alice_key})
    finally:
        world.ensure()


@BOB_TARGETS.parametrize()
@HYPOTHESIS
def test_bob_never_reaches_alice_s_spaces_and_sessions(case, bob_world: World, bob_key) -> None:
    world = bob_world
    aim(case, world)
    before = world.alice_snapshot()
    unique_idempotency_key(case)
    response = case.call_and_validate(headers={"X-API-Key": bob_key})
    # Coverage also probes the methods the schema does not declare: 405, or for OPTIONS DRF's
    # generic view metadata (200, nothing about the space), both without alice's data.
    declared = case.method.lower() in SCHEMA.raw_schema["paths"][case.path]
    allowed = {401, 403, 404} | (set() if declared else {405}) | (
        {200} if case.method == "OPTIONS" else set())
    assert response.status_code in allowed, (case.method, case.formatted_path,
                                             response.status_code, response.text)
    body = response.text
    leaked = [secret for secret in world.alice_secrets() if secret in body]
    assert not leaked, f"{case.method} {case.formatted_path} leaked {leaked}: {body}"
    assert world.alice_snapshot() == before


@HEALTH.parametrize()
@HYPOTHESIS
def test_the_health_endpoints_conform_to_the_schema(case) -> None:
    """No key needed; every check, including 405 for the methods the schema does not list."""
    case.call_and_validate()


def closed_port() -> int:
    """A loopback port nobody listens on: connections are refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_rare_documented_errors_conform_to_the_schema(world: World, alice_key, settings) -> None:
    """The statuses random input seldom or never provokes (401 without a key, 409, 413, 429,
    502) still answer exactly what the schema documents: status, headers and body."""
    session = "/spaces/{space_id}/sessions/{session_id}"
    ids = {"space_id": world.space, "session_id": world.child}

    def call(path: str, method: str, key: str | None = alice_key, **kwargs: Any) -> int:
        case = SCHEMA[path][method].Case(**kwargs)
        headers = {"X-API-Key": key} if key is not None else None
        # 502 is the documented answer to a failing LLM, not a server error of ours.
        return case.call_and_validate(headers=headers,
                                      excluded_checks=[not_a_server_error]).status_code

    assert call("/spaces", "GET", key=None) == 401
    assert call("/spaces", "GET", key="stello_not_a_real_key") == 401
    archived = {**ids, "session_id": world.archived}
    assert call(f"{session}/turn", "POST", path_parameters=archived, body={"input": "hi"}) == 409
    assert call(f"{session}/consolidate", "POST", path_parameters=archived) == 409

    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    assert call("/spaces", "POST", body={"label": "x" * 5000}) == 413
    assert call(f"{session}/system-prompt", "PUT", path_parameters=ids,
                body={"content": "x" * 5000}) == 413

    unreachable = {**settings.STELLO["LLM"], "provider": "openai", "model": "m", "api_key": "k",
                   "base_url": f"http://127.0.0.1:{closed_port()}/v1", "max_retries": 0,
                   "timeout_seconds": 5.0}
    settings.STELLO = {**settings.STELLO, "LLM": unreachable, "MEMORY_LLM": None}
    assert call(f"{session}/turn", "POST", path_parameters=ids, body={"input": "hi"}) == 502
    assert call(f"{session}/consolidate", "POST", path_parameters=ids) == 502
    assert call("/spaces/{space_id}/integrate", "POST", path_parameters=ids) == 502

    cache.clear()
    settings.STELLO = {**settings.STELLO, "RATE_LIMIT": "1/min"}
    assert call("/spaces", "GET") == 200
    assert call("/spaces", "GET") == 429
    cache.clear()


def test_the_fuzzed_schema_covers_every_documented_operation() -> None:
    operations = {(op.method.upper(), op.path) for op in
                  (result.ok() for result in SCHEMA.get_all_operations())}
    raw = json.loads(APIClient().get("/api/schema/?format=json").content)
    documented = {(method.upper(), path) for path, item in raw["paths"].items()
                  for method in item if method != "parameters"}
    assert operations == documented and len(operations) == 52

"""The OpenAPI schema is true of a real server process: schemathesis' command line runs against
the live `/api/schema/` of a server started here (daphne, or uvicorn with
STELLO_TEST_SERVER=uvicorn) on the test database.

Every operation gets the schema's examples, the coverage cases (boundary values, missing and
wrong-typed fields, undeclared methods) and a bounded number of generated requests, positive
and negative, with every check: no 5xx, documented statuses, content types, headers and bodies,
schema-valid requests accepted and invalid ones rejected, authentication enforced. The path
parameters are fixed to a real space and sessions (random ids would stop nearly every request
at 404): the session operations run on an active child, archive on a child of its own, DELETE
on a space of its own. The offline LLM answers turns. Bounded for CI: MAX_EXAMPLES generated
cases per operation, a fixed seed, no stateful phase.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.servers import committed_tenant, http_json, server_env, server_processes

# The server processes share the test database: PostgreSQL.
pytestmark = [pytest.mark.servers, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

MAX_EXAMPLES = 15
SEED = 20261126


HOOKS = """
import re
import uuid

import schemathesis

VALID_KEY = re.compile(r"^[\\x20-\\x7e]{1,255}$")


@schemathesis.serializer("application/x-ndjson")
def ndjson_body(ctx, value):  # POST /spaces/import takes an NDJSON export
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "replace")


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    key = (case.headers or {}).get("Idempotency-Key")
    if isinstance(key, str) and VALID_KEY.match(key) and key.strip():  # else: 400, kept
        case.headers["Idempotency-Key"] = f"live-{uuid.uuid4().hex}"
"""


# Operations with a documented 400 for some schema-valid requests: rules the schema cannot
# state (opaque cursors, a `fromMessage` of the session, core memory key patterns, a usage range
# whose `from` is after its `to`, a `since` ahead of the log, an import body that is no export).
# Same list as the in-process fuzzer's (tests/test_fuzz_rest.py).
DOCUMENTED_400 = ("listSpaces", "listMessages", "listSessionsFlat", "forkSession", "searchSpace",
                  "importSpace", "replaceCore", "patchCore", "putCoreValue", "getUsage",
                  "getSpaceUsage", "sessionEvents", "consolidateSession")


def documented_400s() -> list[str]:
    lines = []
    for operation in DOCUMENTED_400:
        lines += ["[[operations]]", f'include-operation-id = "{operation}"',
                  "[operations.checks.positive_data_acceptance]",
                  'expected-statuses = ["2xx", "400", "401", "403", "404", "409", "413", "429", '
                  '"5xx"]', ""]
    return lines


def toml_table(values: dict[str, str]) -> str:
    return "{ " + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in values.items()) + " }"


def test_the_live_schema_holds_for_every_operation(tmp_path) -> None:
    tenant = committed_tenant("alice", "Alice's space", system_prompt="Be brief.")
    with server_processes([server_env()], tmp_path) as (server,):
        space, root, key = tenant["space_id"], tenant["root_id"], tenant["key"]
        spare = http_json("POST", server.http("/spaces"), key, {"label": "spare"})[1]["id"]
        sessions = server.http(f"/spaces/{space}/sessions/{root}/fork")
        child = http_json("POST", sessions, key, {"label": "child"})[1]["id"]
        doomed = http_json("POST", sessions, key, {"label": "to archive"})[1]["id"]
        turn = server.http(f"/spaces/{space}/sessions/{child}/turn")
        assert http_json("POST", turn, key, {"input": "hello"})[0] == 200

        config = tmp_path / "schemathesis.toml"
        config.write_text("\n".join([
            "[generation]",
            # NUL is refused in every body (a documented 400), a rule the schema states in prose
            # only: it cannot constrain the keys of the free-form `config` object.
            "allow-x00 = false",
            # The key is sent with every request (and `ignored_auth` replays without it).
            "with-security-parameters = false",
            "",
            "[parameters]",
            f'"path.space_id" = "{space}"',
            f'"path.session_id" = "{child}"',
            "",
            "[[operations]]",
            'include-path-regex = "/archive$"',
            f"parameters = {toml_table({'path.space_id': space, 'path.session_id': doomed})}",
            "",
            "[[operations]]",
            'include-name = "DELETE /spaces/{space_id}"',
            "parameters = " + toml_table({"path.space_id": spare}),
            "",
            *documented_400s(),
        ]))
        # A schema-valid Idempotency-Key becomes unique per call: generated keys repeat, and a
        # key reused with another request is a documented 422 that the "valid data is
        # accepted" check would count as a rejection (reuse: tests/api/test_idempotency.py).
        (tmp_path / "stello_hooks.py").write_text(HOOKS)
        result = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--no-color", "--config-file", str(config),
             "run",
             server.http("/api/schema/?format=json"), "--header", f"X-API-Key: {key}",
             "--checks", "all", "--phases", "examples,coverage,fuzzing",
             "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--workers", "1",
             "--request-timeout", "30", "--suppress-health-check", "all",
             "--output-truncate", "false"],
            cwd=tmp_path, capture_output=True, text=True, timeout=600,  # its cache goes there
            env={**os.environ, "SCHEMATHESIS_HOOKS": "stello_hooks",
                 "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])},
        )
        assert server.running, server.output()
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-20000:] + "\nServer log:\n" + server.output()
    assert " passed" in output, output[-5000:]

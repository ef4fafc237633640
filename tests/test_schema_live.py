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
import subprocess
import sys

import pytest

from tests.support.servers import committed_tenant, http_json, server_env, server_processes

# The server processes share the test database: PostgreSQL.
pytestmark = [pytest.mark.servers, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

MAX_EXAMPLES = 15
SEED = 20261126


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
        ]))
        result = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--no-color", "--config-file", str(config),
             "run",
             server.http("/api/schema/?format=json"), "--header", f"X-API-Key: {key}",
             "--checks", "all", "--phases", "examples,coverage,fuzzing",
             "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--workers", "1",
             "--request-timeout", "30", "--suppress-health-check", "all",
             "--output-truncate", "false"],
            cwd=tmp_path, capture_output=True, text=True, timeout=600,  # its cache goes there
        )
        assert server.running, server.output()
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-20000:] + "\nServer log:\n" + server.output()
    assert " passed" in output, output[-5000:]

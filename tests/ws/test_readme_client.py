"""The README's Python WebSocket client, its exact code, against a real server process: it
prints a streamed answer, and it ends (raising the server's message) on an `error` frame
instead of waiting for a `stream.end` that never comes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import (
    Server,
    committed_tenant,
    http_json,
    server_env,
    server_processes,
)

pytestmark = [pytest.mark.servers, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

README = Path(__file__).resolve().parents[2] / "README.md"
BOUND = 30  # seconds: a client that hangs fails the test instead of blocking the run


def readme_client() -> dict[str, Any]:
    """The names defined by the README's Python client block (`main`, `StelloError`, ...)."""
    text = README.read_text(encoding="utf-8")
    start = text.index("A Python client (`pip install websockets`)")
    code = re.search(r"```python\n(.*?)```", text[start:], re.DOTALL)
    assert code is not None
    namespace: dict[str, Any] = {"__name__": "readme_client"}
    exec(compile(code.group(1), str(README), "exec"), namespace)  # the README, run as written
    return namespace


@pytest.fixture(scope="module")
def server(django_db_setup, tmp_path_factory) -> Iterator[Server]:
    env = server_env(STELLO_CONSOLIDATE_EVERY_N_TURNS="0", STELLO_CONSOLIDATE_ON_ARCHIVE="0")
    with server_processes([env], tmp_path_factory.mktemp("readme-client")) as (one,):
        yield one


def run(client: dict[str, Any], server: Server, tenant: dict[str, str], session_id: str) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(BOUND):
            await client["main"](tenant["space_id"], session_id, tenant["key"],
                                 f"ws://127.0.0.1:{server.port}")

    asyncio.run(bounded())


def test_the_readme_client_prints_the_streamed_answer(server: Server, capsys) -> None:
    tenant = committed_tenant("readme-ok", "README")
    run(readme_client(), server, tenant, tenant["root_id"])
    assert capsys.readouterr().out == "echo: Hello!\n"  # the offline LLM echoes


def test_the_readme_client_ends_on_the_error_of_an_archived_session(server: Server) -> None:
    tenant = committed_tenant("readme-archived", "README")
    base = server.http(f"/spaces/{tenant['space_id']}/sessions/{tenant['root_id']}")
    status, child = http_json("POST", f"{base}/fork", tenant["key"], {"label": "Done"})
    assert status == 201
    child_url = server.http(f"/spaces/{tenant['space_id']}/sessions/{child['id']}/archive")
    assert http_json("POST", child_url, tenant["key"])[0] == 200
    client = readme_client()
    with pytest.raises(client["StelloError"], match=r"^HANDLER_ERROR: .* is archived"):
        run(client, server, tenant, child["id"])


def test_the_readme_client_ends_on_the_error_of_an_unknown_session(server: Server) -> None:
    tenant = committed_tenant("readme-unknown", "README")
    client = readme_client()
    with pytest.raises(client["StelloError"], match="^HANDLER_ERROR: Session not found$"):
        run(client, server, tenant, "00000000-0000-0000-0000-000000000000")

"""Helpers for the session REST API tests.

`space` is alice's space (with a system prompt) and `root_id` its main session; `api` speaks to
that space as alice. `llm_script` makes the offline LLM answer with scripted responses and
`unreachable_llm` points the runtime at an OpenAI-compatible endpoint that refuses connections.

The sync test client runs each request on a throwaway event loop, so the runtime (and with it
the LLM built from settings.STELLO) is rebuilt for every request: a script starts over at each
request, and a settings change applies to the next request.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from sessions_app.models import Session
from tests.conftest import HOT_PATH_DB as HOT_PATH_DB  # re-exported to the API tests

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SPACE_PROMPT = "You are a careful researcher."
SESSION_META_KEYS = {"id", "label", "role", "status", "scope", "tags", "metadata", "turnCount",
                     "createdAt", "updatedAt", "lastActiveAt"}
TOPOLOGY_KEYS = {"id", "parentId", "children", "refs", "depth", "index", "label",
                 "sourceSessionId"}
WRITABLE_SLOTS = ("system-prompt", "consolidate-prompt", "integrate-prompt", "memory", "insight")
MEMORY_SLOTS = ("memory", "insight")
SLOTS = WRITABLE_SLOTS


def create_space(client: APIClient, **body: Any) -> dict[str, Any]:
    response = client.post("/spaces", body or {"label": "S"}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def root_of(space_id: str) -> str:
    return str(Session.objects.get(space_id=space_id, role="main").id)


class SessionApi:
    """The session routes of one space, spoken to by one client."""

    def __init__(self, client: APIClient, space_id: str) -> None:
        self.client = client
        self.space_id = space_id

    def path(self, session_id: str | None = None, suffix: str = "") -> str:
        base = f"/spaces/{self.space_id}/sessions"
        if session_id is None:
            return base
        return f"{base}/{session_id}" + (f"/{suffix}" if suffix else "")

    def tree(self):
        return self.client.get(self.path())

    def meta(self, session_id: str):
        return self.client.get(self.path(session_id))

    def messages(self, session_id: str):
        return self.client.get(self.path(session_id, "messages"))

    def turn(self, session_id: str, text: Any = None, *, body: Any = None):
        payload = {"input": text} if body is None else body
        return self.client.post(self.path(session_id, "turn"), payload, format="json")

    def fork(self, session_id: str, body: Any = None, **fields: Any):
        payload = fields if body is None else body
        return self.client.post(self.path(session_id, "fork"), payload, format="json")

    def archive(self, session_id: str):
        return self.client.post(self.path(session_id, "archive"))

    def unarchive(self, session_id: str):
        return self.client.post(self.path(session_id, "unarchive"))

    def consolidate(self, session_id: str):
        return self.client.post(self.path(session_id, "consolidate"))

    def slot(self, session_id: str, name: str):
        return self.client.get(self.path(session_id, name))

    def put_slot(self, session_id: str, name: str, body: Any):
        return self.client.put(self.path(session_id, name), body, format="json")

    def child(self, session_id: str, label: str, **fields: Any) -> dict[str, Any]:
        """Fork a child and return its JSON (the fork must succeed)."""
        response = self.fork(session_id, label=label, **fields)
        assert response.status_code == 201, response.content
        return response.json()

    def said(self, session_id: str, text: str) -> dict[str, Any]:
        """Run a turn and return its result (the turn must succeed)."""
        response = self.turn(session_id, text)
        assert response.status_code == 200, response.content
        return response.json()["turn"]


@pytest.fixture
def space(alice_client: APIClient) -> dict[str, Any]:
    return create_space(alice_client, label="Research", systemPrompt=SPACE_PROMPT)


@pytest.fixture
def root_id(space: dict[str, Any]) -> str:
    return root_of(space["id"])


@pytest.fixture
def api(alice_client: APIClient, space: dict[str, Any]) -> SessionApi:
    return SessionApi(alice_client, space["id"])


def tool_call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"id": call_id, "name": name, "input": arguments}


def reply(content: str | None = None, *calls: dict[str, Any]) -> dict[str, Any]:
    """One scripted LLM response, in the format of `engine.llm.load_script`."""
    return {"content": content, "toolCalls": list(calls)}


@pytest.fixture
def llm_script(settings, tmp_path) -> Callable[..., None]:
    """`llm_script(reply(...), ...)`: the offline LLM answers every request's first calls with
    these responses, then echoes. `llm_script()` goes back to plain echo."""

    def use(*responses: dict[str, Any]) -> None:
        path = None
        if responses:
            path = tmp_path / f"script-{len(list(tmp_path.iterdir()))}.json"
            path.write_text(json.dumps(list(responses)), encoding="utf-8")
        llm = {**settings.STELLO["LLM"], "provider": "offline", "script_path":
               str(path) if path else None}
        settings.STELLO = {**settings.STELLO, "LLM": llm, "MEMORY_LLM": None}

    return use


def closed_port() -> int:
    """A loopback port nobody listens on (connections to it are refused at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def openai_llm(base_url: str) -> dict[str, Any]:
    return {"provider": "openai", "model": "test-model", "base_url": base_url,
            "api_key": "test-key", "max_context_tokens": 128000, "max_output_tokens": 256,
            "timeout_seconds": 5.0, "max_retries": 0, "script_path": None}


@pytest.fixture
def use_llm(settings) -> Callable[[dict[str, Any] | None], None]:
    """`use_llm(settings_dict)`: the chat (and memory) LLM of the next requests; None = offline
    echo."""
    offline = {**settings.STELLO["LLM"], "provider": "offline", "script_path": None}

    def use(llm: dict[str, Any] | None) -> None:
        settings.STELLO = {**settings.STELLO, "LLM": llm or offline, "MEMORY_LLM": None}

    return use

"""Shared WebSocket-test fixtures: alice's space (committed where the test is transactional)
and its main session; for the live-turn and approval tests across processes, a loopback OpenAI
LLM (`llm`) and two server processes sharing PostgreSQL and Redis that use it (`servers`; a
module may define its own)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from channels.layers import InMemoryChannelLayer, get_channel_layer

from sessions_app.models import Session
from sessions_app.runtime.pool import runtimes
from sessions_app.ws.consumer import operations
from spaces.services import space_create
from tests.support.llm_servers import OpenAIServer
from tests.support.servers import Server, server_env, server_processes

SPACE_LABEL = "WS Test"


async def finish_ws_work() -> None:
    """After a test: every connection left open is stopped, every frame and background job
    has finished, the runtime is closed, and the in-memory channel layer forgets its groups."""
    await operations.shutdown()
    await runtimes.aclose_current()
    layer = get_channel_layer()
    if isinstance(layer, InMemoryChannelLayer):
        await layer.flush()


@pytest.fixture
def space(alice):
    return space_create(owner=alice, label=SPACE_LABEL)


@pytest.fixture
def space_id(space) -> str:
    return str(space.pk)


@pytest.fixture
def root_id(space) -> str:
    return str(Session.objects.get(space=space, role=Session.Role.MAIN).pk)


@pytest.fixture(scope="module")
def llm() -> Iterator[OpenAIServer]:
    with OpenAIServer() as server:
        yield server


@pytest.fixture(scope="module")
def servers(django_db_setup, tmp_path_factory, llm) -> Iterator[list[Server]]:
    env = server_env(
        REDIS_URL=os.environ["REDIS_URL"],
        STELLO_REDIS_PREFIX=f"stello-test-{uuid.uuid4().hex[:12]}",
        STELLO_CONSOLIDATE_EVERY_N_TURNS="0",
        STELLO_LLM_PROVIDER="openai", STELLO_LLM_BASE_URL=llm.base_url,
        STELLO_LLM_API_KEY="test", STELLO_LLM_MAX_RETRIES="0",
        STELLO_SSE_HEARTBEAT_SECONDS="0.2",
        DATABASE_POOL_MIN_SIZE="1", DATABASE_POOL_MAX_SIZE="8",
    )
    with server_processes([env, env], tmp_path_factory.mktemp("servers")) as started:
        yield started

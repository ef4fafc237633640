"""Shared WebSocket-test fixtures: alice's space (committed where the test is transactional)
and its main session."""

from __future__ import annotations

import pytest
from channels.layers import InMemoryChannelLayer, get_channel_layer

from sessions_app.models import Session
from sessions_app.runtime.pool import runtimes
from sessions_app.ws.consumer import operations
from spaces.services import space_create

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

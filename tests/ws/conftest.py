"""Shared WebSocket-test fixtures: alice's space (committed where the test is transactional)
and its main session."""

from __future__ import annotations

import pytest

from sessions_app.models import Session
from spaces.services import space_create

SPACE_LABEL = "WS Test"


@pytest.fixture
def space(alice):
    return space_create(owner=alice, label=SPACE_LABEL)


@pytest.fixture
def space_id(space) -> str:
    return str(space.pk)


@pytest.fixture
def root_id(space) -> str:
    return str(Session.objects.get(space=space, role=Session.Role.MAIN).pk)

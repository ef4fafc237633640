"""Data migrations, run for real: migrate back, write rows the old way, migrate forward."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("sessions_app", "0002_session_record_count")]


def test_a_scope_kept_in_a_slot_moves_to_the_session_column(executor) -> None:
    executor.migrate(BEFORE)
    old = MigrationExecutor(connection).loader.project_state(BEFORE).apps
    Space = old.get_model("spaces", "Space")
    Session = old.get_model("sessions_app", "Session")
    SessionData = old.get_model("sessions_app", "SessionData")
    User = old.get_model("auth", "User")
    owner = User.objects.create(username=f"migrator-{uuid.uuid4().hex[:8]}")
    space = Space.objects.create(owner=owner, label="Old")
    now = timezone.now()
    only_slot = Session.objects.create(space=space, label="slot", role="main",
                                       last_active_at=now)
    both = Session.objects.create(space=space, label="both", scope="column wins",
                                  last_active_at=now)
    SessionData.objects.create(session=only_slot, key="scope", content="from the slot")
    SessionData.objects.create(session=both, key="scope", content="stale slot")

    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())

    from sessions_app.models import Session as NewSession
    from sessions_app.models import SessionData as NewSessionData

    assert NewSession.objects.get(pk=only_slot.pk).scope == "from the slot"
    assert NewSession.objects.get(pk=both.pk).scope == "column wins"
    assert not NewSessionData.objects.filter(key="scope").exists()

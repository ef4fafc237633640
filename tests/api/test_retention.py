"""Retention: the per-space policy (GET/PUT /spaces/{id}/retention), the sweep (command and
periodic job) that archives idle sessions and really deletes long-archived ones."""

from __future__ import annotations

import asyncio
import io
import logging
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from sessions_app import retention
from sessions_app.models import (
    Record,
    RetentionPolicy,
    Session,
    SessionData,
    TopologyNode,
)

from .conftest import HOT_PATH_DB, SessionApi

pytestmark = HOT_PATH_DB


def policy_url(space_id: str) -> str:
    return f"/spaces/{space_id}/retention"


def test_a_space_keeps_everything_until_told_otherwise(alice_client, space) -> None:
    response = alice_client.get(policy_url(space["id"]))
    assert response.status_code == 200
    assert response.json() == {"archiveIdleDays": None, "deleteArchivedDays": None}


def test_the_policy_is_set_replaced_and_read_back(alice_client, space) -> None:
    url = policy_url(space["id"])
    response = alice_client.put(url, {"archiveIdleDays": 30, "deleteArchivedDays": 90},
                                format="json")
    assert response.status_code == 200
    assert response.json() == {"archiveIdleDays": 30, "deleteArchivedDays": 90}
    response = alice_client.put(url, {"deleteArchivedDays": 7}, format="json")
    assert response.json() == {"archiveIdleDays": None, "deleteArchivedDays": 7}
    assert alice_client.get(url).json() == {"archiveIdleDays": None, "deleteArchivedDays": 7}
    policy = RetentionPolicy.objects.get(space_id=space["id"])
    assert (policy.archive_idle_days, policy.delete_archived_days) == (None, 7)


@pytest.mark.parametrize("body", [
    {"archiveIdleDays": 0}, {"archiveIdleDays": -1}, {"archiveIdleDays": 10**9},
    {"archiveIdleDays": "30"}, {"archiveIdleDays": True}, {"archiveIdleDays": 1.5},
    {"deleteArchivedDays": []}, [1], "x",
])
def test_bad_policies_are_400_and_change_nothing(alice_client, space, body) -> None:
    url = policy_url(space["id"])
    alice_client.put(url, {"archiveIdleDays": 5}, format="json")
    response = alice_client.put(url, body, format="json")
    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_INPUT"
    assert alice_client.get(url).json() == {"archiveIdleDays": 5, "deleteArchivedDays": None}


def test_another_users_policy_is_out_of_reach(alice_client, bob_client, space) -> None:
    url = policy_url(space["id"])
    assert bob_client.get(url).status_code == 403
    assert bob_client.put(url, {"archiveIdleDays": 1}, format="json").status_code == 403
    assert alice_client.get(policy_url("nope")).status_code == 404
    assert not RetentionPolicy.objects.exists()


def age(session_id: str, *, idle_days: int = 0, updated_days: int = 0) -> None:
    now = timezone.now()
    Session.objects.filter(pk=session_id).update(
        last_active_at=now - timedelta(days=idle_days),
        updated_at=now - timedelta(days=updated_days))


def sweep() -> str:
    out = io.StringIO()
    call_command("sweepretention", stdout=out)
    return out.getvalue().strip()


def test_the_sweep_archives_idle_sessions_only(alice_client, api: SessionApi, root_id,
                                               space) -> None:
    idle = api.child(root_id, "Idle")["id"]
    fresh = api.child(root_id, "Fresh")["id"]
    age(idle, idle_days=40)
    age(fresh, idle_days=5)
    age(root_id, idle_days=400)  # the main session is never archived
    RetentionPolicy.objects.create(space_id=space["id"], archive_idle_days=30)
    assert sweep() == "spaces=1 archived=1 deleted=0 busy=0"
    status = dict(Session.objects.values_list("label", "status"))
    assert status == {"Research": "active", "Idle": "archived", "Fresh": "active"}
    assert sweep() == "spaces=1 archived=0 deleted=0 busy=0"  # idempotent


def test_the_sweep_deletes_long_archived_subtrees_for_real(alice_client, api: SessionApi,
                                                          root_id, space, settings) -> None:
    settings.STELLO = {**settings.STELLO, "FORK_STRATEGY": "tree"}
    old = api.child(root_id, "Old")["id"]
    old_child = api.child(old, "Old child")["id"]
    kept_parent = api.child(root_id, "Kept parent")["id"]
    active_child = api.child(kept_parent, "Active child")["id"]
    recent = api.child(root_id, "Recent")["id"]
    for sid in (old, old_child, kept_parent, recent):
        assert api.archive(sid).status_code == 200
    for sid in (old, old_child, kept_parent):
        age(sid, updated_days=100)
    age(recent, updated_days=3)
    for sid in (old, old_child):
        Record.objects.create(session_id=sid, role="user", content="x",
                              timestamp=timezone.now())
        SessionData.objects.create(session_id=sid, key="memory", content="m")
    RetentionPolicy.objects.create(space_id=space["id"], delete_archived_days=90)
    assert sweep() == "spaces=1 archived=0 deleted=2 busy=0"
    labels = set(Session.objects.values_list("label", flat=True))
    # The old subtree is gone; an archived parent with an active child stays.
    assert labels == {"Research", "Kept parent", "Active child", "Recent"}
    gone = [old, old_child]
    assert not Record.objects.filter(session_id__in=gone).exists()
    assert not SessionData.objects.filter(session_id__in=gone).exists()
    assert not TopologyNode.objects.filter(session_id__in=gone).exists()
    assert api.meta(old).status_code == 404
    assert api.meta(active_child).status_code == 200


def test_spaces_without_a_policy_are_untouched(alice_client, bob_client, api: SessionApi,
                                               root_id, space) -> None:
    child = api.child(root_id, "Idle")["id"]
    age(child, idle_days=1000, updated_days=1000)
    RetentionPolicy.objects.create(space_id=space["id"])  # both null: keep everything
    assert sweep() == "spaces=0 archived=0 deleted=0 busy=0"
    assert Session.objects.get(pk=child).status == "active"


def test_the_sweep_logs_its_counts(alice_client, api: SessionApi, root_id, space,
                                   caplog) -> None:
    child = api.child(root_id, "Idle")["id"]
    age(child, idle_days=10)
    RetentionPolicy.objects.create(space_id=space["id"], archive_idle_days=1)
    with caplog.at_level(logging.INFO, logger="stello.retention"):
        sweep()
    messages = [r.getMessage() for r in caplog.records if r.name == "stello.retention"]
    assert f"retention space={space['id']}: archived=1 deleted=0 busy=0" in messages
    assert "retention sweep: spaces=1 archived=1 deleted=0 busy=0" in messages


@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_a_serving_loop_sweeps_in_process(monkeypatch, database) -> None:
    """A server's runtime runs the sweep itself, every interval, until it closes; on
    PostgreSQL too, where the memory queue is procrastinate (its periodic deferrer would stop
    the worker while the database restarts)."""
    from sessions_app.runtime import pool

    calls: list[int] = []

    async def fake_run_periodically(get_agent) -> None:
        calls.append(1)
        await asyncio.Event().wait()

    monkeypatch.setattr(retention, "run_periodically", fake_run_periodically)
    monkeypatch.setattr(pool.pgpool, "conninfo",
                        lambda: "postgresql://unused" if database == "postgresql" else None)

    async def main() -> bool:
        runtime = pool.Runtime(durable_jobs=True)
        runtime.start()
        await asyncio.sleep(0)
        running = runtime._sweeper is not None and not runtime._sweeper.done()
        await runtime.aclose()
        return running and runtime._sweeper.cancelled()

    assert asyncio.run(main())
    assert calls == [1]


@pytest.fixture
def idle_child(alice_client, api: SessionApi, root_id, space, settings) -> str:
    child = api.child(root_id, "Busy")["id"]
    age(child, idle_days=40)
    RetentionPolicy.objects.create(space_id=space["id"], archive_idle_days=30)
    settings.STELLO = {**settings.STELLO, "SESSION_LOCK_TIMEOUT_SECONDS": 0.2}
    return child


@pytest.mark.django_db(transaction=True)
async def test_a_session_in_a_running_turn_is_left_for_the_next_sweep(idle_child) -> None:
    """Archiving takes the session's lock like any operation: a turn holding it is never
    interleaved with; past the lock timeout the session is counted busy and stays active."""
    from sessions_app.runtime.pool import runtimes

    runtime = runtimes.current(one_call=True)
    try:
        async with runtime.locks.hold(idle_child):  # what a running turn holds
            counts = await retention.sweep(runtime.agent)
            assert (counts.archived, counts.busy) == (0, 1)
            assert await Session.objects.filter(pk=idle_child, status="active").aexists()
        counts = await retention.sweep(runtime.agent)
        assert (counts.archived, counts.busy) == (1, 0)
        assert await Session.objects.filter(pk=idle_child, status="archived").aexists()
    finally:
        await runtimes.aclose_current(drain=True)

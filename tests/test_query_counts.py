"""Queries per request, for the endpoints not pinned in tests/api (reads and slots are there).

Bounds are the measured counts (the same on SQLite and PostgreSQL), with authentication already
cached; the test transaction adds a SAVEPOINT/RELEASE pair around each atomic block. The
session locks of PostgreSQL use their own connection and are not counted. Archive includes the
consolidation and integration it triggers, which the sync test client runs before answering.
"""

from __future__ import annotations

import pytest

from tests.conftest import HOT_PATH_DB


@pytest.fixture
def warm(alice_client):
    alice_client.get("/spaces")  # authentication cached from here on
    return alice_client


@pytest.fixture
def space(warm) -> dict:
    body = warm.post("/spaces", {"label": "S", "systemPrompt": "p"}, format="json").json()
    body["root"] = warm.get(f"/spaces/{body['id']}/sessions").json()["id"]
    return body


@pytest.fixture
def child(warm, space) -> str:
    return warm.post(f"/spaces/{space['id']}/sessions/{space['root']}/fork", {"label": "c"},
                     format="json").json()["id"]


@HOT_PATH_DB
class TestSpaceEndpoints:
    def test_create(self, warm, django_assert_max_num_queries) -> None:
        with django_assert_max_num_queries(6):
            assert warm.post("/spaces", {"label": "S", "systemPrompt": "p"},
                             format="json").status_code == 201

    def test_list_and_get(self, warm, space, django_assert_max_num_queries) -> None:
        with django_assert_max_num_queries(1):
            assert warm.get("/spaces").status_code == 200
        with django_assert_max_num_queries(1):
            assert warm.get(f"/spaces/{space['id']}").status_code == 200

    def test_patch(self, warm, space, django_assert_max_num_queries) -> None:
        with django_assert_max_num_queries(9):
            assert warm.patch(f"/spaces/{space['id']}", {"systemPrompt": "x"},
                              format="json").status_code == 200

    def test_delete(self, warm, space, child, django_assert_max_num_queries) -> None:
        # 17: the cascade also clears the session's turns and event log, and the space's
        # retention policy (one more DELETE each).
        with django_assert_max_num_queries(17):
            assert warm.delete(f"/spaces/{space['id']}").status_code == 204


@HOT_PATH_DB
class TestEngineEndpoints:
    def test_turn(self, warm, space, child, django_assert_max_num_queries) -> None:
        # The ORM store (SQLite) reads the running turns and writes the turn row and its log
        # entries (3 more), and the call's usage and its daily rollup (2 more), as statements
        # of the turn's transaction; PostgreSQL folds them into the store's existing
        # statements (still 10).
        from django.db import connection

        limit = 10 if connection.vendor == "postgresql" else 15
        for session_id in (space["root"], child, space["root"]):
            with django_assert_max_num_queries(limit):
                response = warm.post(f"/spaces/{space['id']}/sessions/{session_id}/turn",
                                     {"input": "hi"}, format="json")
                assert response.status_code == 200

    def test_fork(self, warm, space, django_assert_max_num_queries) -> None:
        # 15 on SQLite since the fork logs `session.forked` in its transaction (the source's
        # event_seq read and bumped, the entry inserted); PostgreSQL: still one statement.
        with django_assert_max_num_queries(15):
            assert warm.post(f"/spaces/{space['id']}/sessions/{space['root']}/fork",
                             {"label": "c", "scope": "s"}, format="json").status_code == 201

    def test_consolidate_and_integrate(self, warm, space, child,
                                       django_assert_max_num_queries) -> None:
        warm.post(f"/spaces/{space['id']}/sessions/{child}/turn", {"input": "hi"}, format="json")
        # Each logs its change for the session's followers (`memory.updated`, and for
        # integration `insight.updated` per child): on SQLite 4 queries per entry.
        with django_assert_max_num_queries(23):
            assert warm.post(
                f"/spaces/{space['id']}/sessions/{child}/consolidate").status_code == 200
        with django_assert_max_num_queries(39):  # + the usage rollup (see test_turn)
            assert warm.post(f"/spaces/{space['id']}/integrate").status_code == 200

    def test_archive(self, warm, space, child, django_assert_max_num_queries) -> None:
        warm.post(f"/spaces/{space['id']}/sessions/{child}/turn", {"input": "hi"}, format="json")
        # 43 on SQLite since the archive logs `session.archived` in its transaction; 55 since
        # the final consolidation and the integration after it log their memory and insight
        # entries (4 queries each on SQLite).
        with django_assert_max_num_queries(55):
            assert warm.post(f"/spaces/{space['id']}/sessions/{child}/archive").status_code == 200

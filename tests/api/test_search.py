"""GET /spaces/{id}/search: full-text search over messages, memories and insights, on both
database shapes (PostgreSQL tsvector + GIN, SQLite FTS5), paged with signed cursors."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from django.db import connection

from sessions_app.models import Record, Session, SessionData
from sessions_app.search import MAX_QUERY_CHARS

from .conftest import HOT_PATH_DB, SessionApi, create_space, root_of

pytestmark = HOT_PATH_DB


def add(session_id: str, content: str, role: str = "user") -> Record:
    return Record.objects.create(session_id=session_id, role=role, content=content,
                                 timestamp=datetime.now(UTC))


def search(client, space_id: str, **params: Any):
    return client.get(f"/spaces/{space_id}/search", params)


def hits(response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.content
    return response.json()["results"]


def test_a_message_is_found_with_its_session_and_a_highlighted_snippet(
        alice_client, space, root_id) -> None:
    record = add(root_id, "The quick brown Fox jumps over the lazy dog")
    add(root_id, "nothing to see here")
    [hit] = hits(search(alice_client, space["id"], q="fox"))
    assert hit["kind"] == "message" and hit["sessionId"] == root_id
    assert hit["messageId"] == record.id and hit["role"] == "user"
    assert hit["sessionLabel"] == "Research"
    assert hit["snippet"] == "The quick brown <mark>Fox</mark> jumps over the lazy dog"
    assert hit["timestamp"].endswith("Z")


def test_every_word_must_occur_and_whole_words_only(alice_client, space, root_id) -> None:
    add(root_id, "red apples and green pears")
    add(root_id, "red cars")
    assert len(hits(search(alice_client, space["id"], q="red"))) == 2
    assert len(hits(search(alice_client, space["id"], q="RED pears"))) == 1
    assert hits(search(alice_client, space["id"], q="apple")) == []  # no stemming, no prefix


def test_memories_and_insights_come_first_and_say_their_kind(
        alice_client, space, root_id, api: SessionApi) -> None:
    child = api.child(root_id, "Topic")["id"]
    add(child, "we talked about glaciers")
    SessionData.objects.create(session_id=child, key="memory", content="Glaciers are melting")
    SessionData.objects.create(session_id=child, key="insight", content="Ask about glaciers")
    SessionData.objects.create(session_id=child, key="consolidate_prompt",
                               content="glaciers expert")
    results = hits(search(alice_client, space["id"], q="glaciers"))
    assert [r["kind"] for r in results] == ["insight", "memory", "message"]
    assert all(r["sessionId"] == child and r["sessionLabel"] == "Topic" for r in results)
    assert "updatedAt" in results[0] and "messageId" not in results[0]


def test_changed_and_deleted_content_leaves_the_index(alice_client, space, root_id,
                                                      api: SessionApi) -> None:
    child = api.child(root_id, "Gone")["id"]
    add(child, "ephemeral words")
    slot = SessionData.objects.create(session_id=child, key="memory", content="old marmot")
    slot.content = "new beaver"
    slot.save()
    assert hits(search(alice_client, space["id"], q="marmot")) == []
    assert [h["kind"] for h in hits(search(alice_client, space["id"], q="beaver"))] == [
        "memory"]
    Session.objects.filter(pk=child).delete()
    assert hits(search(alice_client, space["id"], q="ephemeral")) == []
    assert hits(search(alice_client, space["id"], q="beaver")) == []


@pytest.mark.parametrize("q", [
    'fox "dog', "fox NOT", "fox*", "NEAR(fox dog)", "content:fox", "fox & !dog",
    "fox | dog", "'fox'", "fox:*", "-dog fox", "(fox", "\"\"\"", "fox\\", "^fox", "{fox}",
    "OR", "AND", "NEAR", "*",
])
def test_operators_are_plain_words_never_syntax(alice_client, space, root_id, q) -> None:
    add(root_id, "fox and dog near each other")
    response = search(alice_client, space["id"], q=q)
    assert response.status_code == 200, response.content
    words = set(re.findall(r"[^\W_]+", q.lower()))
    found = bool(words) and words <= {"fox", "and", "dog", "near", "each", "other"}
    assert len(response.json()["results"]) == int(found)


def test_a_query_without_a_word_finds_nothing(alice_client, space, root_id) -> None:
    add(root_id, "*** ---")
    assert search(alice_client, space["id"], q="*** ---").json() == {
        "results": [], "nextCursor": None}


def test_quotes_and_stars_do_not_widen_the_match(alice_client, space, root_id) -> None:
    add(root_id, "fox and dog")
    add(root_id, "foxes only")
    assert len(hits(search(alice_client, space["id"], q="fox*"))) == 1
    assert len(hits(search(alice_client, space["id"], q="fox OR cat"))) == 0  # or is a word


@pytest.mark.parametrize(("params", "message"), [
    ({}, "q is required"),
    ({"q": ""}, "q must not be empty"),
    ({"q": "x" * 10_240}, f"q must be at most {MAX_QUERY_CHARS} characters"),
    ({"q": "x" * (MAX_QUERY_CHARS + 1)}, f"q must be at most {MAX_QUERY_CHARS} characters"),
    ({"q": "fox", "limit": "0"}, "limit must be an integer from 1 to 100"),
    ({"q": "fox", "limit": "-1"}, "limit must be an integer from 1 to 100"),
    ({"q": "fox", "limit": "1000000000"}, "limit must be an integer from 1 to 100"),
    ({"q": "fox", "limit": "two"}, "limit must be an integer from 1 to 100"),
])
def test_bad_queries_are_400(alice_client, space, params, message) -> None:
    response = search(alice_client, space["id"], **params)
    assert response.status_code == 400
    assert response.json() == {"error": message, "code": "INVALID_INPUT"}


def test_pages_follow_the_cursor_to_the_end_without_repeats(alice_client, space,
                                                            root_id) -> None:
    SessionData.objects.create(session_id=root_id, key="memory", content="walrus memory")
    ids = [add(root_id, f"walrus number {i}").id for i in range(7)]
    seen, cursor, pages = [], None, 0
    while True:
        params = {"q": "walrus", "limit": 3} | ({"cursor": cursor} if cursor else {})
        body = search(alice_client, space["id"], **params).json()
        pages += 1
        seen += [h.get("messageId", h["kind"]) for h in body["results"]]
        cursor = body["nextCursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == ["memory", *reversed(ids)]


def test_a_page_that_ends_exactly_on_the_memories_continues_with_messages(
        alice_client, space, root_id) -> None:
    SessionData.objects.create(session_id=root_id, key="memory", content="otter")
    add(root_id, "otter message")
    first = search(alice_client, space["id"], q="otter", limit=1).json()
    assert [h["kind"] for h in first["results"]] == ["memory"] and first["nextCursor"]
    second = search(alice_client, space["id"], q="otter", cursor=first["nextCursor"]).json()
    assert [h["kind"] for h in second["results"]] == ["message"]
    assert second["nextCursor"] is None


def test_tampered_or_borrowed_cursors_are_refused(alice_client, bob_client, space,
                                                  root_id) -> None:
    for i in range(3):
        add(root_id, f"heron {i}")
    cursor = search(alice_client, space["id"], q="heron", limit=1).json()["nextCursor"]
    other = create_space(alice_client, label="Other")
    for params, sid in [({"q": "heron", "cursor": cursor[:-2] + "xx"}, space["id"]),
                        ({"q": "heron", "cursor": "not-a-cursor"}, space["id"]),
                        ({"q": "heron", "cursor": "x" * 5000}, space["id"]),
                        ({"q": "crane", "cursor": cursor}, space["id"]),
                        ({"q": "heron", "cursor": cursor}, other["id"])]:
        response = search(alice_client, sid, **params)
        assert response.status_code == 400, params
        assert response.json()["code"] == "INVALID_CURSOR"


def test_search_is_tenant_isolated(alice_client, bob_client, space, root_id) -> None:
    add(root_id, "alice secret pelican")
    bobs = create_space(bob_client, label="Bob's")
    add(root_of(bobs["id"]), "bob secret pelican")
    mine = hits(search(alice_client, space["id"], q="pelican"))
    assert [h["snippet"] for h in mine] == ["alice secret <mark>pelican</mark>"]
    assert search(alice_client, bobs["id"], q="pelican").status_code == 403
    assert search(alice_client, "not-a-space", q="pelican").status_code == 404
    assert search(alice_client, "00000000-0000-0000-0000-000000000000",
                  q="pelican").status_code == 404


def test_snippets_are_html_escaped_and_cut_around_the_match(alice_client, space,
                                                            root_id) -> None:
    add(root_id, "<script>alert(1)</script> puffin & co")
    [hit] = hits(search(alice_client, space["id"], q="puffin"))
    assert hit["snippet"] == ("&lt;script&gt;alert(1)&lt;/script&gt; <mark>puffin</mark> "
                              "&amp; co")
    add(root_id, "a" * 500 + " kestrel " + "b" * 500)
    [hit] = hits(search(alice_client, space["id"], q="kestrel"))
    assert hit["snippet"].startswith("…") and hit["snippet"].endswith("…")
    assert "<mark>kestrel</mark>" in hit["snippet"] and len(hit["snippet"]) < 200


def test_the_database_uses_its_full_text_index() -> None:
    """The search SQL can use the migration's index (GIN on PostgreSQL, FTS5 on SQLite)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = "
                           "'records_content_fts'")
            assert "gin" in cursor.fetchone()[0].lower()
            cursor.execute("SET enable_seqscan = off")
            cursor.execute("EXPLAIN SELECT id FROM records WHERE to_tsvector('simple'::"
                           "regconfig, content) @@ plainto_tsquery('simple'::regconfig, 'x')")
            plan = " ".join(row[0] for row in cursor.fetchall())
            cursor.execute("SET enable_seqscan = on")
            assert "records_content_fts" in plan
        else:
            cursor.execute("SELECT sql FROM sqlite_master WHERE name = 'records_fts'")
            assert "fts5" in cursor.fetchone()[0].lower()

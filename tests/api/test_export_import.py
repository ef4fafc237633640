"""GET /spaces/{id}/export and POST /spaces/import (and the exportspace / importspace
commands): NDJSON round trips that equal the first export ids aside, and imports that refuse a
bad file with its line number and leave nothing behind."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from sessions_app.models import (
    CoreData,
    Record,
    RetentionPolicy,
    Session,
    SessionData,
    TopologyNode,
)
from spaces.models import Space

from .conftest import HOT_PATH_DB, SessionApi, create_space

pytestmark = HOT_PATH_DB

NDJSON = "application/x-ndjson"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def export(client, space_id: str) -> bytes:
    response = client.get(f"/spaces/{space_id}/export")
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == NDJSON
    return b"".join(response.streaming_content)


def import_(client, body: bytes):
    return client.generic("POST", "/spaces/import", body, content_type=NDJSON)


def lines(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body.splitlines()]


def ids_aside(body: bytes) -> list[dict[str, Any]]:
    """The export with every UUID replaced by its order of first appearance."""
    names: dict[str, str] = {}
    text = UUID.sub(lambda m: names.setdefault(m.group(), f"<id{len(names)}>"),
                    body.decode())
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def rich_space(alice_client, api: SessionApi, root_id: str, settings) -> dict[str, Any]:
    """A space with a tree, an archived child, tool calls, memories, core data, a policy."""
    settings.STELLO = {**settings.STELLO, "FORK_STRATEGY": "tree"}  # a grandchild at depth 2
    child = api.child(root_id, "Child", scope="sources")["id"]
    grandchild = api.child(child, "Grandchild")["id"]
    other = api.child(root_id, "Other")["id"]
    assert api.archive(other).status_code == 200
    base = datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    made = []
    for i, (sid, role) in enumerate([(root_id, "user"), (child, "user"),
                                     (child, "assistant"), (child, "tool"),
                                     (grandchild, "user"), (root_id, "assistant")]):
        extra: dict[str, Any] = {}
        if role == "assistant" and sid == child:
            extra["tool_calls"] = [{"id": "c1", "name": "lookup", "input": {"q": ["x", 1]}}]
        if role == "tool":
            extra["tool_call_id"] = "c1"
        made.append(Record.objects.create(session_id=sid, role=role, content=f"m{i} ünï ✓",
                                          timestamp=base + timedelta(seconds=i), **extra))
    Session.objects.filter(pk=child).update(memory_covered_up_to=made[2].id, turn_count=1,
                                            metadata={"k": [1, {"a": None}]})
    SessionData.objects.create(session_id=child, key="memory", content="child memory")
    SessionData.objects.create(session_id=child, key="insight", content="an insight")
    CoreData.objects.create(space_id=api.space_id, path="user.name", value={"first": "A"})
    CoreData.objects.create(space_id=api.space_id, path="n", value=None)
    RetentionPolicy.objects.create(space_id=api.space_id, archive_idle_days=30)
    return {"id": api.space_id, "child": child, "grandchild": grandchild, "other": other}


def test_export_streams_a_versioned_ndjson_of_the_whole_space(alice_client,
                                                              rich_space) -> None:
    out = lines(export(alice_client, rich_space["id"]))
    assert out[0] == {"format": "stello-space", "version": 1}
    slots = SessionData.objects.filter(session__space_id=rich_space["id"]).count()
    assert [o["type"] for o in out[1:]] == (["space"] + ["session"] * 4 + ["slot"] * slots
                                            + ["core"] * 2 + ["message"] * 6 + ["end"])
    assert out[-1]["counts"] == {"sessions": 4, "slots": slots, "core": 2, "messages": 6}
    sessions = {o["id"]: o for o in out if o.get("type") == "session"}
    child = sessions[rich_space["child"]]
    assert child["memoryCoveredMessages"] == 2 and child["scope"] == "sources"
    assert sessions[rich_space["grandchild"]]["parentId"] == rich_space["child"]
    assert sessions[rich_space["other"]]["status"] == "archived"
    assert out[1]["retention"] == {"archiveIdleDays": 30, "deleteArchivedDays": None}
    first = next(o for o in out if o.get("type") == "message")
    assert first["timestamp"] == "2025-01-02T03:04:05.123456Z"


def test_export_then_import_then_export_equals_the_first_ids_aside(alice, alice_client,
                                                                   rich_space) -> None:
    first = export(alice_client, rich_space["id"])
    response = import_(alice_client, first)
    assert response.status_code == 201, response.content
    new = response.json()
    assert new["id"] != rich_space["id"] and new["userId"] == str(alice.id)
    second = export(alice_client, new["id"])
    assert ids_aside(second) == ids_aside(first)
    assert set(UUID.findall(second.decode())).isdisjoint(UUID.findall(first.decode()))
    # What the export leaves implicit comes back too.
    child = Session.objects.get(space_id=new["id"], label="Child")
    records = list(Record.objects.filter(session=child).order_by("id"))
    assert child.record_count == 3 and child.memory_covered_up_to == records[1].id
    node = TopologyNode.objects.get(session=child)
    assert node.depth == 1 and node.source_session_id is not None
    grandchild = TopologyNode.objects.get(session__space_id=new["id"], label="Grandchild")
    assert grandchild.depth == 2 and grandchild.parent_id == child.id
    # And the imported space works: its tree answers through the API.
    assert alice_client.get(f"/spaces/{new['id']}/sessions").status_code == 200


def test_export_and_import_of_another_users_space(alice_client, bob_client,
                                                  rich_space) -> None:
    assert bob_client.get(f"/spaces/{rich_space['id']}/export").status_code == 403
    assert alice_client.get("/spaces/not-a-space/export").status_code == 404
    # Bob may import Alice's file: it becomes Bob's own new space, nothing of Alice's changes.
    body = export(alice_client, rich_space["id"])
    response = import_(bob_client, body)
    assert response.status_code == 201
    assert alice_client.get(f"/spaces/{response.json()['id']}").status_code == 403
    assert Space.objects.filter(owner__username="alice").count() == 1


def test_the_commands_round_trip(alice, alice_client, rich_space, tmp_path) -> None:
    path = tmp_path / "space.ndjson"
    call_command("exportspace", rich_space["id"], "--output", str(path), stderr=io.StringIO())
    out = io.StringIO()
    call_command("importspace", str(path), "--owner", "alice", stdout=out)
    new_id = out.getvalue().strip().splitlines()[-1]
    assert Space.objects.get(pk=new_id).owner_id == alice.id
    assert ids_aside(export(alice_client, new_id)) == ids_aside(path.read_bytes())
    with pytest.raises(CommandError, match="no space"):
        call_command("exportspace", "nope")
    bad = tmp_path / "bad.ndjson"
    bad.write_bytes(path.read_bytes().rsplit(b"\n", 2)[0] + b"\n")  # no end line
    with pytest.raises(CommandError, match="cut short"):
        call_command("importspace", str(bad), "--owner", "alice")


def _valid(client, space_id: str) -> list[bytes]:
    return export(client, space_id).splitlines(keepends=True)


def _replace(file: list[bytes], index: int, change) -> bytes:
    obj = json.loads(file[index])
    change(obj)
    return b"".join([*file[:index], json.dumps(obj).encode() + b"\n", *file[index + 1:]])


HOSTILE: dict[str, tuple[Any, int | None, str]] = {
    # name: (make the body from the valid lines, line number, message fragment)
    "empty": (lambda f: b"", None, "empty"),
    "not json": (lambda f: b"{nope\n" + b"".join(f[1:]), 1, "Invalid JSON"),
    "no header": (lambda f: b"".join(f[1:]), 1, "not a stello-space export"),
    "wrong version": (lambda f: _replace(f, 0, lambda o: o.update(version=2)), 1,
                      "unsupported version"),
    "truncated": (lambda f: b"".join(f[:-1]), None, "cut short"),
    "cut mid line": (lambda f: b"".join(f[:-2]) + f[-2][:10], None, ""),
    "array line": (lambda f: b"".join([*f[:3], b"[1, 2]\n", *f[3:]]), 4, "JSON object"),
    "deep json": (lambda f: b"".join([*f[:3], b"[" * 5000 + b"]" * 5000 + b"\n", *f[3:]]), 4,
                  "nested too deeply"),
    "deep metadata": (lambda f: _replace(f, 2, lambda o: o.update(
        metadata=json.loads("[" * 100 + "]" * 100))), 3, ""),
    "nul": (lambda f: _replace(f, 1, lambda o: o.update(label="a\x00b")), 2, "NUL"),
    "unknown type": (lambda f: b"".join([*f[:3], b'{"type": "shell"}\n', *f[3:]]), 4,
                     "unknown line type"),
    "unknown session": (lambda f: _replace(f, -2, lambda o: o.update(
        session="11111111-1111-1111-1111-111111111111")), -2, "not a session defined"),
    "parent later": (lambda f: _replace(f, 3, lambda o: o.update(parentId="zzz")), 4,
                     "parentId"),
    "two mains": (lambda f: _replace(f, 3, lambda o: o.update(role="main", parentId=None)),
                  4, "main session"),
    "counts lie": (lambda f: _replace(f, -1, lambda o: o["counts"].update(messages=1)), -1,
                   "counts"),
    "after end": (lambda f: b"".join(f) + f[-2], 0, "follow the end line"),
    "bad role": (lambda f: _replace(f, -2, lambda o: o.update(role="root")), -2, "role"),
    "bad timestamp": (lambda f: _replace(f, -2, lambda o: o.update(timestamp="yesterday")), -2,
                      "timestamp"),
    "timestamp overflow": (lambda f: _replace(f, -2, lambda o: o.update(
        timestamp="0001-01-01T00:00:00+05:00")), -2, "timestamp"),
    "lone surrogate": (lambda f: b"".join(
        [*f[:2], f[2].replace(b'"label":"', b'"label":"\\ud800', 1), *f[3:]]), 3,
        "Invalid JSON"),
    "wrong type": (lambda f: _replace(f, 2, lambda o: o.update(turnCount="3")), 3,
                   "turnCount"),
    "huge count": (lambda f: _replace(f, 2, lambda o: o.update(turnCount=10**30)), 3,
                   "turnCount"),
    "empty label": (lambda f: _replace(f, 1, lambda o: o.update(label="")), 2, "label"),
    "bad slot key": (lambda f: _replace(f, 7, lambda o: o.update(key="password")), 8,
                     "slot key"),
    "bad tool calls": (lambda f: _replace(f, -4, lambda o: o.update(toolCalls=[1])), -4,
                       "tool call"),
    "covered too many": (lambda f: _replace(f, 3, lambda o: o.update(
        memoryCoveredMessages=99)), 4, "memoryCoveredMessages"),
    "bad retention": (lambda f: _replace(f, 1, lambda o: o.update(
        retention={"archiveIdleDays": -5})), 2, "retention"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_bad_file_is_refused_with_its_line_and_nothing_is_imported(
        alice_client, rich_space, case) -> None:
    make, line, fragment = HOSTILE[case]
    valid = _valid(alice_client, rich_space["id"])
    before = (Space.objects.count(), Session.objects.count(), Record.objects.count(),
              SessionData.objects.count(), CoreData.objects.count(),
              RetentionPolicy.objects.count())
    response = import_(alice_client, make(valid))
    assert response.status_code == 400, (case, response.content)
    body = response.json()
    assert body["code"] == "INVALID_IMPORT"
    assert fragment in body["error"]
    if line is not None:
        number = line if line > 0 else len(valid) + 1 + line
        assert body["error"].startswith(f"line {number}: "), body["error"]
    after = (Space.objects.count(), Session.objects.count(), Record.objects.count(),
             SessionData.objects.count(), CoreData.objects.count(),
             RetentionPolicy.objects.count())
    assert after == before


def test_oversized_imports_and_lines_are_refused(alice_client, rich_space, settings) -> None:
    body = export(alice_client, rich_space["id"])
    settings.STELLO = {**settings.STELLO, "IMPORT_MAX_BYTES": len(body) - 1}
    response = import_(alice_client, body)
    assert response.status_code == 413
    assert response.json()["code"] == "PAYLOAD_TOO_LARGE"
    settings.STELLO = {**settings.STELLO, "IMPORT_MAX_BYTES": 10**9,
                       "IMPORT_MAX_LINE_BYTES": 2048}
    huge = body.replace(b'"m0 ', b'"' + b"x" * 5000 + b" ", 1)
    response = import_(alice_client, huge)
    assert response.status_code == 400
    assert re.match(r"line \d+: longer than 2048 bytes", response.json()["error"])
    count = Space.objects.count()
    assert count == 1


def test_import_needs_a_key(anonymous_client, alice_client, rich_space) -> None:
    body = export(alice_client, rich_space["id"])
    assert import_(anonymous_client, body).status_code == 401


def test_a_big_space_exports_in_batches(alice_client, api: SessionApi, root_id,
                                        monkeypatch) -> None:
    """Records are read BATCH at a time (keyset), so memory does not grow with the space."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from sessions_app import portability

    monkeypatch.setattr(portability, "BATCH", 10)
    now = datetime.now(UTC)
    Record.objects.bulk_create([Record(session_id=root_id, role="user", content=f"r{i}",
                                       timestamp=now) for i in range(45)])
    with CaptureQueriesContext(connection) as queries:
        out = b"".join(portability.export_lines(api.space_id))
    assert lines(out)[-1]["counts"]["messages"] == 45
    record_reads = [q for q in queries.captured_queries
                    if 'FROM "records"' in q["sql"] and "LIMIT 10" in q["sql"]]
    assert len(record_reads) == 5  # 4 full batches and the rest


def test_an_import_of_a_space_with_a_single_session(alice_client) -> None:
    space = create_space(alice_client, label="Tiny")
    body = export(alice_client, space["id"])
    response = import_(alice_client, body)
    assert response.status_code == 201
    assert response.json()["label"] == "Tiny"

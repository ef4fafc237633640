"""Export and import through the real ASGI application (`StelloASGIHandler`): the export is an
async stream in several body messages, and an import may exceed STELLO_MAX_BODY_BYTES up to
its own limit, STELLO_IMPORT_MAX_BYTES, checked while the body is read."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from asgiref.sync import sync_to_async
from asgiref.testing import ApplicationCommunicator

from sessions_app.models import Record
from spaces.models import Space
from stello_project.asgi import StelloASGIHandler

from .conftest import root_of

# The request runs in other threads than the test: it must see committed rows.
pytestmark = pytest.mark.django_db(transaction=True)


async def call(app, method: str, path: str, key: str, body: bytes = b"",
               ) -> tuple[int, dict[str, str], list[bytes]]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 50000),
             "server": ("testserver", 80),
             "headers": [(b"host", b"testserver"), (b"x-api-key", key.encode()),
                         (b"content-type", b"application/x-ndjson"),
                         (b"content-length", str(len(body)).encode())]}
    communicator = ApplicationCommunicator(app, scope)
    await communicator.send_input({"type": "http.request", "body": body})
    start = await communicator.receive_output(20)
    chunks = []
    while True:
        message = await communicator.receive_output(20)
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    await communicator.wait(20)
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, chunks


async def test_export_streams_and_a_large_import_has_its_own_limit(
        alice_key, alice_client, space, settings, monkeypatch) -> None:
    from sessions_app.api import data

    monkeypatch.setattr(data, "EXPORT_CHUNK_LINES", 50)
    root = await sync_to_async(root_of)(space["id"])
    now = datetime.now(UTC)
    await Record.objects.abulk_create([
        Record(session_id=root, role="user", content=f"message {i} " + "x" * 100,
               timestamp=now) for i in range(120)])
    app = StelloASGIHandler()
    status, headers, chunks = await call(app, "GET", f"/spaces/{space['id']}/export",
                                         alice_key)
    assert status == 200 and headers["content-type"] == "application/x-ndjson"
    assert len([c for c in chunks if c]) >= 3  # streamed in pieces, not one body
    body = b"".join(chunks)
    assert json.loads(body.splitlines()[-1])["counts"]["messages"] == 120

    # Bigger than the ordinary body limit, within the import limit: imported.
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4096
    assert len(body) > 4096
    status, _, answer = await call(app, "POST", "/spaces/import", alice_key, body)
    assert status == 201, answer
    new_id = json.loads(b"".join(answer))["id"]
    assert await Record.objects.filter(session__space_id=new_id).acount() == 120

    # Beyond the import limit: 413 before anything is parsed.
    settings.STELLO = {**settings.STELLO, "IMPORT_MAX_BYTES": len(body) - 1}
    status, _, answer = await call(app, "POST", "/spaces/import", alice_key, body)
    assert status == 413
    assert json.loads(b"".join(answer))["code"] == "PAYLOAD_TOO_LARGE"
    assert await Space.objects.acount() == 2
    # Other routes keep the ordinary limit.
    status, _, _ = await call(app, "POST", "/spaces", alice_key, b"{" + b" " * 5000 + b"}")
    assert status == 413

"""The floor under our hot paths: the same engine, store, key check and drivers, with no web
framework around them. A measuring instrument, not a server to run.

It answers the three figures still behind the Node original, `GET /spaces/{id}/sessions`,
`POST /spaces` and the WebSocket `session.stream`, by calling exactly what the views and the
consumer call (the cached key and owner checks, `session_tree`, `aspace_create`, the quota
admission, `SpaceAgent.stream`, the protocol's encoders), straight from a bare ASGI callable:
no Django handler or middleware, no DRF request, negotiation or rendering, no Channels consumer.
Every other request (the benchmark's set-up and clean-up, the lifespan) goes to the real
application. Served by uvicorn with our flags and measured by `bench/run.py` beside ours and
Node's in one sitting, the distance between it and ours is what the frameworks cost; the
distance between it and Node is what the engine, psycopg, redis-py, uvicorn and Python cost.

    .venv/bin/python -m uvicorn $(.venv/bin/python -c "from stello_project.serve import \
        server_flags; print(*server_flags('uvicorn'))") --host 127.0.0.1 --port 8002 \
        --no-access-log --lifespan auto bench.floor:app

No limits and no error handling beyond what the benchmark sends: a failure closes the request.
"""

from __future__ import annotations

import os
import re
from contextlib import aclosing
from typing import Any

import orjson

from stello_project.asgi import application  # sets Django up: before the imports below

# isort: split

from sessions_app.accounting.quotas import admit_turn
from sessions_app.engine.types import StreamChunk
from sessions_app.runtime.pool import runtimes
from sessions_app.store import space_store
from sessions_app.ws import protocol as p
from spaces import pgpool
from spaces.auth import aauthenticate_credentials
from spaces.selectors import aspace_id_for_user
from spaces.services import aspace_create
from spaces.wire import space_json

TREE = re.compile(r"^/spaces/([0-9a-f-]{36})/sessions/?$")
SOCKET = re.compile(r"^/spaces/([0-9a-f-]{36})/ws/?$")
JSON_HEADERS = [(b"content-type", b"application/json")]
# STELLO_FLOOR_NULL_TURN=1: a stream does no engine work at all, only its I/O skeleton: as many
# PostgreSQL round trips as a turn (`SELECT 1`, on the pool), and the frames our offline echo
# sends. What is left is uvicorn, psycopg and Python: the lowest a turn can cost in this stack.
NULL_TURN = os.environ.get("STELLO_FLOOR_NULL_TURN") == "1"
TURN_ROUND_TRIPS = 4  # the lock, the context, the save, the unlock (tests/test_thread_hops.py)


def _key(scope: dict[str, Any]) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-api-key":
            return value.decode("latin-1")
    return None


async def _body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _answer(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": JSON_HEADERS})
    await send({"type": "http.response.body", "body": body})


async def tree(scope, receive, send, space_id: str) -> None:
    user, _ = await aauthenticate_credentials(_key(scope))
    space = await aspace_id_for_user(user_id=user.pk, space_id=space_id)
    await _answer(send, 200, orjson.dumps(await space_store(space).session_tree()))


async def create_space(scope, receive, send) -> None:
    user, _ = await aauthenticate_credentials(_key(scope))
    data = orjson.loads(await _body(receive))
    space = await aspace_create(owner_id=user.pk, label=data["label"],
                                system_prompt=data.get("systemPrompt"))
    await _answer(send, 201, orjson.dumps(space_json(space)))


async def socket(scope, receive, send, space_id: str) -> None:
    await receive()  # websocket.connect
    user, apikey = await aauthenticate_credentials(_key(scope))
    space = await aspace_id_for_user(user_id=user.pk, space_id=space_id)
    await send({"type": "websocket.accept"})
    session_id = None
    while (message := await receive())["type"] == "websocket.receive":
        frame = orjson.loads(message["text"])
        if frame["type"] == "session.enter":
            session_id = frame["sessionId"]
            await send({"type": "websocket.send", "text": orjson.dumps(
                {"type": "session.entered", "sessionId": session_id}).decode()})
        elif frame["type"] == "session.stream" and NULL_TURN:
            await null_turn(send, frame["input"])
        elif frame["type"] == "session.stream":
            await admit_turn(str(user.pk), apikey.pk)
            agent = await runtimes.current().agent(space)
            async with aclosing(agent.stream(session_id, frame["input"])) as items:
                async for item in items:
                    if isinstance(item, StreamChunk):
                        if item.text:
                            await send({"type": "websocket.send",
                                        "text": p.encode(p.stream_delta(item.text))})
                    else:
                        await send({"type": "websocket.send",
                                    "text": p.encode(p.stream_end(item.to_json()))})


async def null_turn(send, text: str) -> None:
    for _ in range(TURN_ROUND_TRIPS):
        async with pgpool.connection() as conn:
            await conn.execute("SELECT 1")
    for chunk in ["Echo", ": ", *(f" {word}" if i else word for i, word in
                                  enumerate(text.split()))]:
        await send({"type": "websocket.send", "text": p.encode(p.stream_delta(chunk))})
    result = {"turn": {"finalContent": f"Echo: {text}", "toolRoundCount": 0,
                       "rawResponse": None}, "turnId": None, "seq": 0}
    await send({"type": "websocket.send", "text": p.encode(p.stream_end(result))})


async def app(scope, receive, send) -> None:
    path = scope.get("path", "")
    if scope["type"] == "http":
        if scope["method"] == "GET" and (match := TREE.match(path)):
            return await tree(scope, receive, send, match[1])
        if scope["method"] == "POST" and path.rstrip("/") == "/spaces":
            return await create_space(scope, receive, send)
    elif scope["type"] == "websocket" and (match := SOCKET.match(path)):
        return await socket(scope, receive, send, match[1])
    return await application(scope, receive, send)

"""The README's limits, on real server processes (daphne, or uvicorn with STELLO_TEST_SERVER):
the per-key rate limit (atomic in Redis, shared by processes and by WebSocket turns), chunked
request bodies, WebSocket frame sizes and keepalive, and the slow-client deadlines.

The deadlines for a slow request head or body are our additions to uvicorn (the production
server), so those tests start uvicorn whatever STELLO_TEST_SERVER says.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import socket
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.support.servers import (
    Server,
    committed_tenant,
    http_json,
    server_env,
    server_processes,
)

pytestmark = [pytest.mark.servers, pytest.mark.postgres,
              pytest.mark.django_db(transaction=True)]

WAIT = 30  # seconds: a bound for one answer, far above what it takes


def redis_env(**overrides: str) -> dict[str, str]:
    """A server environment on Redis, with a prefix of its own (counters start at zero)."""
    return server_env(REDIS_URL=os.environ["REDIS_URL"],
                      STELLO_REDIS_PREFIX=f"stello-test-{uuid.uuid4().hex[:12]}",
                      STELLO_CONSOLIDATE_EVERY_N_TURNS="0", **overrides)


def get(server: Server, path: str, key: str) -> tuple[int, str, Any, Any]:
    """(status, reason phrase, headers, JSON body) of one GET on its own connection."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=WAIT)
    try:
        conn.request("GET", path, headers={"X-API-Key": key})
        response = conn.getresponse()
        body = response.read()
        return response.status, response.reason, response.headers, json.loads(body)
    finally:
        conn.close()


def raw_request(server: Server, head: str, body_parts: list[bytes] = ()) -> bytes:
    """Send a request head and body parts on a raw socket; everything the server answers until
    it closes or the answer is complete."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
        sock.sendall(head.encode("latin-1"))
        for part in body_parts:
            sock.sendall(part)
        return read_response(sock)


def read_response(sock: socket.socket) -> bytes:
    """One HTTP response with a Content-Length (ours all have one), or up to EOF."""
    data = b""
    while True:
        if b"\r\n\r\n" in data:
            head, _, rest = data.partition(b"\r\n\r\n")
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length" and len(rest) >= int(value):
                    return data
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def parse(response: bytes) -> tuple[int, Any]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def chunked(body: bytes, size: int = 64 * 1024) -> list[bytes]:
    parts = [b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
             for i in range(0, len(body), size)]
    return [*parts, b"0\r\n\r\n"]


def chunked_head(method: str, path: str, key: str) -> str:
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\n"
            f"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            f"Connection: close\r\n\r\n")


async def ws_frames(server: Server, tenant: dict[str, str], frames: list[dict[str, Any]],
                    answers: int) -> list[dict[str, Any]]:
    """Enter the main session, send `frames`, return the first `answers` answers after the
    entry (stream deltas left out)."""
    async with connect(server.ws(tenant["space_id"]), proxy=None, open_timeout=WAIT,
                       additional_headers={"X-API-Key": tenant["key"]}) as ws:
        await ws.send(json.dumps({"type": "session.enter", "sessionId": tenant["root_id"]}))
        async with asyncio.timeout(WAIT):
            assert json.loads(await ws.recv())["type"] == "session.entered"
            for frame in frames:
                await ws.send(json.dumps(frame))
            got: list[dict[str, Any]] = []
            while len(got) < answers:
                if (frame := json.loads(await ws.recv()))["type"] != "stream.delta":
                    got.append(frame)
            return got


# -- the rate limit -------------------------------------------------------------------------------


@pytest.mark.redis
def test_100_concurrent_requests_on_two_processes_pass_a_20_per_minute_limit_exactly_20_times(
        tmp_path) -> None:
    tenant = committed_tenant("racer", "race")
    env = redis_env(STELLO_RATE_LIMIT="20/min")
    with server_processes([env, env], tmp_path) as (a, b), ThreadPoolExecutor(100) as pool:
        answers = list(pool.map(lambda n: get((a, b)[n % 2], "/spaces", tenant["key"]),
                                range(100)))
        assert Counter(status for status, *_ in answers) == {200: 20, 429: 80}
        # Both processes refused some: the counter is shared, not per process.
        assert {n % 2 for n, (status, *_) in enumerate(answers) if status == 429} == {0, 1}
        for status, reason, headers, body in answers:
            if status == 429:
                assert reason == "Too Many Requests"
                assert 1 <= int(headers["Retry-After"]) <= 60
                assert body["code"] == "RATE_LIMITED"
        # The same key on a WebSocket is over the limit too.
        [answer] = asyncio.run(ws_frames(a, tenant, [{"type": "session.message",
                                                      "input": "hi"}], 1))
        assert answer["type"] == "error" and answer["code"] == "RATE_LIMITED"


@pytest.mark.redis
def test_websocket_turns_streams_and_forks_count_against_the_keys_rest_limit(tmp_path) -> None:
    tenant = committed_tenant("streamer", "ws-limit")
    other = committed_tenant("bystander", "other")
    with server_processes([redis_env(STELLO_RATE_LIMIT="3/min")], tmp_path) as (server,):
        frames = [{"type": "session.message", "input": "one"},
                  {"type": "session.stream", "input": "two"},
                  {"type": "session.fork", "options": {"label": "three"}},
                  {"type": "session.message", "input": "four"},
                  {"type": "session.leave"}]  # not counted, and the connection is still open
        answers = asyncio.run(ws_frames(server, tenant, frames, 5))
        assert [a["type"] for a in answers] == ["turn.complete", "stream.end", "session.forked",
                                                "error", "session.left"]
        assert answers[3]["code"] == "RATE_LIMITED"
        assert answers[3]["message"].startswith("Request was throttled.")
        status, reason, headers, _ = get(server, "/spaces", tenant["key"])
        assert (status, reason) == (429, "Too Many Requests") and int(headers["Retry-After"]) >= 1
        assert get(server, "/spaces", other["key"])[0] == 200  # another key has its own budget

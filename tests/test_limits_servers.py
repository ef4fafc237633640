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
                       max_size=None, additional_headers={"X-API-Key": tenant["key"]}) as ws:
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


# -- chunked request bodies -----------------------------------------------------------------------


def test_chunked_bodies_are_read_and_held_to_the_size_limit(tmp_path) -> None:
    tenant = committed_tenant("chunky", "before")
    space = f"/spaces/{tenant['space_id']}"
    with server_processes([server_env(STELLO_CONSOLIDATE_EVERY_N_TURNS="0")], tmp_path) as (s,):
        rename = json.dumps({"label": "after"}).encode()
        status, body = parse(raw_request(s, chunked_head("PATCH", space, tenant["key"]),
                                         chunked(rename, 5)))
        assert (status, body["label"]) == (200, "after")
        assert http_json("GET", s.http(space), tenant["key"])[1]["label"] == "after"

        turn = json.dumps({"input": "hello"}).encode()
        status, body = parse(raw_request(s, chunked_head(
            "POST", f"{space}/sessions/{tenant['root_id']}/turn", tenant["key"]), chunked(turn)))
        assert status == 200 and body["turn"]["finalContent"]

        big = json.dumps({"label": "x" * (3 * 1024 * 1024)}).encode()  # over the 1 MiB default
        status, body = parse(raw_request(s, chunked_head("PATCH", space, tenant["key"]),
                                         chunked(big)))
        assert (status, body["code"]) == (413, "PAYLOAD_TOO_LARGE")
        head = (f"PATCH {space} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {tenant['key']}\r\n"
                f"Content-Length: {len(big)}\r\nConnection: close\r\n\r\n")
        status, body = parse(raw_request(s, head, [big]))
        assert (status, body["code"]) == (413, "PAYLOAD_TOO_LARGE")
        assert http_json("GET", s.http(space), tenant["key"])[1]["label"] == "after"


# -- WebSocket frames and keepalive ---------------------------------------------------------------


def test_a_frame_limit_above_1_mib_holds_and_larger_frames_get_the_error_frame(tmp_path) -> None:
    tenant = committed_tenant("framer", "frames")
    limit = 2 * 1024 * 1024
    env = server_env(STELLO_WS_MAX_FRAME_BYTES=str(limit))
    with server_processes([env], tmp_path) as (server,):
        frames = [{"type": "session.message", "input": "a" * (1536 * 1024)},  # 1.5 MiB: fine
                  {"type": "session.message", "input": "b" * (3 * 1024 * 1024)},  # over 2 MiB
                  {"type": "session.leave"}]
        answers = asyncio.run(ws_frames(server, tenant, frames, 3))
        assert answers[0]["type"] == "turn.complete"
        assert answers[1] == {"type": "error", "code": "HANDLER_ERROR",
                              "message": f"frame too large: at most {limit} bytes"}
        assert answers[2]["type"] == "session.left"  # the connection stayed open


def ws_handshake(server: Server, tenant: dict[str, str]) -> socket.socket:
    """A raw WebSocket connection, upgraded, that will never answer a ping."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /spaces/{tenant['space_id']}/ws HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\nX-API-Key: {tenant['key']}\r\n\r\n").encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 101"), answer
    return sock


def test_a_websocket_that_does_not_answer_pings_is_closed(tmp_path) -> None:
    tenant = committed_tenant("silent", "half-open")
    env = server_env(STELLO_WS_PING_INTERVAL_SECONDS="1", STELLO_WS_PING_TIMEOUT_SECONDS="1")
    with server_processes([env], tmp_path) as (server,), ws_handshake(server, tenant) as sock:
        # Closed after a ping or two (1 s + 1 s, daphne checks every 2 s): far within 10 s; the
        # servers' own defaults would first ping after 20 s.
        sock.settimeout(10)
        received = b""
        try:
            while chunk := sock.recv(4096):  # pings, then the close: the server ends it
                received += chunk
        except ConnectionResetError:  # daphne may reset instead of closing
            pass
        assert received[:1] == b"\x89"  # a ping came first (FIN + opcode 9)


# -- slow clients (uvicorn, the production server) ----------------------------------------------


def test_a_request_head_trickling_in_is_answered_408_and_closed(tmp_path) -> None:
    env = server_env(STELLO_HTTP_HEADER_TIMEOUT_SECONDS="1")
    with server_processes([env], tmp_path, asgi_server="uvicorn") as (server,), \
            socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        answer, sent = b"", 0
        try:
            # One header byte every 0.2 s (never idle, never complete), for at most ~WAIT s.
            while not answer and sent < WAIT * 5:
                sock.sendall(b"a")
                sent += 1
                sock.settimeout(0.2)
                try:
                    answer = sock.recv(4096)
                except TimeoutError:
                    continue
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(WAIT)
        answer += read_response(sock) if answer else b""
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert sent > 1
        assert sock.recv(1) == b""  # closed


def test_a_request_body_that_stops_arriving_is_answered_408(tmp_path) -> None:
    tenant = committed_tenant("stalled", "body")
    env = server_env(STELLO_HTTP_BODY_TIMEOUT_SECONDS="1")
    with server_processes([env], tmp_path, asgi_server="uvicorn") as (server,):
        head = (f"PATCH /spaces/{tenant['space_id']} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"X-API-Key: {tenant['key']}\r\nContent-Length: 100\r\n\r\n")
        status, body = parse(raw_request(server, head, [b'{"label": "ne']))
        assert (status, body["code"]) == (408, "REQUEST_TIMEOUT")
        assert http_json("GET", server.http(f"/spaces/{tenant['space_id']}"),
                         tenant["key"])[1]["label"] == "body"

#!/usr/bin/env python3
"""A slow, loopback-only, OpenAI-compatible LLM server for bench/run.py's `inflight` phase.

``POST /v1/chat/completions`` answers ``"echo: <last user message>"`` after ``--delay`` seconds
(default 2), as one JSON ``chat.completion`` or, with ``"stream": true``, as SSE chunks (one per
word, a ``finish_reason`` chunk, a ``usage`` chunk when ``stream_options.include_usage`` is set,
``data: [DONE]``). ``GET /healthz`` answers ``ok`` at once; ``GET /stats`` gives its counters
as JSON (calls, in flight now and at most), ``POST /stats/reset`` restarts the maxima.
Anything else: 404 in the provider's error JSON. Plain asyncio with a hand-parsed HTTP/1.1
(keep-alive, Content-Length bodies; no chunked request bodies): one coroutine per connection,
so thousands of concurrent requests cost no threads. The process raises its soft RLIMIT_NOFILE
to the hard limit.

    .venv/bin/python bench/slow_llm.py --port 8400 --delay 2 &
    STELLO_LLM_PROVIDER=openai STELLO_LLM_BASE_URL=http://127.0.0.1:8400/v1 STELLO_LLM_API_KEY=x \\
    STELLO_LLM_MAX_RETRIES=0 STELLO_LLM_TIMEOUT_SECONDS=30 STELLO_CONSOLIDATE_EVERY_N_TURNS=0 \\
        .venv/bin/daphne -b 127.0.0.1 -p 8010 stello_project.asgi:application

It binds 127.0.0.1 only (``--host`` accepts loopback addresses only). On SIGINT/SIGTERM it
prints one line of counters to stderr and exits. ``--ready-file PATH`` writes the port there
once listening (handy with ``--port 0``).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import re
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
_WORDS = re.compile(r"\s*\S+")
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            413: "Payload Too Large"}


class Counters:
    def __init__(self) -> None:
        self.requests = 0
        self.streamed = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.connections = 0
        self.max_connections = 0
        self.open_connections = 0
        self.bad = 0


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def last_user_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):  # content parts
                return "".join(p.get("text", "") for p in content
                               if isinstance(p, dict) and isinstance(p.get("text"), str))
            return ""
    return ""


def prompt_tokens(messages: Any) -> int:
    """A rough token count (4 characters a token), enough for a plausible `usage`."""
    if not isinstance(messages, list):
        return 0
    size = sum(len(str(m.get("content") or "")) for m in messages if isinstance(m, dict))
    return max(1, size // 4)


def usage(messages: Any, text: str) -> dict[str, int]:
    prompt, completion = prompt_tokens(messages), max(1, len(text) // 4)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def head(status: int, content_type: str, length: int | None, keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}", f"Content-Type: {content_type}"]
    if length is None:
        lines.append("Transfer-Encoding: chunked")
    else:
        lines.append(f"Content-Length: {length}")
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def json_response(status: int, body: dict[str, Any], keep_alive: bool) -> bytes:
    data = json.dumps(body, separators=(",", ":")).encode()
    return head(status, "application/json", len(data), keep_alive) + data


def error_response(status: int, message: str, keep_alive: bool) -> bytes:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return json_response(status, {"error": {"message": message, "type": kind, "param": None,
                                            "code": None}}, keep_alive)


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class SlowLLM:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.counters = Counters()
        self.sequence = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        c = self.counters
        c.connections += 1
        c.open_connections += 1
        c.max_connections = max(c.max_connections, c.open_connections)
        try:
            while await self.one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:  # shutting down: end quietly (the stream callback
            pass  # would log the cancellation of a handler task as an error)
        finally:
            c.open_connections -= 1
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def one_request(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> bool:
        """Serves one request; returns whether the connection stays open."""
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # the client closed an idle keep-alive connection
        if len(raw) > MAX_HEADER_BYTES:
            self.counters.bad += 1
            writer.write(error_response(400, "headers too large", False))
            await writer.drain()
            return False
        request_line, *header_lines = raw.decode("latin-1").split("\r\n")
        try:
            method, target, version = request_line.split(" ", 2)
        except ValueError:
            self.counters.bad += 1
            writer.write(error_response(400, "bad request line", False))
            await writer.drain()
            return False
        headers = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self.counters.bad += 1
            writer.write(error_response(400, "chunked request bodies are not supported", False))
            await writer.drain()
            return False
        try:
            length = int(headers.get("content-length", "0") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self.counters.bad += 1
            writer.write(error_response(413 if length > 0 else 400, "bad Content-Length", False))
            await writer.drain()
            return False
        body = await reader.readexactly(length) if length else b""
        path = target.split("?", 1)[0]

        if path == "/healthz" and method in ("GET", "HEAD"):
            writer.write(head(200, "text/plain", 2, keep_alive) + (b"ok" if method == "GET"
                                                                   else b""))
            await writer.drain()
            return keep_alive
        if path == "/stats" and method == "GET":
            writer.write(json_response(200, self.stats(), keep_alive))
            await writer.drain()
            return keep_alive
        if path == "/stats/reset" and method == "POST":  # the maxima start again from now
            self.counters.max_in_flight = self.counters.in_flight
            self.counters.max_connections = self.counters.open_connections
            writer.write(json_response(200, self.stats(), keep_alive))
            await writer.drain()
            return keep_alive
        if path not in ("/v1/chat/completions", "/chat/completions"):
            writer.write(error_response(404, f"no route {method} {path}", keep_alive))
            await writer.drain()
            return keep_alive
        if method != "POST":
            writer.write(error_response(405, "use POST", keep_alive))
            await writer.drain()
            return keep_alive
        try:
            request = json.loads(body or b"{}")
            if not isinstance(request, dict):
                raise ValueError("the body is not a JSON object")
        except ValueError as exc:
            self.counters.bad += 1
            writer.write(error_response(400, f"invalid JSON body: {exc}", keep_alive))
            await writer.drain()
            return keep_alive
        await self.complete(request, writer, keep_alive)
        return keep_alive

    def stats(self) -> dict[str, Any]:
        c = self.counters
        return {"requests": c.requests, "streamed": c.streamed, "inFlight": c.in_flight,
                "maxInFlight": c.max_in_flight, "connections": c.connections,
                "openConnections": c.open_connections, "maxOpenConnections": c.max_connections,
                "badRequests": c.bad, "delaySeconds": self.delay}

    async def complete(self, request: dict[str, Any], writer: asyncio.StreamWriter,
                       keep_alive: bool) -> None:
        c = self.counters
        c.requests += 1
        c.in_flight += 1
        c.max_in_flight = max(c.max_in_flight, c.in_flight)
        try:
            if self.delay > 0:
                await asyncio.sleep(self.delay)
            messages = request.get("messages")
            model = str(request.get("model") or "slow-llm")
            text = "echo: " + last_user_text(messages)
            self.sequence += 1
            base = {"id": f"chatcmpl-slow-{self.sequence}", "created": int(time.time()),
                    "model": model}
            if request.get("stream"):
                c.streamed += 1
                await self.stream(request, writer, keep_alive, base, text)
                return
            writer.write(json_response(200, {
                **base, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop", "logprobs": None}],
                "usage": usage(messages, text),
            }, keep_alive))
            await writer.drain()
        finally:
            c.in_flight -= 1

    async def stream(self, request: dict[str, Any], writer: asyncio.StreamWriter,
                     keep_alive: bool, base: dict[str, Any], text: str) -> None:
        base = {**base, "object": "chat.completion.chunk"}

        def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            return sse({**base, "choices": [choice]})

        events = [event({"role": "assistant", "content": ""})]
        events += [event({"content": word}) for word in _WORDS.findall(text)]
        events.append(event({}, "stop"))
        options = request.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            events.append(sse({**base, "choices": [],
                               "usage": usage(request.get("messages"), text)}))
        events.append(b"data: [DONE]\n\n")
        writer.write(head(200, "text/event-stream", None, keep_alive)
                     + b"".join(chunk(e) for e in events) + b"0\r\n\r\n")
        await writer.drain()


async def serve(args: argparse.Namespace) -> None:
    nofile = raise_nofile()
    app = SlowLLM(args.delay)
    server = await asyncio.start_server(app.handle, args.host, args.port,
                                        backlog=args.backlog, limit=MAX_HEADER_BYTES * 2)
    port = server.sockets[0].getsockname()[1]
    print(f"slow_llm: http://{args.host}:{port}/v1 delay {args.delay}s (pid "
          f"{os.getpid()}, nofile {nofile})", file=sys.stderr, flush=True)
    if args.ready_file:
        await asyncio.to_thread(Path(args.ready_file).write_text, f"{port}\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()
    c = app.counters
    print(f"slow_llm: stopped; requests {c.requests} (streamed {c.streamed}), max in flight "
          f"{c.max_in_flight}, connections {c.connections} (max open {c.max_connections}), "
          f"bad {c.bad}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address")
    parser.add_argument("--port", type=int, default=8400, help="0 picks a free port")
    parser.add_argument("--delay", type=float, default=2.0, help="seconds before each answer")
    parser.add_argument("--backlog", type=int, default=4096)
    parser.add_argument("--ready-file", default=None, help="write the port here once listening")
    args = parser.parse_args(argv)
    try:
        if not ipaddress.ip_address(args.host).is_loopback:
            parser.error("--host must be a loopback address")
    except ValueError:
        parser.error("--host must be a loopback IP address")
    if args.delay < 0:
        parser.error("--delay must be >= 0")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Loopback LLM servers: real HTTP on 127.0.0.1 speaking the OpenAI and Anthropic protocols.

Each server runs a stdlib ``ThreadingHTTPServer`` on a random port in a background thread. A
test queues *actions*; each incoming request takes the next one (or, when the queue is empty,
gets an ``echo: <last user text>`` reply). Every action works for plain JSON calls and for
streamed (SSE) calls alike: the server renders it according to the request's ``"stream"``.

    with OpenAIServer() as server:                  # or the `openai_server` fixture
        server.error(503, "busy")                   # first request: HTTP 503, provider JSON
        server.reply("Hello world", usage=(12, 3))  # second request: a normal answer
        server.reply(tool_calls=[tool_call("c1", "search", {"q": "x"})])
        llm = OpenAICompatLLM(model="m", base_url=server.base_url, api_key="k")
        ...
        assert server.requests[1].body["max_tokens"] == 4096

Actions (all take ``times=N`` to queue the same action N times, and ``delay=seconds`` to wait
before answering, which is how client timeouts are provoked):

- ``reply(text, tool_calls=..., usage=(prompt, completion) | None)``: a normal answer;
- ``error(status, message, error_type=..., headers=..., retry_after_ms=1)``: an error status
  with the provider's error JSON (``retry-after-ms`` keeps SDK retries fast; None omits it);
- ``delay(seconds)``: a reply that comes only after `seconds`;
- ``malformed(body)``: HTTP 200 whose JSON body (or SSE event) is not valid JSON;
- ``cut(text, tool_calls=...)``: start answering, then close the socket mid-way (a stream
  sends its first events; a JSON body is sent half-way);
- ``stream_error(message, error_type=...)``: a stream that starts, then sends the provider's
  in-band error event (``event: error`` for Anthropic, ``data: {"error": ...}`` for OpenAI).

Tool calls are `tool_call(id, name, input)` (or dicts with the same keys);
``tool_call(id, name, raw_arguments="{oops")`` sends arguments that are not JSON.

Every request is recorded as a `RecordedRequest` (method, path, lower-cased headers, parsed
JSON body) in ``server.requests``, in arrival order.

Client-side helpers for adapter tests: `collect_stream(llm, messages, tools)` and
`assemble_tool_calls(deltas)` (joins streamed tool-call pieces by index, like the engine).
The pytest fixtures ``openai_server`` / ``anthropic_server`` are in `llm_fixtures`.
"""

from __future__ import annotations

import json
import re
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

if TYPE_CHECKING:
    from sessions_app.engine.ports import LLM
    from sessions_app.engine.types import Message, StreamDelta, ToolSpec

__all__ = [
    "AnthropicServer",
    "LoopbackLLMServer",
    "OpenAIServer",
    "RecordedRequest",
    "ScriptedToolCall",
    "assemble_tool_calls",
    "collect_stream",
    "tool_call",
]

# (prompt, completion) or (prompt, completion, cached): prompt counts the cached tokens too.
Usage = tuple[int, ...]


def _cached(usage: Usage) -> int:
    return usage[2] if len(usage) > 2 else 0
_WORDS = re.compile(r"\s*\S+(?:\s+$)?")


@dataclass(frozen=True)
class ScriptedToolCall:
    id: str
    name: str
    input: Mapping[str, Any] = field(default_factory=dict)
    raw_arguments: str | None = None  # sent verbatim instead of the JSON of `input`

    @property
    def arguments(self) -> str:
        if self.raw_arguments is not None:
            return self.raw_arguments
        return json.dumps(dict(self.input), separators=(",", ":"), ensure_ascii=False)


def tool_call(
    id: str, name: str, input: Mapping[str, Any] | None = None, *, raw_arguments: str | None = None
) -> ScriptedToolCall:
    return ScriptedToolCall(id=id, name=name, input=dict(input or {}), raw_arguments=raw_arguments)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # the parsed JSON body, or None when it was not JSON
    raw: bytes

    @property
    def stream(self) -> bool:
        return isinstance(self.body, dict) and self.body.get("stream") is True


@dataclass(frozen=True)
class Action:
    kind: Literal["reply", "error", "malformed", "cut", "stream_error"]
    text: str | None = None
    tool_calls: tuple[ScriptedToolCall, ...] = ()
    usage: Usage | None = (10, 5)
    status: int = 200
    message: str = ""
    error_type: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str = ""
    delay: float = 0.0
    chunk_delay: float = 0.0  # a streamed reply waits this long before each event


class _ClientGone(Exception):
    """The client closed the connection; nothing more to send."""


class _HTTPServer(ThreadingHTTPServer):
    request_queue_size = 1024  # hundreds of turns may connect at once (capacity tests)


class LoopbackLLMServer:
    """Base class: the HTTP plumbing, the action queue and the request log."""

    endpoint: ClassVar[str]  # the one POST path served
    base_path: ClassVar[str]  # what goes after host:port in `base_url`

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Action] = deque()
        self._requests: list[RecordedRequest] = []
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.echo_when_idle = True  # False: an unscripted request gets HTTP 500
        self.clients_gone = 0  # replies cut short because the client closed the connection

    # --- life cycle ------------------------------------------------------------------------

    def start(self) -> Self:
        handler = type("Handler", (_Handler,), {"owner": self})
        httpd = _HTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        httpd.block_on_close = False
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in a `delay`
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """What the provider's SDK takes as ``base_url``."""
        return f"http://127.0.0.1:{self.port}{self.base_path}"

    # --- scripting -------------------------------------------------------------------------

    def reply(
        self,
        text: str | None = None,
        *,
        tool_calls: Iterable[ScriptedToolCall | Mapping[str, Any]] = (),
        usage: Usage | None = (10, 5),
        delay: float = 0.0,
        times: int = 1,
        chunk_delay: float = 0.0,
    ) -> Self:
        calls = tuple(_as_tool_call(c) for c in tool_calls)
        return self._push(Action("reply", text, calls, usage, delay=delay,
                                 chunk_delay=chunk_delay), times)

    def error(
        self,
        status: int,
        message: str = "loopback error",
        *,
        error_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        retry_after_ms: int | None = 1,
        delay: float = 0.0,
        times: int = 1,
    ) -> Self:
        all_headers = dict(headers or {})
        if retry_after_ms is not None:
            all_headers.setdefault("retry-after-ms", str(retry_after_ms))
        action = Action(
            "error",
            status=status,
            message=message,
            error_type=error_type,
            headers=all_headers,
            delay=delay,
        )
        return self._push(action, times)

    def delay(self, seconds: float, *, text: str = "slow reply", times: int = 1) -> Self:
        return self.reply(text, delay=seconds, times=times)

    def malformed(self, body: str = '{"choices": [', *, times: int = 1) -> Self:
        return self._push(Action("malformed", body=body), times)

    def cut(
        self,
        text: str | None = "partial answer that never ends",
        *,
        tool_calls: Iterable[ScriptedToolCall | Mapping[str, Any]] = (),
        times: int = 1,
    ) -> Self:
        calls = tuple(_as_tool_call(c) for c in tool_calls)
        return self._push(Action("cut", text, calls), times)

    def stream_error(
        self,
        message: str = "Overloaded",
        *,
        error_type: str | None = None,
        text: str = "partial",
        times: int = 1,
    ) -> Self:
        return self._push(
            Action("stream_error", text, message=message, error_type=error_type), times
        )

    def reset(self) -> None:
        """Forget queued actions and recorded requests."""
        with self._lock:
            self._queue.clear()
            self._requests.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def last_request(self) -> RecordedRequest:
        with self._lock:
            assert self._requests, "no request received"
            return self._requests[-1]

    @property
    def pending(self) -> int:
        """Queued actions not used yet."""
        with self._lock:
            return len(self._queue)

    def _push(self, action: Action, times: int) -> Self:
        with self._lock:
            self._queue.extend([action] * times)
        return self

    def _next_action(self, request: RecordedRequest) -> Action:
        with self._lock:
            self._requests.append(request)
            if self._queue:
                return self._queue.popleft()
        if self.echo_when_idle:
            return Action("reply", "echo: " + _last_user_text(request.body))
        return Action("error", status=500, message="loopback server: no scripted response")

    # --- rendering, per provider -----------------------------------------------------------

    def error_body(self, status: int, message: str, error_type: str | None) -> dict[str, Any]:
        raise NotImplementedError

    def json_body(self, action: Action, model: str) -> dict[str, Any]:
        raise NotImplementedError

    def sse_events(self, action: Action, model: str, include_usage: bool) -> list[bytes]:
        """The complete event sequence of a streamed reply, each item one SSE event."""
        raise NotImplementedError

    def sse_prefix(self, action: Action, model: str) -> list[bytes]:
        """The first events of a reply that is going to be cut or to fail in-band."""
        raise NotImplementedError

    def sse_error(self, message: str, error_type: str | None) -> bytes:
        raise NotImplementedError

    def sse_malformed(self, body: str) -> bytes:
        raise NotImplementedError


class _Handler(BaseHTTPRequestHandler):
    owner: ClassVar[LoopbackLLMServer]
    protocol_version = "HTTP/1.1"
    timeout = 10  # idle keep-alive connections give up after this

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def handle(self) -> None:
        try:
            super().handle()
        except OSError:  # the client reset or dropped the connection: nothing to report
            self.close_connection = True

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        owner = self.owner
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        request = RecordedRequest(
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            raw=raw,
        )
        try:
            if self.command != "POST" or self.path.split("?")[0] != owner.endpoint:
                with owner._lock:
                    owner._requests.append(request)
                self._send_json(404, owner.error_body(404, f"no route {self.path}", None))
                return
            action = owner._next_action(request)
            if action.delay and owner._stopping.wait(action.delay):
                self.close_connection = True  # the server is stopping: answer nothing
                return
            self._perform(action, request)
        except _ClientGone:
            owner.clients_gone += 1
            self.close_connection = True

    def _perform(self, action: Action, request: RecordedRequest) -> None:
        owner = self.owner
        body = request.body if isinstance(request.body, dict) else {}
        model = str(body.get("model", "loopback-model"))
        if action.kind == "error":
            payload = owner.error_body(action.status, action.message, action.error_type)
            self._send_json(action.status, payload, action.headers)
        elif not request.stream:
            if action.kind == "malformed":
                self._send_raw(200, action.body.encode())
            elif action.kind == "cut":
                data = json.dumps(owner.json_body(action, model)).encode()
                self._send_raw(200, data[: len(data) // 2], declared_length=len(data))
                self.close_connection = True
            else:  # reply; a stream_error action answers a plain call normally
                self._send_json(200, owner.json_body(action, model))
        else:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._start_sse()
            if action.kind == "reply":
                for event in owner.sse_events(action, model, include_usage):
                    if action.chunk_delay and owner._stopping.wait(action.chunk_delay):
                        break
                    self._chunk(event)
                self._chunk(b"")
            elif action.kind == "malformed":
                for event in owner.sse_prefix(action, model)[:1]:
                    self._chunk(event)
                self._chunk(owner.sse_malformed(action.body))
                self._chunk(b"")
            elif action.kind == "stream_error":
                for event in owner.sse_prefix(action, model):
                    self._chunk(event)
                self._chunk(owner.sse_error(action.message, action.error_type))
                self._chunk(b"")
            else:  # cut: some events, then the socket closes without the final chunk
                for event in owner.sse_prefix(action, model):
                    self._chunk(event)
                self.close_connection = True

    # --- wire helpers ----------------------------------------------------------------------

    def _send_json(
        self, status: int, payload: Any, headers: Mapping[str, str] | None = None
    ) -> None:
        self._send_raw(status, json.dumps(payload).encode(), headers=headers)

    def _send_raw(
        self,
        status: int,
        data: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        declared_length: int | None = None,
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(declared_length or len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError as exc:
            raise _ClientGone from exc

    def _start_sse(self) -> None:
        try:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream; charset=utf-8")
            self.send_header("cache-control", "no-cache")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
        except OSError as exc:
            raise _ClientGone from exc

    def _chunk(self, data: bytes) -> None:
        """One HTTP chunk (an empty `data` is the terminating chunk)."""
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        except OSError as exc:
            raise _ClientGone from exc


# --- OpenAI ----------------------------------------------------------------------------------


class OpenAIServer(LoopbackLLMServer):
    """``POST /v1/chat/completions``; use ``base_url`` (ends with ``/v1``) with AsyncOpenAI."""

    endpoint = "/v1/chat/completions"
    base_path = "/v1"

    def error_body(self, status: int, message: str, error_type: str | None) -> dict[str, Any]:
        kind = error_type or ("server_error" if status >= 500 else "invalid_request_error")
        return {"error": {"message": message, "type": kind, "param": None, "code": None}}

    def json_body(self, action: Action, model: str) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": action.text}
        if action.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in action.tool_calls
            ]
        body: dict[str, Any] = {
            "id": "chatcmpl-loopback",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if action.tool_calls else "stop",
                    "logprobs": None,
                }
            ],
        }
        if action.usage is not None:
            body["usage"] = _openai_usage(action.usage)
        return body

    def sse_events(self, action: Action, model: str, include_usage: bool) -> list[bytes]:
        events = self._content_events(action, model)
        finish = "tool_calls" if action.tool_calls else "stop"
        events.append(self._chunk_event(model, {}, finish_reason=finish))
        if include_usage and action.usage is not None:
            usage_chunk = {**self._chunk_base(model), "choices": []}
            usage_chunk["usage"] = _openai_usage(action.usage)
            events.append(_data(usage_chunk))
        events.append(b"data: [DONE]\n\n")
        return events

    def sse_prefix(self, action: Action, model: str) -> list[bytes]:
        events = self._content_events(action, model)
        return events[: max(2, len(events) // 2)]

    def sse_error(self, message: str, error_type: str | None) -> bytes:
        return _data({"error": {"message": message, "type": error_type or "server_error"}})

    def sse_malformed(self, body: str) -> bytes:
        return b"data: " + body.encode() + b"\n\n"

    def _content_events(self, action: Action, model: str) -> list[bytes]:
        events = [self._chunk_event(model, {"role": "assistant", "content": ""})]
        for piece in _words(action.text or ""):
            events.append(self._chunk_event(model, {"content": piece}))
        for index, call in enumerate(action.tool_calls):
            head = {
                "index": index,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            events.append(self._chunk_event(model, {"tool_calls": [head]}))
            for fragment in _halves(call.arguments):
                piece = {"index": index, "function": {"arguments": fragment}}
                events.append(self._chunk_event(model, {"tool_calls": [piece]}))
        return events

    @staticmethod
    def _chunk_base(model: str) -> dict[str, Any]:
        return {
            "id": "chatcmpl-loopback",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
        }

    def _chunk_event(
        self, model: str, delta: dict[str, Any], finish_reason: str | None = None
    ) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return _data({**self._chunk_base(model), "choices": [choice]})


def _openai_usage(usage: Usage) -> dict[str, int]:
    prompt, completion = usage[:2]
    body: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if len(usage) > 2:
        body["prompt_tokens_details"] = {"cached_tokens": usage[2]}
    return body


def _anthropic_input(usage: Usage) -> dict[str, int]:
    """Anthropic counts cache reads apart from `input_tokens`."""
    body = {"input_tokens": usage[0] - _cached(usage)}
    if len(usage) > 2:
        body["cache_read_input_tokens"] = usage[2]
    return body


# --- Anthropic -------------------------------------------------------------------------------

_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


class AnthropicServer(LoopbackLLMServer):
    """``POST /v1/messages``; use ``base_url`` (no path) with AsyncAnthropic."""

    endpoint = "/v1/messages"
    base_path = ""

    def error_body(self, status: int, message: str, error_type: str | None) -> dict[str, Any]:
        kind = (
            error_type
            or _ANTHROPIC_ERROR_TYPES.get(status)
            or ("api_error" if status >= 500 else "invalid_request_error")
        )
        return {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": "req_loopback",
        }

    def json_body(self, action: Action, model: str) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if action.text:
            content.append({"type": "text", "text": action.text})
        for call in action.tool_calls:
            tool_input: Any = call.raw_arguments if call.raw_arguments is not None else call.input
            content.append(
                {"type": "tool_use", "id": call.id, "name": call.name, "input": tool_input}
            )
        body: dict[str, Any] = {
            "id": "msg_loopback",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": "tool_use" if action.tool_calls else "end_turn",
            "stop_sequence": None,
        }
        if action.usage is not None:
            body["usage"] = {**_anthropic_input(action.usage), "output_tokens": action.usage[1]}
        return body

    def sse_events(self, action: Action, model: str, include_usage: bool) -> list[bytes]:
        events = self._content_events(action, model, close_blocks=True)
        delta: dict[str, Any] = {
            "type": "message_delta",
            "delta": {
                "stop_reason": "tool_use" if action.tool_calls else "end_turn",
                "stop_sequence": None,
            },
        }
        if action.usage is not None:
            delta["usage"] = {"output_tokens": action.usage[1]}
        events.append(_event("message_delta", delta))
        events.append(_event("message_stop", {"type": "message_stop"}))
        return events

    def sse_prefix(self, action: Action, model: str) -> list[bytes]:
        events = self._content_events(action, model, close_blocks=False)
        return events[: max(2, len(events) // 2 + 1)]

    def sse_error(self, message: str, error_type: str | None) -> bytes:
        error = {"type": error_type or "overloaded_error", "message": message}
        return _event("error", {"type": "error", "error": error})

    def sse_malformed(self, body: str) -> bytes:
        return b"event: content_block_delta\ndata: " + body.encode() + b"\n\n"

    def _content_events(self, action: Action, model: str, *, close_blocks: bool) -> list[bytes]:
        message: dict[str, Any] = {
            "id": "msg_loopback",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
        }
        if action.usage is not None:
            message["usage"] = {**_anthropic_input(action.usage), "output_tokens": 1}
        events = [_event("message_start", {"type": "message_start", "message": message})]
        index = 0
        if action.text:
            events.append(_block_start(index, {"type": "text", "text": ""}))
            events.append(_event("ping", {"type": "ping"}))
            for piece in _words(action.text):
                events.append(_block_delta(index, {"type": "text_delta", "text": piece}))
            if close_blocks:
                events.append(_block_stop(index))
            index += 1
        for call in action.tool_calls:
            block = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
            events.append(_block_start(index, block))
            for fragment in ["", *_halves(call.arguments)]:
                delta = {"type": "input_json_delta", "partial_json": fragment}
                events.append(_block_delta(index, delta))
            if close_blocks:
                events.append(_block_stop(index))
            index += 1
        return events


def _block_start(index: int, block: dict[str, Any]) -> bytes:
    payload = {"type": "content_block_start", "index": index, "content_block": block}
    return _event("content_block_start", payload)


def _block_delta(index: int, delta: dict[str, Any]) -> bytes:
    payload = {"type": "content_block_delta", "index": index, "delta": delta}
    return _event("content_block_delta", payload)


def _block_stop(index: int) -> bytes:
    return _event("content_block_stop", {"type": "content_block_stop", "index": index})


# --- shared helpers --------------------------------------------------------------------------


def _data(payload: Any) -> bytes:
    # ASCII escapes, like the JSON bodies: text may hold lone surrogates, sent as "\ud800".
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _event(name: str, payload: Any) -> bytes:
    return f"event: {name}\n".encode() + _data(payload)


def _words(text: str) -> list[str]:
    pieces = _WORDS.findall(text)
    return pieces if "".join(pieces) == text else [text] if text else []


def _halves(text: str) -> list[str]:
    middle = max(1, len(text) // 2)
    return [text[:middle], text[middle:]] if len(text) > 1 else [text]


def _as_tool_call(call: ScriptedToolCall | Mapping[str, Any]) -> ScriptedToolCall:
    if isinstance(call, ScriptedToolCall):
        return call
    return tool_call(
        call["id"], call["name"], call.get("input"), raw_arguments=call.get("arguments")
    )


def _last_user_text(body: Any) -> str:
    """The text of the last user message of an OpenAI or Anthropic request body."""
    messages: Sequence[Any] = body.get("messages", []) if isinstance(body, dict) else []
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict):
                    continue
                if isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif isinstance(part.get("content"), str):  # an Anthropic tool_result
                    texts.append(part["content"])
            return " ".join(texts)
    return ""


# --- client-side helpers for adapter tests ---------------------------------------------------


async def collect_stream(
    llm: LLM, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()
) -> list[StreamDelta]:
    """Every delta of one streamed call."""
    stream: AsyncIterator[StreamDelta] = llm.stream(messages, tools=tools)
    return [delta async for delta in stream]


def assemble_tool_calls(deltas: Sequence[StreamDelta]) -> list[dict[str, Any]]:
    """Tool-call pieces joined by index (like the engine does): id, name and parsed input."""
    calls: dict[int, dict[str, Any]] = {}
    for delta in deltas:
        for piece in delta.tool_calls:
            call = calls.setdefault(piece.index, {"id": None, "name": None, "arguments": ""})
            if piece.id:
                call["id"] = piece.id
            if piece.name:
                call["name"] = piece.name
            call["arguments"] += piece.arguments
    return [
        {"id": c["id"], "name": c["name"], "input": json.loads(c["arguments"] or "{}")}
        for _, c in sorted(calls.items())
    ]

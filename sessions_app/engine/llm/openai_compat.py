"""`OpenAICompatLLM`: any OpenAI-compatible Chat Completions endpoint.

Built on the official ``openai`` SDK (``AsyncOpenAI``). The SDK's bounded retry
(``max_retries``, exponential backoff honouring ``retry-after``) covers connection errors,
timeouts and 408/409/429/5xx answers before the first byte of a response; whatever still fails
surfaces as `LLMError` with the provider's status code and message.

Requests go through the client's documented way of sending a request as built
(``client.post(path, body=..., cast_to=...)``) rather than ``chat.completions.create``, which
first walks the whole body against the SDK's parameter types to rename aliased keys and format
annotated values (`async_maybe_transform`). Our bodies have neither (a test holds the walk to
returning them unchanged), and the walk was most of a call's CPU: 7.5-9 ms against 3.0-3.4 ms
per call of a 22-message turn, 500 at once, on the development host. Retries, authentication,
errors and the response models are the SDK's, as with ``create``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import httpx2
import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ..errors import LLMError
from ..types import (
    LLMResponse,
    Message,
    StreamDelta,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
    Usage,
    dumps_compact,
)
from . import (
    call_deadline,
    clean_delta,
    clean_response,
    deadline_error,
    error_message,
    hidden_connection_error,
    http_client,
    is_transient_status,
    parse_tool_arguments,
)

NAME = "OpenAI-compatible API"
# Sent when no key is configured anywhere: local servers (vLLM, Ollama...) ignore it, and a
# real provider answers 401 with a clear message instead of the SDK failing at construction.
_NO_KEY = "no-api-key"
PATH = "/chat/completions"
# What `chat.completions.create` asks of the client besides the body: the API key as a bearer.
_OPTIONS: openai.RequestOptions = {"security": {"bearer_auth": True}}


class OpenAICompatLLM:
    """The LLM port on ``POST {base_url}/chat/completions``."""

    provider = "openai"
    temperature: float | None = None  # None: the provider's default

    def __init__(
        self,
        *,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        max_context_tokens: int = 128000,
        max_output_tokens: int = 4096,
        timeout_seconds: float = 60.0,
        max_retries: int = 2,
    ) -> None:
        self.model = model
        self.max_context_tokens = max_context_tokens
        self.max_output_tokens = max_output_tokens
        self.timeout_seconds = timeout_seconds
        self.max_retries = max_retries
        self._deadline = call_deadline(timeout_seconds, max_retries)
        kwargs: dict[str, Any] = {
            "api_key": api_key or os.environ.get("OPENAI_API_KEY") or _NO_KEY,
            "timeout": timeout_seconds,
            "max_retries": max_retries,
        }
        if base_url:
            kwargs["base_url"] = base_url
        try:
            self._client = openai.AsyncOpenAI(**kwargs, http_client=http_client(openai))
        except openai.OpenAIError as exc:
            raise LLMError(f"{NAME} client configuration error: {exc}") from exc

    # --- the port --------------------------------------------------------------------------

    async def complete(
        self, messages: Sequence[Message], *, tools: Sequence[ToolSpec] = ()
    ) -> LLMResponse:
        try:
            async with asyncio.timeout(self._deadline):
                completion = await self._client.post(
                    PATH, body=self._request(messages, tools), options=_OPTIONS,
                    cast_to=ChatCompletion)
            return clean_response(_to_response(completion))
        except LLMError:
            raise
        except TimeoutError as exc:
            raise deadline_error(NAME, self._deadline) from exc
        except Exception as exc:
            raise self._error(exc) from exc

    async def stream(
        self, messages: Sequence[Message], *, tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[StreamDelta]:
        request = self._request(messages, tools)
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}
        try:
            async with asyncio.timeout(self._deadline):
                chunks = await self._client.post(
                    PATH, body=request, options=_OPTIONS, cast_to=ChatCompletion, stream=True,
                    stream_cls=openai.AsyncStream[ChatCompletionChunk])
        except TimeoutError as exc:
            raise deadline_error(NAME, self._deadline) from exc
        except Exception as exc:
            raise self._error(exc) from exc
        finished = False
        arguments: dict[int, list[str]] = {}
        names: dict[int, str] = {}
        try:
            async for chunk in chunks:
                delta = _chunk_delta(chunk, arguments, names)
                if _chunk_finished(chunk):
                    finished = True
                if delta is not None:
                    yield clean_delta(delta)
        except LLMError:
            raise
        except Exception as exc:
            raise self._error(exc) from exc
        finally:
            with contextlib.suppress(Exception):  # closing a broken stream must not mask its error
                await chunks.close()
        if not finished:
            raise LLMError(
                f"{NAME} stream ended before the response was complete (no finish_reason)",
                transient=True,
            )
        for index, parts in arguments.items():
            parse_tool_arguments("".join(parts), names.get(index, f"tool_{index}"))

    async def aclose(self) -> None:
        await self._client.close()

    # --- request ---------------------------------------------------------------------------

    def _request(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_output_tokens,
            "messages": to_openai_messages(messages),
        }
        if self.temperature is not None:  # set per space or session (see agent_config)
            request["temperature"] = self.temperature
        if tools:
            request["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": dict(tool.input_schema),
                    },
                }
                for tool in tools
            ]
        return request

    # --- errors ----------------------------------------------------------------------------

    def _error(self, exc: Exception) -> LLMError:
        return _map_error(exc, self.timeout_seconds)


def to_openai_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Engine messages -> Chat Completions messages (consecutive system messages merged)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            if out and out[-1]["role"] == "system":
                out[-1]["content"] += "\n\n" + message.content
            else:
                out.append({"role": "system", "content": message.content})
        elif message.role == "tool":
            item: dict[str, Any] = {"role": "tool", "content": message.content}
            if message.tool_call_id is not None:
                item["tool_call_id"] = message.tool_call_id
            out.append(item)
        elif message.role == "assistant" and message.tool_calls:
            out.append(
                {
                    "role": "assistant",
                    "content": message.content or None,
                    "tool_calls": [
                        {
                            "id": call.id,
                            "type": "function",
                            "function": {
                                "name": call.name,
                                "arguments": dumps_compact(dict(call.input)),
                            },
                        }
                        for call in message.tool_calls
                    ],
                }
            )
        else:
            out.append({"role": message.role, "content": message.content})
    return out


# --- response --------------------------------------------------------------------------------


def _to_response(completion: Any) -> LLMResponse:
    if isinstance(completion, str | bytes):
        raise LLMError(f"{NAME} returned a response that is not JSON: {str(completion)[:200]!r}")
    choices = getattr(completion, "choices", None)
    if not choices:
        raise LLMError(f"{NAME} returned a response without choices")
    message = getattr(choices[0], "message", None)
    if message is None:
        raise LLMError(f"{NAME} returned a choice without a message")
    content = getattr(message, "content", None)
    if content is not None and not isinstance(content, str):
        raise LLMError(f"{NAME} returned a message content that is not text")
    calls = []
    for call in getattr(message, "tool_calls", None) or ():
        function = getattr(call, "function", None)
        name = getattr(function, "name", None)
        if function is None or not isinstance(name, str):
            raise LLMError(f"{NAME} returned a tool call that is not a function call")
        arguments = getattr(function, "arguments", None)
        if arguments is not None and not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        calls.append(
            ToolCall(
                id=str(getattr(call, "id", None) or f"tool_{len(calls)}"),
                name=name,
                input=parse_tool_arguments(arguments, name),
            )
        )
    return LLMResponse(content=content, tool_calls=tuple(calls), usage=_usage(completion))


def _usage(obj: Any) -> Usage | None:
    usage = getattr(obj, "usage", None)
    if usage is None:
        return None
    prompt = getattr(usage, "prompt_tokens", None)
    completion = getattr(usage, "completion_tokens", None)
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    # `prompt_tokens` includes the cached ones, which the API details separately.
    cached = getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", None)
    return Usage(prompt_tokens=prompt, completion_tokens=completion,
                 cached_tokens=cached if isinstance(cached, int) else 0)


def _chunk_finished(chunk: Any) -> bool:
    return any(getattr(c, "finish_reason", None) for c in getattr(chunk, "choices", None) or ())


def _chunk_delta(
    chunk: Any, arguments: dict[int, list[str]], names: dict[int, str]
) -> StreamDelta | None:
    if isinstance(chunk, str | bytes) or not hasattr(chunk, "choices"):
        raise LLMError(f"{NAME} sent a stream event that is not a chat completion chunk")
    text = ""
    pieces: list[ToolCallDelta] = []
    for choice in chunk.choices or ():
        delta = getattr(choice, "delta", None)
        if delta is None:
            continue
        content = getattr(delta, "content", None)
        if isinstance(content, str):
            text += content
        for call in getattr(delta, "tool_calls", None) or ():
            index = getattr(call, "index", None)
            if not isinstance(index, int):
                index = len(arguments)
            function = getattr(call, "function", None)
            name = getattr(function, "name", None) or None
            fragment = getattr(function, "arguments", None) or ""
            call_id = getattr(call, "id", None) or None
            if name:
                names[index] = name
            arguments.setdefault(index, []).append(fragment)
            if call_id or name or fragment:
                pieces.append(ToolCallDelta(index=index, id=call_id, name=name, arguments=fragment))
    usage = _usage(chunk)
    if not text and not pieces and usage is None:
        return None
    return StreamDelta(text=text, tool_calls=tuple(pieces), usage=usage)


# --- errors ----------------------------------------------------------------------------------


def _map_error(exc: Exception, timeout_seconds: float) -> LLMError:
    """Any failure of a call -> LLMError carrying the provider's status and message."""
    if isinstance(exc, LLMError):
        return exc
    if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
        if (lost := hidden_connection_error(exc)) is not None:
            return LLMError(f"{NAME} connection error: {type(lost).__name__}: {lost}",
                            transient=True)
        return LLMError(f"{NAME} request timed out (timeout {timeout_seconds:g}s)", transient=True)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = error_message(exc.body, fallback=str(exc))
        return LLMError(
            f"{NAME} error (HTTP {status}): {message}", transient=is_transient_status(status)
        )
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        detail = f"{exc.message} ({type(cause).__name__}: {cause})" if cause else exc.message
        return LLMError(f"{NAME} connection error: {detail}", transient=True)
    if isinstance(exc, openai.APIResponseValidationError):
        return LLMError(f"{NAME} returned an invalid response: {exc.message}")
    if isinstance(exc, openai.APIError):
        # e.g. an error object sent inside a stream
        message = error_message(exc.body, fallback=exc.message)
        return LLMError(f"{NAME} error: {message}", transient=True)
    if isinstance(exc, httpx2.RequestError | anyio.EndOfStream | ssl.SSLError):
        return LLMError(f"{NAME} connection error: {type(exc).__name__}: {exc}", transient=True)
    if isinstance(exc, ValueError):  # json.JSONDecodeError and model validation errors
        return LLMError(f"{NAME} returned a malformed response: {exc}")
    if isinstance(exc, openai.OpenAIError):
        return LLMError(f"{NAME} error: {exc}")
    return LLMError(f"{NAME} call failed: {type(exc).__name__}: {exc}")

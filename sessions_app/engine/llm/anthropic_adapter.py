"""`AnthropicLLM`: the Anthropic Messages API, or any compatible vendor.

Built on the official ``anthropic`` SDK (``AsyncAnthropic``). The SDK's bounded retry
(``max_retries``) covers connection errors, timeouts and 408/409/429/5xx answers before the
first byte of a response; whatever still fails surfaces as `LLMError` with the provider's
status code and message.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import anthropic
import anyio
import httpx2

from ..errors import LLMError
from ..types import LLMResponse, Message, StreamDelta, ToolCall, ToolCallDelta, ToolSpec, Usage
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

NAME = "Anthropic API"
# Error types Anthropic sends inside a stream (`event: error`) that are worth retrying.
_TRANSIENT_ERROR_TYPES = frozenset(
    {"overloaded_error", "api_error", "rate_limit_error", "timeout_error"}
)


class AnthropicLLM:
    """The LLM port on ``POST {base_url}/v1/messages``."""

    provider = "anthropic"
    temperature: float | None = None  # None: the provider's default

    def __init__(
        self,
        *,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        max_context_tokens: int = 200000,
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
        kwargs: dict[str, Any] = {"timeout": timeout_seconds, "max_retries": max_retries}
        if api_key:
            kwargs["api_key"] = api_key
        if base_url:
            kwargs["base_url"] = base_url
        try:
            self._client = anthropic.AsyncAnthropic(**kwargs, http_client=http_client(anthropic))
        except (anthropic.AnthropicError, ValueError) as exc:
            raise LLMError(f"{NAME} client configuration error: {exc}") from exc

    # --- the port --------------------------------------------------------------------------

    async def complete(
        self, messages: Sequence[Message], *, tools: Sequence[ToolSpec] = ()
    ) -> LLMResponse:
        try:
            async with asyncio.timeout(self._deadline):
                message = await self._client.messages.create(**self._request(messages, tools))
            return clean_response(_to_response(message))
        except LLMError:
            raise
        except TimeoutError as exc:
            raise deadline_error(NAME, self._deadline) from exc
        except Exception as exc:
            raise _map_error(exc, self.timeout_seconds) from exc

    async def stream(
        self, messages: Sequence[Message], *, tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[StreamDelta]:
        try:
            async with asyncio.timeout(self._deadline):
                events = await self._client.messages.create(
                    **self._request(messages, tools), stream=True
                )
        except TimeoutError as exc:
            raise deadline_error(NAME, self._deadline) from exc
        except Exception as exc:
            raise _map_error(exc, self.timeout_seconds) from exc
        state = _StreamState()
        try:
            async for event in events:
                delta = state.feed(event)
                if delta is not None:
                    yield clean_delta(delta)
        except LLMError:
            raise
        except Exception as exc:
            raise _map_error(exc, self.timeout_seconds) from exc
        finally:
            with contextlib.suppress(Exception):  # closing a broken stream must not mask its error
                await events.close()
        if not state.stopped:
            raise LLMError(
                f"{NAME} stream ended before the response was complete (no message_stop)",
                transient=True,
            )
        state.check_tool_arguments()

    async def aclose(self) -> None:
        await self._client.close()

    # --- request ---------------------------------------------------------------------------

    def _request(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> dict[str, Any]:
        system, converted = to_anthropic_messages(messages)
        request: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_output_tokens,
            "messages": converted,
        }
        if self.temperature is not None:  # set per space or session (see agent_config)
            request["temperature"] = self.temperature
        if system is not None:
            request["system"] = system
        if tools:
            request["tools"] = [
                {
                    "name": tool.name,
                    "description": tool.description,
                    "input_schema": dict(tool.input_schema),
                }
                for tool in tools
            ]
        return request


def to_anthropic_messages(
    messages: Sequence[Message],
) -> tuple[str | None, list[dict[str, Any]]]:
    """Engine messages -> (system text or None, Messages API messages)."""
    systems: list[str] = []
    out: list[dict[str, Any]] = []
    previous_was_tool = False
    for message in messages:
        if message.role == "system":
            systems.append(message.content)
            continue
        if message.role == "tool":
            block = {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id or "",
                "content": message.content,
            }
            if previous_was_tool:
                out[-1]["content"].append(block)
            else:
                out.append({"role": "user", "content": [block]})
            previous_was_tool = True
            continue
        previous_was_tool = False
        if message.role == "assistant":
            blocks: list[dict[str, Any]] = []
            if message.content:
                blocks.append({"type": "text", "text": message.content})
            for call in message.tool_calls:
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.name,
                        "input": dict(call.input),
                    }
                )
            if message.tool_calls:
                out.append({"role": "assistant", "content": blocks})
            else:
                out.append({"role": "assistant", "content": message.content})
        else:
            out.append({"role": "user", "content": message.content})
    return ("\n\n".join(systems) if systems else None), out


# --- response --------------------------------------------------------------------------------


def _to_response(message: Any) -> LLMResponse:
    if isinstance(message, str | bytes):
        raise LLMError(f"{NAME} returned a response that is not JSON: {str(message)[:200]!r}")
    blocks = getattr(message, "content", None)
    if not isinstance(blocks, list):
        raise LLMError(f"{NAME} returned a response without content blocks")
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in blocks:
        kind = getattr(block, "type", None)
        if kind == "text":
            texts.append(str(getattr(block, "text", "") or ""))
        elif kind == "tool_use":
            name = getattr(block, "name", None)
            tool_input = getattr(block, "input", None)
            if not isinstance(name, str):
                raise LLMError(f"{NAME} returned a tool_use block without a name")
            if isinstance(tool_input, str):  # some compatible vendors send the JSON text
                tool_input = parse_tool_arguments(tool_input, name)
            elif tool_input is None:
                tool_input = {}
            if not isinstance(tool_input, Mapping):
                raise LLMError(
                    f"LLM returned tool-call arguments that are not valid JSON (a JSON object "
                    f"was expected) for tool {name!r}: {tool_input!r}"
                )
            calls.append(
                ToolCall(
                    id=str(getattr(block, "id", None) or f"tool_{len(calls)}"),
                    name=name,
                    input=dict(tool_input),
                )
            )
    usage = getattr(message, "usage", None)
    cache_read, cache_write = _cache_tokens(usage)
    return LLMResponse(
        content="".join(texts) if texts else None,
        tool_calls=tuple(calls),
        usage=_usage(getattr(usage, "input_tokens", None), getattr(usage, "output_tokens", None),
                     cache_read, cache_write),
    )


def _cache_tokens(usage: Any) -> tuple[int, int]:
    """(cache reads, cache writes) of an Anthropic usage object (absent = 0)."""
    read = getattr(usage, "cache_read_input_tokens", None)
    write = getattr(usage, "cache_creation_input_tokens", None)
    return (read if isinstance(read, int) else 0, write if isinstance(write, int) else 0)


def _usage(prompt: Any, completion: Any, cache_read: int = 0, cache_write: int = 0
           ) -> Usage | None:
    # Anthropic's `input_tokens` leaves out the tokens read from or written to its cache; the
    # port counts every input token in `prompt_tokens` (as OpenAI does), the reads as cached.
    if isinstance(prompt, int) and isinstance(completion, int):
        return Usage(prompt_tokens=prompt + cache_read + cache_write,
                     completion_tokens=completion, cached_tokens=cache_read)
    return None


class _StreamState:
    """Turns raw stream events into StreamDeltas and remembers what a complete stream needs."""

    def __init__(self) -> None:
        self.stopped = False
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.cache_read = 0
        self.cache_write = 0
        self.tool_names: dict[int, str] = {}
        self.tool_arguments: dict[int, list[str]] = {}

    def feed(self, event: Any) -> StreamDelta | None:
        kind = getattr(event, "type", None)
        if kind == "message_start":
            usage = getattr(getattr(event, "message", None), "usage", None)
            self._take_usage(usage)
        elif kind == "content_block_start":
            block = getattr(event, "content_block", None)
            if getattr(block, "type", None) == "tool_use":
                index = int(event.index)
                name = getattr(block, "name", None) or None
                call_id = getattr(block, "id", None) or None
                self.tool_names[index] = name or f"tool_{index}"
                self.tool_arguments[index] = []
                return StreamDelta(tool_calls=(ToolCallDelta(index=index, id=call_id, name=name),))
        elif kind == "content_block_delta":
            delta = getattr(event, "delta", None)
            delta_type = getattr(delta, "type", None)
            if delta_type == "text_delta":
                text = getattr(delta, "text", "") or ""
                return StreamDelta(text=text) if text else None
            if delta_type == "input_json_delta":
                fragment = getattr(delta, "partial_json", "") or ""
                index = int(event.index)
                self.tool_arguments.setdefault(index, []).append(fragment)
                if fragment:
                    return StreamDelta(tool_calls=(ToolCallDelta(index=index, arguments=fragment),))
        elif kind == "message_delta":
            self._take_usage(getattr(event, "usage", None))
        elif kind == "message_stop":
            self.stopped = True
            usage = _usage(self.input_tokens, self.output_tokens, self.cache_read,
                           self.cache_write)
            if usage is not None:
                return StreamDelta(usage=usage)
        return None

    def _take_usage(self, usage: Any) -> None:
        if usage is None:
            return
        input_tokens = getattr(usage, "input_tokens", None)
        output_tokens = getattr(usage, "output_tokens", None)
        cache_read, cache_write = _cache_tokens(usage)
        self.cache_read = cache_read or self.cache_read
        self.cache_write = cache_write or self.cache_write
        if isinstance(input_tokens, int):
            self.input_tokens = input_tokens
        if isinstance(output_tokens, int):
            self.output_tokens = output_tokens

    def check_tool_arguments(self) -> None:
        for index, parts in self.tool_arguments.items():
            parse_tool_arguments("".join(parts), self.tool_names.get(index, f"tool_{index}"))


# --- errors ----------------------------------------------------------------------------------


def _map_error(exc: Exception, timeout_seconds: float) -> LLMError:
    """Any failure of a call -> LLMError carrying the provider's status and message."""
    if isinstance(exc, LLMError):
        return exc
    if isinstance(exc, anthropic.APITimeoutError | httpx2.TimeoutException):
        if (lost := hidden_connection_error(exc)) is not None:
            return LLMError(f"{NAME} connection error: {type(lost).__name__}: {lost}",
                            transient=True)
        return LLMError(f"{NAME} request timed out (timeout {timeout_seconds:g}s)", transient=True)
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        message = error_message(exc.body, fallback=str(exc))
        if 200 <= status < 300:  # an `event: error` inside a stream
            error = exc.body.get("error") if isinstance(exc.body, Mapping) else None
            kind = error.get("type") if isinstance(error, Mapping) else None
            return LLMError(
                f"{NAME} stream error ({kind or 'error'}): {message}",
                transient=kind in _TRANSIENT_ERROR_TYPES,
            )
        return LLMError(
            f"{NAME} error (HTTP {status}): {message}", transient=is_transient_status(status)
        )
    if isinstance(exc, anthropic.APIConnectionError):
        cause = exc.__cause__
        detail = f"{exc.message} ({type(cause).__name__}: {cause})" if cause else exc.message
        return LLMError(f"{NAME} connection error: {detail}", transient=True)
    if isinstance(exc, anthropic.APIResponseValidationError):
        return LLMError(f"{NAME} returned an invalid response: {exc.message}")
    if isinstance(exc, httpx2.RequestError | anyio.EndOfStream | ssl.SSLError):
        # the SDK does not wrap transport errors raised while a stream is being read
        return LLMError(f"{NAME} connection error: {type(exc).__name__}: {exc}", transient=True)
    if isinstance(exc, ValueError):  # json.JSONDecodeError and model validation errors
        return LLMError(f"{NAME} returned a malformed response: {exc}")
    if isinstance(exc, anthropic.AnthropicError):
        return LLMError(f"{NAME} error: {exc}")
    return LLMError(f"{NAME} call failed: {type(exc).__name__}: {exc}")

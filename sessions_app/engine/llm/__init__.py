"""LLM adapters behind the engine's `LLM` port, and the factory that picks one.

Providers:

- ``offline``: `offline.OfflineLLM`, deterministic and network-free (the default);
- ``openai``: `openai_compat.OpenAICompatLLM`, any OpenAI-compatible endpoint (OpenAI, vLLM,
  Ollama, DeepSeek...) through the official ``openai`` SDK;
- ``anthropic``: `anthropic_adapter.AnthropicLLM`, the Messages API through the official
  ``anthropic`` SDK.

The SDK adapters are imported lazily by `build_llm`, so importing the engine stays cheap and
does not need the SDKs at all when the offline provider is used.

Provider text is cleaned before the engine sees it: a JSON reply may carry a lone surrogate
(`"\\ud800"`), which Python decodes but which no UTF-8 output (a response, a WebSocket frame,
PostgreSQL) can hold. Every adapter passes its responses and stream deltas through
`clean_response` / `clean_delta`, which write lone surrogates as U+FFFD.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import LLMError
from ..ports import LLM
from ..types import LLMResponse, StreamDelta, ToolCall, ToolCallDelta, Usage

__all__ = ["PROVIDERS", "LLMSettings", "build_llm", "clean_delta", "clean_json", "clean_response",
           "clean_text", "describe", "load_script"]

Provider = Literal["offline", "openai", "anthropic"]
PROVIDERS: tuple[str, ...] = ("offline", "openai", "anthropic")


@dataclass(frozen=True, slots=True)
class LLMSettings:
    """How to reach the chat model (from the STELLO_LLM_* settings)."""

    provider: Provider = "offline"
    model: str = "offline"
    base_url: str | None = None
    api_key: str | None = None  # None = the SDK's own environment variable, if any
    max_context_tokens: int = 128000
    max_output_tokens: int = 4096
    timeout_seconds: float = 60.0
    max_retries: int = 2  # the SDK's bounded retry of transient failures (0 = no retry)
    script_path: str | None = None  # offline only: a JSON list of scripted responses

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ValueError(
                f"unknown LLM provider {self.provider!r}: expected one of {', '.join(PROVIDERS)}"
            )
        if not self.model:
            raise ValueError("the LLM model name must not be empty")
        if self.max_context_tokens <= 0 or self.max_output_tokens <= 0:
            raise ValueError("max_context_tokens and max_output_tokens must be positive")
        if self.timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")


def build_llm(settings: LLMSettings) -> LLM:
    """The adapter for `settings.provider`; SDK modules are imported only when needed."""
    if settings.provider == "offline":
        from .offline import OfflineLLM

        script = load_script(settings.script_path) if settings.script_path else None
        return OfflineLLM(
            model=settings.model,
            max_context_tokens=settings.max_context_tokens,
            script=script,
        )
    if settings.provider == "openai":
        from .openai_compat import OpenAICompatLLM as adapter
    elif settings.provider == "anthropic":
        from .anthropic_adapter import AnthropicLLM as adapter
    else:
        raise ValueError(f"unknown LLM provider {settings.provider!r}")  # pragma: no cover
    return adapter(
        model=settings.model,
        base_url=settings.base_url,
        api_key=settings.api_key,
        max_context_tokens=settings.max_context_tokens,
        max_output_tokens=settings.max_output_tokens,
        timeout_seconds=settings.timeout_seconds,
        max_retries=settings.max_retries,
    )


MAX_CONNECTIONS = 4096  # concurrent requests to one provider, per process
RETRY_BACKOFF_ALLOWANCE = 8.0  # seconds per retry: the SDKs' own back-off stays below this


def http_client(sdk: Any) -> Any:
    """The HTTP client of an SDK client (`sdk` is the ``openai`` or ``anthropic`` module): the
    SDK's own aiohttp transport (its ``aiohttp`` extra), not its default httpx pool. httpx's
    pool checks every connection it holds on each request (a readability syscall each) and
    assigns queued requests by scanning them all, so with a thousand turns in flight the pool's
    bookkeeping grew with the square of the calls (about a fifth of the turns' CPU, even split
    over eight clients); aiohttp's connector takes and returns a connection in constant time
    (the in-flight figures are in the README's Performance section). The SDK's default of 1000
    connections would queue the 1001st concurrent turn. Proxies from the environment
    (HTTPS_PROXY...) still apply: httpx mounts them, the transport uses them."""
    import httpx2

    return sdk.DefaultAioHttpClient(limits=httpx2.Limits(max_connections=MAX_CONNECTIONS))


def hidden_connection_error(exc: BaseException) -> BaseException | None:
    """The connection failure behind a timeout error, if any: the SDKs' aiohttp transport
    reports every aiohttp connection error (refused, reset, the server hanging up) as httpx's
    ConnectTimeout. None for a real timeout."""
    import aiohttp

    cause: BaseException | None = exc
    for _ in range(8):  # the SDK error, the httpx error, aiohttp's
        if cause is None:
            return None
        if isinstance(cause, aiohttp.ClientConnectionError) and not isinstance(
                cause, aiohttp.ServerTimeoutError):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def call_deadline(timeout_seconds: float, max_retries: int) -> float:
    """The longest one call may take, its retries and their back-off included. The SDKs honour
    a server's `retry-after` without an upper bound (anthropic), which would let an upstream hold
    a turn, and its session lock, for as long as it likes."""
    return timeout_seconds * (max_retries + 1) + RETRY_BACKOFF_ALLOWANCE * max_retries + 1.0


def deadline_error(provider: str, seconds: float) -> LLMError:
    return LLMError(f"{provider} call took longer than its {seconds:.0f} s budget "
                    "(timeout x attempts)", transient=True)


def describe(settings: LLMSettings) -> str:
    """A one-line summary for the start-up log. The API key is never printed."""
    parts = [f"LLM provider={settings.provider}", f"model={settings.model}"]
    if settings.provider == "offline":
        if settings.script_path:
            parts.append(f"script={settings.script_path}")
    else:
        parts.append(f"base_url={settings.base_url or '(SDK default)'}")
        parts.append(f"api_key={'set' if settings.api_key else 'unset'}")
        parts.append(f"timeout={settings.timeout_seconds:g}s")
        parts.append(f"max_retries={settings.max_retries}")
        parts.append(f"max_output_tokens={settings.max_output_tokens}")
    parts.append(f"max_context_tokens={settings.max_context_tokens}")
    return " ".join(parts)


def load_script(path: str) -> list[LLMResponse]:
    """Scripted responses for `OfflineLLM` from a JSON file.

    The file holds a list of ``{"content": str | null, "toolCalls": [{"id", "name", "input"}],
    "usage": {"promptTokens", "completionTokens"}}`` objects (``toolCalls`` and ``usage`` are
    optional). Raises ValueError with the reason when the file is not of that shape.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the LLM script {path!r}: {exc}") from exc
    if not isinstance(data, list):
        raise ValueError(f"the LLM script {path!r} must be a JSON list of responses")
    return [_script_entry(entry, path, n) for n, entry in enumerate(data)]


def _script_entry(entry: Any, path: str, n: int) -> LLMResponse:
    where = f"LLM script {path!r}, entry {n}"
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: expected an object")
    content = entry.get("content")
    if content is not None and not isinstance(content, str):
        raise ValueError(f"{where}: content must be a string or null")
    calls = []
    for call in entry.get("toolCalls") or ():
        if (
            not isinstance(call, Mapping)
            or not isinstance(call.get("id"), str)
            or not isinstance(call.get("name"), str)
            or not isinstance(call.get("input", {}), Mapping)
        ):
            raise ValueError(
                f"{where}: each tool call needs a string id and name and an object input"
            )
        calls.append(ToolCall(id=call["id"], name=call["name"], input=dict(call.get("input", {}))))
    usage = None
    raw_usage = entry.get("usage")
    if raw_usage is not None:
        if not isinstance(raw_usage, Mapping):
            raise ValueError(f"{where}: usage must be an object")
        usage = Usage(
            prompt_tokens=int(raw_usage.get("promptTokens", 0)),
            completion_tokens=int(raw_usage.get("completionTokens", 0)),
        )
    return LLMResponse(content=content, tool_calls=tuple(calls), usage=usage)


# --- provider text ---------------------------------------------------------------------------

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD (the same object when there is none)."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def clean_json(value: Any) -> Any:
    """A parsed JSON value with lone surrogates in its strings (keys too) replaced by U+FFFD."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return value  # not plain JSON: nothing a provider sent
    if _LONE_SURROGATE.search(text) is None:
        return value
    return json.loads(clean_text(text))


def clean_response(response: LLMResponse) -> LLMResponse:
    """`response` with its text, tool names, ids and arguments cleaned (see `clean_text`)."""
    calls = tuple(
        ToolCall(id=clean_text(c.id), name=clean_text(c.name), input=clean_json(c.input))
        for c in response.tool_calls
    )
    content = None if response.content is None else clean_text(response.content)
    return LLMResponse(content=content, tool_calls=calls, usage=response.usage)


def clean_delta(delta: StreamDelta) -> StreamDelta:
    """`delta` with its text and tool-call pieces cleaned. An argument fragment may still hold
    an escaped lone surrogate (`\\ud800` as text); `parse_tool_arguments` cleans the value."""
    if not delta.tool_calls:
        text = clean_text(delta.text)
        return delta if text is delta.text else StreamDelta(text=text, usage=delta.usage)
    pieces = tuple(
        ToolCallDelta(index=p.index, id=None if p.id is None else clean_text(p.id),
                      name=None if p.name is None else clean_text(p.name),
                      arguments=clean_text(p.arguments))
        for p in delta.tool_calls
    )
    return StreamDelta(text=clean_text(delta.text), tool_calls=pieces, usage=delta.usage)


# --- helpers shared by the SDK adapters (no SDK import here) ---------------------------------


def is_transient_status(status: int) -> bool:
    """Statuses worth retrying: request timeout, conflict/lock, rate limit, server errors."""
    return status in (408, 409, 429) or status >= 500


def error_message(body: object, fallback: str) -> str:
    """The provider's human-readable message out of an error body, whatever its shape.

    Handles ``{"error": {"message": ...}}`` (OpenAI, Anthropic), ``{"message": ...}`` (the
    inner object, as the OpenAI SDK keeps it), ``{"error": "text"}`` (some compatible servers)
    and plain text bodies.
    """
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping):
            message = inner.get("message")
            if isinstance(message, str) and message:
                return message
        elif isinstance(inner, str) and inner:
            return inner
        message = body.get("message")
        if isinstance(message, str) and message:
            return message
    elif isinstance(body, str) and body.strip():
        return body.strip()[:500]
    return fallback


def parse_tool_arguments(arguments: str | None, tool_name: str) -> dict[str, Any]:
    """Tool-call arguments text -> dict; empty -> {}; anything else raises LLMError."""
    if arguments is None or not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        value = None
    if not isinstance(value, dict):
        shown = arguments if len(arguments) <= 200 else arguments[:200] + "..."
        raise LLMError(
            f"LLM returned tool-call arguments that are not valid JSON (a JSON object was "
            f"expected) for tool {tool_name!r}: {shown!r}"
        )
    return clean_json(value)

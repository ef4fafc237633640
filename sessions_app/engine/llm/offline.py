"""`OfflineLLM`: a deterministic, network-free chat model (the default provider)."""

from __future__ import annotations

import math
import operator
import re
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence

from ..memory import WORDINGS
from ..types import (
    LLMResponse,
    Message,
    StreamDelta,
    ToolCallDelta,
    ToolSpec,
    Usage,
    dumps_compact,
)
from . import clean_response


def _heading_in(text: str, headings: Iterable[str]) -> str | None:
    return next((h for h in headings if h in text), None)


# The headings of the memory calls, in every wording the memory pipeline may use.
INTEGRATION_HEADINGS = tuple(w.children for w in WORDINGS)
TRANSCRIPT_HEADINGS = tuple(w.transcript for w in WORDINGS)
CURRENT_SUMMARY_HEADINGS = tuple(w.current_summary for w in WORDINGS)

_WORDS = re.compile(r"\s*\S+(?:\s+$)?")
_CHILD_LINE = re.compile(r"^- \[sessionId=(?P<id>[^\]]*)\] (?P<label>.*?)(?:: |:$)(?P<memory>.*)$")
_TRANSCRIPT_LINE = re.compile(r"^(?P<role>system|user|assistant|tool): ?(?P<content>.*)$")


class OfflineLLM:
    """A deterministic chat model with no network and no sleeps (also used for benchmarks).

    Behaviour, in this order of precedence:

    1. **Memory calls.** The memory pipeline calls the LLM with no tools. When there are no
       tools, the last user message is sniffed for the headings of the default consolidate,
       integrate and compress prompts:

       - the child-summaries heading (integration): the answer is the JSON text
         ``{"synthesis": "...", "insights": [{"sessionId": "<id>", "content": "..."}]}`` with
         one insight per input line ``- [sessionId=<id>] <label>: <memory>``, each insight
         mentioning its session's label;
       - else the transcript heading (consolidation or compression): one paragraph,
         ``Summary of N messages. Last user message: <first 200 chars>`` where N counts the
         ``role: content`` lines of the transcript; when the current-summary heading is present
         (consolidation over an existing memory) the paragraph says it updates an earlier
         summary, and stays deterministic and bounded in size.

       Memory calls do not consume scripted responses unless ``script_memory_calls=True``, so
       background consolidation cannot steal the responses scripted for turns.
    2. **Scripted responses.** ``OfflineLLM(script=[LLMResponse, ...])`` answers each call
       with the next scripted response (text and/or tool calls), then falls back to echo.
    3. **Echo.** ``echo: <content of the last user message>``; when the conversation ends with
       tool results, ``echo: `` + the contents of those trailing tool messages joined by a
       space.

    `stream()` yields the same text word by word (``"echo:"``, ``" hello"``, ``" world"``: the
    chunks concatenate to the full text and are never empty), then every tool call as
    `ToolCallDelta` pieces (first the index, id and name, then the JSON arguments in two or
    more fragments), then a final `StreamDelta` carrying only the usage.

    Usage: ``prompt_tokens = ceil(chars of all message contents / 4)``,
    ``completion_tokens = ceil(chars of the reply text + tool-call JSON / 4)``; a scripted
    response that carries its own usage keeps it.
    """

    provider = "offline"

    def __init__(
        self,
        *,
        model: str = "offline",
        max_context_tokens: int = 128000,
        script: Iterable[LLMResponse] | None = None,
        script_memory_calls: bool = False,
    ) -> None:
        self.model = model
        self.max_context_tokens = max_context_tokens
        # A script file may spell lone surrogates ("\\ud800"), like a provider: cleaned here.
        self._script: deque[LLMResponse] = deque(map(clean_response, script or ()))
        self._script_memory_calls = script_memory_calls
        # The most recent calls (messages, tools), for tests; bounded so a server can run forever.
        self.calls: deque[tuple[tuple[Message, ...], tuple[ToolSpec, ...]]] = deque(maxlen=100)

    @property
    def remaining_script(self) -> int:
        """How many scripted responses have not been used yet."""
        return len(self._script)

    async def complete(
        self, messages: Sequence[Message], *, tools: Sequence[ToolSpec] = ()
    ) -> LLMResponse:
        return self._respond(messages, tools)

    async def stream(
        self, messages: Sequence[Message], *, tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[StreamDelta]:
        response = self._respond(messages, tools)
        for piece in split_words(response.content or ""):
            yield StreamDelta(text=piece)
        for index, call in enumerate(response.tool_calls):
            yield StreamDelta(tool_calls=(ToolCallDelta(index=index, id=call.id, name=call.name),))
            for fragment in _split_in_two(dumps_compact(dict(call.input))):
                yield StreamDelta(tool_calls=(ToolCallDelta(index=index, arguments=fragment),))
        yield StreamDelta(usage=response.usage)

    async def aclose(self) -> None:
        return None

    # --- internals -------------------------------------------------------------------------

    def _respond(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> LLMResponse:
        self.calls.append((tuple(messages), tuple(tools)))
        memory_reply = None if tools else _memory_reply(messages)
        if memory_reply is not None and not (self._script_memory_calls and self._script):
            return self._with_usage(LLMResponse(content=memory_reply), messages)
        if self._script:
            return self._with_usage(self._script.popleft(), messages)
        return self._with_usage(LLMResponse(content=_echo(messages)), messages)

    @staticmethod
    def _with_usage(response: LLMResponse, messages: Sequence[Message]) -> LLMResponse:
        if response.usage is not None:
            return response
        prompt_chars = sum(map(len, map(_content, messages)))  # C loops: long histories
        completion_chars = len(response.content or "") + sum(
            len(dumps_compact(call.to_json())) for call in response.tool_calls
        )
        usage = Usage(
            prompt_tokens=math.ceil(prompt_chars / 4),
            completion_tokens=math.ceil(completion_chars / 4),
        )
        return LLMResponse(content=response.content, tool_calls=response.tool_calls, usage=usage)


_content = operator.attrgetter("content")


def split_words(text: str) -> list[str]:
    """`text` cut before each word; the pieces concatenate to `text` and are never empty."""
    if not text:
        return []
    pieces = _WORDS.findall(text)
    return pieces if "".join(pieces) == text else [text]


def _split_in_two(text: str) -> list[str]:
    middle = max(1, len(text) // 2)
    return [text[:middle], text[middle:]] if len(text) > 1 else [text]


def _echo(messages: Sequence[Message]) -> str:
    trailing_tools: list[str] = []
    for message in reversed(messages):
        if message.role != "tool":
            break
        trailing_tools.append(message.content)
    if trailing_tools:
        return "echo: " + " ".join(reversed(trailing_tools))
    last_user = _last_user_text(messages)
    return f"echo: {last_user or ''}"


def _last_user_text(messages: Sequence[Message]) -> str | None:
    for message in reversed(messages):
        if message.role == "user":
            return message.content
    return None


def _memory_reply(messages: Sequence[Message]) -> str | None:
    text = _last_user_text(messages)
    if text is None:
        return None
    if heading := _heading_in(text, INTEGRATION_HEADINGS):
        return _integration_reply(text, heading)
    if heading := _heading_in(text, TRANSCRIPT_HEADINGS):
        return _summary_reply(text, heading)
    return None


def _integration_reply(text: str, heading: str) -> str:
    children = [
        (m["id"], m["label"], m["memory"])
        for line in text.split(heading, 1)[1].splitlines()
        if (m := _CHILD_LINE.match(line.rstrip("\r")))
    ]
    labels = [label for _, label, _ in children]
    if children:
        synthesis = f"Synthesis of {len(children)} sessions: " + "; ".join(
            f"{label}: {_clip(memory, 80)}" for _, label, memory in children
        )
    else:
        synthesis = "Synthesis of 0 sessions."
    insights = []
    for session_id, label, _ in children:
        others = [other for other in labels if other != label]
        related = ", ".join(others) if others else "no other session"
        insights.append(
            {"sessionId": session_id, "content": f"Insight for {label}: related to {related}."}
        )
    return dumps_compact({"synthesis": synthesis, "insights": insights})


def _summary_reply(text: str, heading: str) -> str:
    transcript = text.split(heading, 1)[1]
    count = 0
    last_user = ""
    for line in transcript.splitlines():
        match = _TRANSCRIPT_LINE.match(line)
        if match:
            count += 1
            if match["role"] == "user":
                last_user = match["content"]
    updating = ""
    if _heading_in(text, CURRENT_SUMMARY_HEADINGS):
        updating = " (updating an earlier summary)"
    return f"Summary of {count} messages{updating}. Last user message: {last_user[:200]}"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


__all__ = ["OfflineLLM", "split_words"]

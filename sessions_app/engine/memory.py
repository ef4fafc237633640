"""Consolidation (L3 -> L2) and integration (all L2 -> synthesis + insights).

Pure functions: message building, answer parsing and prompt resolution; `consolidate` and
`integrate` add the one LLM call (never with tools). The Chinese headings in the user texts
("当前摘要:", "对话记录:", "当前综合:", "子 Session 摘要:") are the original's wire format and
are kept byte for byte.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from typing import Any

from .ports import LLM
from .types import ChildMemory, Insight, IntegrationResult, Message

_THINK_BLOCK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)


def default_consolidate_prompt(language: str = "English") -> str:
    """The built-in consolidation prompt (our wording), answering in `language`."""
    return (
        "You are an assistant that summarises conversations.\n"
        "Condense the conversation below into one short summary of about 100 to 150 words.\n"
        "Concentrate on the central goal and the main results, and keep only conclusions that "
        "were actually settled. Leave out how the discussion went, small talk and anything "
        "still unresolved.\n"
        "Write a single connected paragraph without lists or Markdown, in the brief, neutral "
        "style of a work note.\n"
        f"Answer in {language}."
    )


def default_integrate_prompt(language: str = "English") -> str:
    """The built-in integration prompt (our wording), answering in `language`."""
    return (
        "You are an analyst who looks across several sessions at once.\n"
        "You receive the summaries of every child session. Produce an overall synthesis and a "
        "piece of advice for each child.\n"
        "Reply with JSON only, shaped exactly like this:\n"
        '{"synthesis": "...", "insights": [{"sessionId": "...", "content": "..."}]}\n'
        "The synthesis brings together the key findings of all child sessions.\n"
        "Each insight gives one child session a perspective drawn from the other sessions.\n"
        "Every insights[].sessionId must be copied character for character from the "
        "sessionId values given in the input; never use a label or make up an id.\n"
        f"Answer in {language}."
    )


def default_compress_prompt(language: str = "English") -> str:
    """The built-in context-compression prompt (our wording), in `language`."""
    return (
        "You are an assistant that compresses conversation history.\n"
        "Reduce the history below to one short summary that preserves the context needed to "
        "carry on: the main topics, the decisions taken and the important facts.\n"
        "Drop repetition and unnecessary detail.\n"
        "Write one connected passage in the style of a context note.\n"
        f"Answer in {language}."
    )


def strip_think(text: str) -> str:
    """Remove every `<think>...</think>` block and the whitespace after it, then strip."""
    return _THINK_BLOCK.sub("", text).strip()


def format_transcript(messages: Sequence[Message]) -> str:
    """One `role: content` line per message (tool rows included, tool-call structures not)."""
    return "\n".join(f"{m.role}: {m.content}" for m in messages)


def consolidation_messages(
    prompt: str, current_memory: str | None, history: Sequence[Message]
) -> list[Message]:
    """The exact messages of a consolidation call."""
    parts: list[str] = []
    if current_memory:
        parts.append("当前摘要:\n" + current_memory)
    parts.append("对话记录:\n" + format_transcript(history))
    return [Message("system", prompt), Message("user", "\n\n".join(parts))]


async def consolidate(
    llm: LLM, prompt: str, current_memory: str | None, history: Sequence[Message]
) -> str:
    """Ask the LLM for the session's new L2 and return it cleaned of `<think>` blocks."""
    response = await llm.complete(consolidation_messages(prompt, current_memory, history))
    return strip_think(response.content or "")


def integration_messages(
    prompt: str, children: Sequence[ChildMemory], current_synthesis: str | None
) -> list[Message]:
    """The exact messages of an integration call."""
    parts: list[str] = []
    if current_synthesis:
        parts.append("当前综合:\n" + current_synthesis)
    lines = "\n".join(f"- [sessionId={c.session_id}] {c.label}: {c.memory}" for c in children)
    parts.append("子 Session 摘要:\n" + lines)
    return [Message("system", prompt), Message("user", "\n\n".join(parts))]


def parse_integration(text: str, collected_ids: Collection[str]) -> IntegrationResult:
    """Read the integration answer leniently.

    The JSON object is the text from the first "{" to the last "}". Without one, or when it
    does not parse as an object, the whole cleaned text is the synthesis and there are no
    insights. A non-string synthesis becomes "". Insights keep only objects whose string
    `sessionId` is one of `collected_ids` and whose `content` is a string; when an id repeats,
    the last entry wins.
    """
    cleaned = strip_think(text)
    fallback = IntegrationResult(synthesis=cleaned, insights=())
    start, end = cleaned.find("{"), cleaned.rfind("}")
    if start < 0 or end < start:
        return fallback
    try:
        parsed: Any = json.loads(cleaned[start : end + 1])
    except (ValueError, RecursionError):
        return fallback
    if not isinstance(parsed, dict):
        return fallback

    synthesis = parsed.get("synthesis")
    raw_insights = parsed.get("insights")
    kept: dict[str, str] = {}
    if isinstance(raw_insights, list):
        for entry in raw_insights:
            if not isinstance(entry, dict):
                continue
            session_id, content = entry.get("sessionId"), entry.get("content")
            if not isinstance(session_id, str) or not isinstance(content, str):
                continue
            if session_id not in collected_ids:
                continue
            kept.pop(session_id, None)  # the last entry wins, in its own position
            kept[session_id] = content
    return IntegrationResult(
        synthesis=synthesis if isinstance(synthesis, str) else "",
        insights=tuple(Insight(session_id=sid, content=c) for sid, c in kept.items()),
    )


async def integrate(
    llm: LLM, prompt: str, children: Sequence[ChildMemory], current_synthesis: str | None
) -> IntegrationResult:
    """Ask the LLM for the synthesis and insights; insights only target the given children."""
    response = await llm.complete(integration_messages(prompt, children, current_synthesis))
    return parse_integration(response.content or "", {c.session_id for c in children})


def resolve_prompt(session_slot: str | None, space_column: str | None, default: str) -> str:
    """The first prompt that is not empty (nor only whitespace): session slot, space, default."""
    return prompt_with_source(session_slot, space_column, default)[0]


def prompt_with_source(session_slot: str | None, space_column: str | None,
                       default: str) -> tuple[str, str]:
    """`resolve_prompt`, and where the prompt came from: "session", "space" or "default"."""
    for candidate, source in ((session_slot, "session"), (space_column, "space")):
        if candidate and candidate.strip():
            return candidate, source
    return default, "default"

"""Consolidation (L3 -> L2) and integration (all L2 -> synthesis + insights).

Pure functions: message building, answer parsing, prompt resolution and the choice of records
that fit the memory model's budget; `consolidate` and `integrate` add the one LLM call (never
with tools).

Every default text a memory call sends (prompts and the headings of the user message) comes
from one `Wording`, chosen by STELLO_MEMORY_LANGUAGE: languages with a wording of their own
(English, Chinese) get prompts entirely in that language; any other language gets the English
wording plus "Answer in <language>.".
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from .ports import LLM
from .types import ChildMemory, Insight, IntegrationResult, Message

_THINK_BLOCK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Wording:
    """The default prompts and the headings of the memory calls, in one language."""

    consolidate: str
    integrate: str
    compress: str
    current_summary: str
    transcript: str
    current_synthesis: str
    children: str
    archived: str  # the mark of an archived child in the integration input


ENGLISH = Wording(
    consolidate=(
        "You are an assistant that summarises conversations.\n"
        "Condense the conversation below into one short summary of about 100 to 150 words.\n"
        "When a current summary is given, update it with the new part of the conversation.\n"
        "Concentrate on the central goal and the main results, and keep only conclusions that "
        "were actually settled. Leave out how the discussion went, small talk and anything "
        "still unresolved.\n"
        "Write a single connected paragraph without lists or Markdown, in the brief, neutral "
        "style of a work note."
    ),
    integrate=(
        "You are an analyst who looks across several sessions at once.\n"
        "You receive the summaries of every child session. Produce an overall synthesis and a "
        "piece of advice for each child that is not archived.\n"
        "Reply with JSON only, shaped exactly like this:\n"
        '{"synthesis": "...", "insights": [{"sessionId": "...", "content": "..."}]}\n'
        "The synthesis brings together the key findings of all child sessions.\n"
        "Each insight gives one child session a perspective drawn from the other sessions.\n"
        "Every insights[].sessionId must be copied character for character from the "
        "sessionId values given in the input; never use a label or make up an id."
    ),
    compress=(
        "You are an assistant that compresses conversation history.\n"
        "Reduce the history below to one short summary that preserves the context needed to "
        "carry on: the main topics, the decisions taken and the important facts.\n"
        "Drop repetition and unnecessary detail.\n"
        "Write one connected passage in the style of a context note."
    ),
    current_summary="Current summary:",
    transcript="Conversation:",
    current_synthesis="Current synthesis:",
    children="Child session summaries:",
    archived="(archived)",
)

CHINESE = Wording(
    consolidate=(
        "你是一个总结对话的助手。\n"
        "请把下面的对话浓缩成一段约 100 到 150 字的简短摘要。\n"
        "如果给出了当前摘要，请用对话的新内容更新它。\n"
        "集中于核心目标和主要成果，只保留已经确定的结论；省略讨论过程、寒暄和尚未解决的内容。\n"
        "写成一段连贯的文字，不用列表或标记格式，采用简洁、中立的工作笔记风格。\n"
        "请用中文回答。"
    ),
    integrate=(
        "你是一名同时审视多个会话的分析师。\n"
        "你会收到每个子会话的摘要。请给出一份整体综合，并为每个未归档的子会话各给出一条建议。\n"
        "只回复 JSON，格式必须完全如下：\n"
        '{"synthesis": "...", "insights": [{"sessionId": "...", "content": "..."}]}\n'
        "synthesis 汇总所有子会话的关键发现。\n"
        "每条 insight 为一个子会话提供来自其他会话的视角。\n"
        "每个 insights[].sessionId 必须逐字复制输入中给出的 sessionId；不得使用标签或编造 id。\n"
        "请用中文回答。"
    ),
    compress=(
        "你是一个压缩对话历史的助手。\n"
        "请把下面的历史压缩成一段简短摘要，保留继续对话所需的上下文：主要话题、已做的决定和重要事实。\n"
        "去掉重复和不必要的细节。\n"
        "写成一段连贯的上下文笔记。\n"
        "请用中文回答。"
    ),
    current_summary="当前摘要:",
    transcript="对话记录:",
    current_synthesis="当前综合:",
    children="子 Session 摘要:",
    archived="(已归档)",
)

_OWN_WORDINGS = {
    "english": ENGLISH, "en": ENGLISH,
    "chinese": CHINESE, "zh": CHINESE, "zh-cn": CHINESE, "zh-hans": CHINESE, "中文": CHINESE,
    "simplified chinese": CHINESE,
}
WORDINGS = (ENGLISH, CHINESE)  # every wording a memory call may use


def wording(language: str = "English") -> Wording:
    """The wording for `language`: its own when we have one, else English asking for it."""
    own = _OWN_WORDINGS.get(language.strip().lower())
    if own is not None:
        return own
    answer = f"\nAnswer in {language}."
    return Wording(
        consolidate=ENGLISH.consolidate + answer,
        integrate=ENGLISH.integrate + answer,
        compress=ENGLISH.compress + answer,
        current_summary=ENGLISH.current_summary,
        transcript=ENGLISH.transcript,
        current_synthesis=ENGLISH.current_synthesis,
        children=ENGLISH.children,
        archived=ENGLISH.archived,
    )


def default_consolidate_prompt(language: str = "English") -> str:
    """The built-in consolidation prompt, in (or answering in) `language`."""
    return wording(language).consolidate


def default_integrate_prompt(language: str = "English") -> str:
    """The built-in integration prompt, in (or answering in) `language`."""
    return wording(language).integrate


def default_compress_prompt(language: str = "English") -> str:
    """The built-in context-compression prompt, in (or answering in) `language`."""
    return wording(language).compress


def strip_think(text: str) -> str:
    """Remove every `<think>...</think>` block and the whitespace after it, then strip."""
    return _THINK_BLOCK.sub("", text).strip()


def format_transcript(messages: Sequence[Message]) -> str:
    """One `role: content` line per message (tool rows included, tool-call structures not)."""
    return "\n".join(f"{m.role}: {m.content}" for m in messages)


def consolidation_messages(
    prompt: str, current_memory: str | None, history: Sequence[Message],
    language: str = "English",
) -> list[Message]:
    """The exact messages of a consolidation call."""
    words = wording(language)
    parts: list[str] = []
    if current_memory:
        parts.append(f"{words.current_summary}\n{current_memory}")
    parts.append(f"{words.transcript}\n{format_transcript(history)}")
    return [Message("system", prompt), Message("user", "\n\n".join(parts))]


def records_within_budget(
    llm: LLM, prompt: str, current_memory: str | None, records: Sequence[Message],
    language: str = "English",
) -> int:
    """How many of the oldest `records` one consolidation call can carry: as many as fit in
    the memory model's context (with the same headroom as context compression), and at
    least one, so a long backlog is worked through in several calls instead of failing."""
    from .compression import THRESHOLD_RATIO, estimate_tokens  # compression imports us

    budget = THRESHOLD_RATIO * llm.max_context_tokens
    used = estimate_tokens(consolidation_messages(prompt, current_memory, (), language))
    count = 0
    for record in records:
        used += estimate_tokens((record,)) + 1  # + its line break
        if used > budget and count:
            break
        count += 1
    return count


async def consolidate(
    llm: LLM, prompt: str, current_memory: str | None, history: Sequence[Message],
    language: str = "English",
) -> str:
    """Ask the LLM for the session's new L2 and return it cleaned of `<think>` blocks."""
    response = await llm.complete(
        consolidation_messages(prompt, current_memory, history, language)
    )
    return strip_think(response.content or "")


def integration_messages(
    prompt: str, children: Sequence[ChildMemory], current_synthesis: str | None,
    language: str = "English",
) -> list[Message]:
    """The exact messages of an integration call."""
    words = wording(language)
    parts: list[str] = []
    if current_synthesis:
        parts.append(f"{words.current_synthesis}\n{current_synthesis}")
    lines = "\n".join(
        f"- [sessionId={c.session_id}] {c.label}"
        f"{' ' + words.archived if c.archived else ''}: {c.memory}"
        for c in children
    )
    parts.append(f"{words.children}\n{lines}")
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
    llm: LLM, prompt: str, children: Sequence[ChildMemory], current_synthesis: str | None,
    language: str = "English",
) -> IntegrationResult:
    """Ask the LLM for the synthesis and insights; insights only target the given children
    that are still active (an archived child's memory informs the synthesis only)."""
    response = await llm.complete(
        integration_messages(prompt, children, current_synthesis, language)
    )
    active = {c.session_id for c in children if not c.archived}
    return parse_integration(response.content or "", active)


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

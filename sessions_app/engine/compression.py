"""Context compression: fit a long history into the token budget, pure.

Nothing is ever deleted: compression only shapes the prompt of one LLM call. Older history is
replaced by one `system` summary message; the recent window and the current turn stay whole.
The caller persists the returned `CompressionCache` so the next call can reuse the summary.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Awaitable, Callable, Sequence

from .memory import format_transcript, strip_think, wording
from .ports import LLM
from .types import CompressionCache, Message, dumps_compact

SUMMARY_HEADER = "Summary of the earlier conversation:\n"
INITIAL_SUMMARY_ESTIMATE = 500
THRESHOLD_RATIO = 0.8

Summarize = Callable[[Sequence[Message]], Awaitable[str]]


def _message_tokens(message: Message) -> int:
    length = len(message.content)
    if message.tool_calls:
        length += len(dumps_compact([call.to_json() for call in message.tool_calls]))
    return math.ceil(length / 4)


def estimate_tokens(messages: Sequence[Message]) -> int:
    """Sum of ceil(len / 4) per message; tool calls count with their JSON text."""
    return sum(_message_tokens(m) for m in messages)


def history_digest(messages: Sequence[Message]) -> str:
    """A stable sha256 (hex) of exactly these messages: role, content, tool_call_id, tool calls."""
    digest = hashlib.sha256()
    for m in messages:
        row = [m.role, m.content, m.tool_call_id, [call.to_json() for call in m.tool_calls]]
        digest.update(json.dumps(row, ensure_ascii=False, sort_keys=True).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def _window_start(history: Sequence[Message], budget: float) -> int:
    """Where the recent window starts: as many newest messages as `budget` allows, then moved
    so that it never starts on a tool message."""
    start, used = len(history), 0
    for i in range(len(history) - 1, -1, -1):
        cost = _message_tokens(history[i])
        if used + cost > budget:
            break
        used += cost
        start = i
    return _avoid_tool_start(history, start)


def _avoid_tool_start(history: Sequence[Message], start: int) -> int:
    if start >= len(history) or history[start].role != "tool":
        return start
    # Back to the assistant message that requested this run of tool results, if it is there.
    owner = start
    while owner > 0 and history[owner - 1].role == "tool":
        owner -= 1
    owner -= 1
    if owner >= 0:
        candidate = history[owner]
        call_ids = {call.id for call in candidate.tool_calls}
        wanted = history[start].tool_call_id
        if candidate.role == "assistant" and call_ids and (wanted is None or wanted in call_ids):
            return owner
    # Orphan tool messages: leave them to the summarised part.
    while start < len(history) and history[start].role == "tool":
        start += 1
    return start


def _cache_matches(cache: CompressionCache, history: Sequence[Message]) -> bool:
    return 0 < cache.covered <= len(history) and cache.digest == history_digest(
        history[: cache.covered]
    )


async def compress_context(
    prefix: Sequence[Message],
    history: Sequence[Message],
    tail: Sequence[Message],
    *,
    max_context_tokens: int,
    cache: CompressionCache | None,
    summarize: Summarize,
    history_tokens: int | None = None,
) -> tuple[list[Message], CompressionCache | None]:
    """The messages of one LLM call, compressed when they reach 80% of the context window.

    `prefix` (system messages) and `tail` (the current turn) are always kept whole; `history`
    is split into an older part, replaced by one summary message, and a recent window that
    never starts on a tool message. A `cache` whose first `covered` messages still match the
    history (digest) is reused while its boundary fits the budget. Returns the messages and the
    new cache to persist (None when nothing was summarised: below the threshold, nothing old
    enough to compress, or the given cache was reused). `summarize` is called at most once.
    `history_tokens`, when the caller keeps it, is `estimate_tokens(history)` (saves a pass).
    """
    unchanged = [*prefix, *history, *tail]
    threshold = THRESHOLD_RATIO * max_context_tokens
    fixed = estimate_tokens([*prefix, *tail])
    if history_tokens is None:
        history_tokens = estimate_tokens(history)
    if fixed + history_tokens < threshold:
        return unchanged, None

    usable_cache = cache if cache is not None and _cache_matches(cache, history) else None
    summary_estimate = (
        math.ceil(len(usable_cache.summary) / 4)
        if usable_cache is not None
        else INITIAL_SUMMARY_ESTIMATE
    )
    start = _window_start(history, threshold - fixed - summary_estimate)
    if (
        usable_cache is not None
        and start <= usable_cache.covered
        and _avoid_tool_start(history, usable_cache.covered) == usable_cache.covered
    ):
        # The cached boundary still fits the budget: keep it, so the summary is reused and
        # the prompt stays stable until the window really has to move forward.
        start = usable_cache.covered
    older = history[:start]
    if not older:
        return unchanged, None

    new_cache: CompressionCache | None = None
    if usable_cache is not None and usable_cache.covered == len(older):
        summary = usable_cache.summary  # the window was sized with this very summary
    else:
        summary = await summarize(older)
        new_cache = CompressionCache(
            covered=len(older), digest=history_digest(older), summary=summary
        )
        # The real summary size may only shrink the window (never summarise twice).
        real_start = _window_start(history, threshold - fixed - math.ceil(len(summary) / 4))
        start = max(start, real_start)

    messages = [*prefix, Message("system", SUMMARY_HEADER + summary), *history[start:], *tail]
    return messages, new_cache


def compression_messages(
    prompt: str, older: Sequence[Message], language: str = "English"
) -> list[Message]:
    """The exact messages of a compression call."""
    heading = wording(language).transcript
    return [Message("system", prompt), Message("user", f"{heading}\n{format_transcript(older)}")]


async def summarize(
    llm: LLM, prompt: str, older: Sequence[Message], language: str = "English"
) -> str:
    """The default summariser: one LLM call (no tools), `<think>` blocks removed."""
    response = await llm.complete(compression_messages(prompt, older, language))
    return strip_think(response.content or "")

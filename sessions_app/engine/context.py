"""Prompt assembly for one LLM call.

prefix (system prompt, then the insight for a standard session or the synthesis for the main
session), the stored history without incomplete tool groups, then the turn's own messages (the
user message, and during tool rounds the assistant tool calls and their results), compressed
to the token budget. A session's own L2 memory is never part of its prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import compression
from .history import History
from .memory import default_compress_prompt
from .ports import LLM, SpaceStore
from .types import CompressionCache, Message, TurnContext


def prompt_prefix(ctx: TurnContext) -> list[Message]:
    """The system messages in front of the history."""
    if ctx.session.role == "main":
        parts = [ctx.system_prompt, ctx.synthesis]
    else:
        parts = [ctx.system_prompt, ctx.insight]
    return [Message("system", text) for text in parts if text]


class PromptBuilder:
    """Builds the messages of every LLM call of one turn; keeps the compression cache current
    between the calls and persists each new one."""

    def __init__(
        self,
        ctx: TurnContext,
        *,
        history: History | None = None,
        llm: LLM,
        memory_llm: LLM,
        store: SpaceStore,
        memory_language: str,
        extra_system: Sequence[str] = (),
    ) -> None:
        self._session_id = ctx.session.id
        # `extra_system`: more system notes after the prefix (the core memory, when enabled).
        self._prefix = [*prompt_prefix(ctx), *(Message("system", t) for t in extra_system if t)]
        # `history` is the session's kept history (the agent's cache); without it, ctx's.
        self._history, self._history_tokens = (history or History(ctx.history)).clean()
        self._cache: CompressionCache | None = ctx.compression
        self._max_context_tokens = llm.max_context_tokens
        self._memory_llm = memory_llm
        self._store = store
        self._language = memory_language

    async def build(self, tail: Sequence[Message]) -> list[Message]:
        messages, new_cache = await compression.compress_context(
            self._prefix,
            self._history,
            tail,
            max_context_tokens=self._max_context_tokens,
            cache=self._cache,
            summarize=self._summarize,
            history_tokens=self._history_tokens,
        )
        if new_cache is not None:
            await self._store.save_compression(self._session_id, new_cache)
            self._cache = new_cache
        return messages

    async def _summarize(self, older: Sequence[Message]) -> str:
        prompt = default_compress_prompt(self._language)
        return await compression.summarize(self._memory_llm, prompt, older, self._language)

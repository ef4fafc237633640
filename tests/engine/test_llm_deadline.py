"""A provider cannot hold a call longer than the configured budget, retries included: an upstream
answering `retry-after: 3600` gets a prompt, transient LLMError instead of an hour's wait."""

from __future__ import annotations

import asyncio

import pytest

from sessions_app.engine.errors import LLMError
from sessions_app.engine.llm.anthropic_adapter import AnthropicLLM
from sessions_app.engine.llm.openai_compat import OpenAICompatLLM
from sessions_app.engine.types import Message

pytest_plugins = ["tests.support.llm_fixtures"]

HOUR = {"retry-after": "3600"}
HANG_GUARD = 30  # seconds: far above the budget, far below an hour


async def drain(stream) -> None:
    async for _ in stream:
        pass


@pytest.mark.parametrize("adapter", ["openai", "anthropic"])
async def test_a_huge_retry_after_is_cut_short_by_the_call_deadline(
    adapter, openai_server, anthropic_server
) -> None:
    server, cls = ((openai_server, OpenAICompatLLM) if adapter == "openai"
                   else (anthropic_server, AnthropicLLM))
    server.error(429, "come back in an hour", headers=HOUR, retry_after_ms=None, times=4)
    llm = cls(model="m", base_url=server.base_url, api_key="k", timeout_seconds=0.3,
              max_retries=1)
    try:
        with pytest.raises(LLMError) as raised:
            await asyncio.wait_for(llm.complete([Message("user", "hi")]), HANG_GUARD)
        with pytest.raises(LLMError):
            await asyncio.wait_for(drain(llm.stream([Message("user", "hi")])), HANG_GUARD)
    finally:
        await llm.aclose()
    assert raised.value.transient

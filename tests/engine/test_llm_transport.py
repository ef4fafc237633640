"""The SDK adapters send through the SDKs' aiohttp transport, not httpx's own pool: httpx's pool
scans every pooled connection and queued request on each call, which made a burst of a thousand
in-flight calls cost O(calls^2) (engine/llm/__init__.py, `http_client`)."""

from __future__ import annotations

import anthropic._vendor.httpx_aiohttp as anthropic_aiohttp
import openai._vendor.httpx_aiohttp as openai_aiohttp
import pytest

from sessions_app.engine.llm import MAX_CONNECTIONS
from sessions_app.engine.llm.anthropic_adapter import AnthropicLLM
from sessions_app.engine.llm.openai_compat import OpenAICompatLLM


@pytest.mark.parametrize(("adapter", "transport"), [
    (OpenAICompatLLM, openai_aiohttp.AiohttpTransport),
    (AnthropicLLM, anthropic_aiohttp.AiohttpTransport),
])
async def test_each_adapter_sends_through_aiohttp_with_room_for_the_burst(
        adapter, transport) -> None:
    llm = adapter(model="m", base_url="http://127.0.0.1:9", api_key="k", timeout_seconds=1,
                  max_retries=0)
    try:
        sent_by = llm._client._client._transport
        assert isinstance(sent_by, transport)
        assert sent_by.limits.max_connections == MAX_CONNECTIONS  # not the SDK's 1000
    finally:
        await llm.aclose()

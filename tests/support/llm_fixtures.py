"""Pytest fixtures for the loopback LLM servers (helpers live in `llm_servers`).

Load the fixtures with ``pytest_plugins = ["tests.support.llm_fixtures"]`` (in the root
conftest.py or in a test module).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .llm_servers import AnthropicServer, OpenAIServer


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    """A fresh OpenAI-protocol loopback server, stopped after the test."""
    with OpenAIServer() as server:
        yield server


@pytest.fixture
def anthropic_server() -> Iterator[AnthropicServer]:
    """A fresh Anthropic-protocol loopback server, stopped after the test."""
    with AnthropicServer() as server:
        yield server

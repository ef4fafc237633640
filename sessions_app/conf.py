"""Typed views of `settings.STELLO` for the engine and the runtime."""

from __future__ import annotations

from django.conf import settings

from .engine.llm import LLMSettings
from .engine.types import EngineSettings


def engine_settings() -> EngineSettings:
    s = settings.STELLO
    return EngineSettings(
        max_tool_rounds=s["MAX_TOOL_ROUNDS"],
        max_forks_per_turn=s["MAX_FORKS_PER_TURN"],
        max_parallel_tools=s["MAX_PARALLEL_TOOLS"],
        fork_strategy=s["FORK_STRATEGY"],
        consolidate_every_n_turns=s["CONSOLIDATE_EVERY_N_TURNS"],
        integrate_after_consolidate=s["INTEGRATE_AFTER_CONSOLIDATE"],
        consolidate_on_leave=s["CONSOLIDATE_ON_LEAVE"],
        consolidate_on_archive=s["CONSOLIDATE_ON_ARCHIVE"],
        memory_language=s["MEMORY_LANGUAGE"],
    )


def llm_settings() -> LLMSettings:
    return LLMSettings(**settings.STELLO["LLM"])


def memory_llm_settings() -> LLMSettings | None:
    memory = settings.STELLO["MEMORY_LLM"]
    return LLMSettings(**memory) if memory else None

"""Typed views of `settings.STELLO` for the engine and the runtime."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from .engine.llm import LLMSettings
from .engine.types import EngineSettings

if TYPE_CHECKING:
    from .mcp_tools import MCPServerSpec


def engine_settings() -> EngineSettings:
    s = settings.STELLO
    return EngineSettings(
        max_tool_rounds=s["MAX_TOOL_ROUNDS"],
        max_forks_per_turn=s["MAX_FORKS_PER_TURN"],
        max_parallel_tools=s["MAX_PARALLEL_TOOLS"],
        approval_timeout_seconds=s["APPROVAL_TIMEOUT_SECONDS"],
        core_max_value_bytes=s["CORE_MAX_VALUE_BYTES"],
        core_max_total_bytes=s["CORE_MAX_TOTAL_BYTES"],
        core_in_prompt=s["CORE_IN_PROMPT"],
        core_tools=s["CORE_TOOLS"],
        session_identity=s["SESSION_IDENTITY"],
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


_LLM_KEYS = ("provider", "model", "base_url", "api_key", "max_context_tokens",
             "max_output_tokens", "timeout_seconds", "max_retries", "script_path")


def llm_profiles() -> dict[str, LLMSettings]:
    """STELLO_LLM_PROFILES: name -> LLM settings (the STELLO_LLM_* names in lower case, without
    the prefix); a profile of the main LLM's provider starts from the main LLM's settings."""
    main = settings.STELLO["LLM"]
    profiles = {}
    for name, raw in settings.STELLO.get("LLM_PROFILES", {}).items():
        where = f"STELLO_LLM_PROFILES[{name!r}]"
        if not isinstance(raw, dict):
            raise ImproperlyConfigured(f"{where} must be an object")
        unknown = sorted(set(raw) - set(_LLM_KEYS))
        if unknown:
            raise ImproperlyConfigured(f"{where}: unknown key {unknown[0]!r} "
                                       f"(expected: {', '.join(_LLM_KEYS)})")
        provider = raw.get("provider", main["provider"])
        base = dict(main) if provider == main["provider"] else {
            k: main[k] for k in ("max_context_tokens", "max_output_tokens", "timeout_seconds",
                                 "max_retries")}
        try:
            profiles[name] = LLMSettings(**{**base, **raw, "provider": provider})
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(f"{where}: {exc}") from exc
    return profiles


def llm_profile_names() -> set[str]:
    return set(settings.STELLO.get("LLM_PROFILES", {}))


def mcp_servers() -> dict[str, MCPServerSpec]:
    """STELLO_MCP_SERVERS checked (ImproperlyConfigured naming the entry otherwise)."""
    from .mcp_tools import parse_servers

    stello = settings.STELLO
    try:
        return parse_servers(stello.get("MCP_SERVERS", {}),
                             timeout_seconds=stello["MCP_TIMEOUT_SECONDS"])
    except ValueError as exc:
        raise ImproperlyConfigured(str(exc)) from exc


def mcp_server_names() -> set[str]:
    return set(settings.STELLO.get("MCP_SERVERS", {}))

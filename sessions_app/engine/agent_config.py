"""Agent settings of a space (its `config`) and of a session (its frozen `session_config`).

Both are JSON objects; the keys below are the ones the engine uses, any other key is left alone
(a space's config was free-form before, and stays so for clients' own data):

- ``model``: the model name sent to the provider;
- ``provider``: a named LLM profile of the server (``STELLO_LLM_PROFILES``);
- ``temperature``: a number from 0 to 2;
- ``maxOutputTokens``: a positive integer;
- ``tools``: the names of the tools the LLM may see (built-ins included), or null for all;
- ``skills``: the names of the skills the LLM may see, or null for all;
- ``approveTools``: the names of the tools whose calls a human must approve first (``"*"``:
  every tool), or null for none (engine/approval.py);
- ``mcpServers`` (space only): the names of the server's MCP servers this space uses;
- ``ifBusy`` (space only): the space's default busy policy of a turn (``reject``, ``enqueue``,
  ``interrupt``); a turn's own ``ifBusy`` wins, STELLO_IF_BUSY applies without either.

A session's value wins over its space's, key by key. Invalid values are refused when written,
with the field named (`InvalidInput`), so a turn never meets a config it cannot use.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidInput
from .ports import LLM

SESSION_KEYS = ("model", "provider", "temperature", "maxOutputTokens", "tools", "skills",
                "approveTools")
SPACE_KEYS = (*SESSION_KEYS, "mcpServers", "ifBusy")
IF_BUSY = ("reject", "enqueue", "interrupt")
MAX_NAME_LENGTH = 200
MAX_NAMES = 500


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """The effective settings of one turn (None: the server's default)."""

    model: str | None = None
    provider: str | None = None
    temperature: float | None = None
    max_output_tokens: int | None = None
    tools: tuple[str, ...] | None = None
    skills: tuple[str, ...] | None = None
    approve_tools: tuple[str, ...] = ()

    @property
    def changes_the_llm(self) -> bool:
        return (self.model is not None or self.temperature is not None
                or self.max_output_tokens is not None)


def validate_config(
    raw: object, *, where: str, space: bool, profiles: Collection[str] | None = (),
    mcp_servers: Collection[str] = (),
) -> dict[str, Any]:
    """`raw` checked (InvalidInput naming `where.<key>` otherwise); returned as given.
    `profiles` None: the provider's name is checked later, by whoever knows the profiles."""
    if not isinstance(raw, Mapping):
        raise InvalidInput(f"{where} must be a JSON object")
    for key in SPACE_KEYS if space else SESSION_KEYS:
        if key in raw:
            _check(key, raw[key], f"{where}.{key}", profiles, mcp_servers)
    if not space:  # unknown keys are ignored, like the fork's other options
        return {k: v for k, v in raw.items() if k in SESSION_KEYS}
    return dict(raw)


def _check(key: str, value: Any, field: str, profiles: Collection[str] | None,
           mcp_servers: Collection[str]) -> None:
    if value is None:
        return
    if key == "model":
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME_LENGTH:
            raise InvalidInput(f"{field} must be a non-empty string of at most "
                               f"{MAX_NAME_LENGTH} characters")
    elif key == "provider":
        if not isinstance(value, str) or (profiles is not None and value not in profiles):
            known = ", ".join(sorted(profiles or ())) or "none are configured"
            raise InvalidInput(f"{field} must name an LLM profile of this server ({known})")
    elif key == "temperature":
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value) or not 0 <= value <= 2):
            raise InvalidInput(f"{field} must be a number from 0 to 2")
    elif key == "maxOutputTokens":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
            raise InvalidInput(f"{field} must be an integer from 1 to 1000000")
    elif key == "ifBusy":
        if value not in IF_BUSY:
            raise InvalidInput(f"{field} must be one of {', '.join(IF_BUSY)}")
    elif key in ("tools", "skills", "mcpServers", "approveTools"):
        if (not isinstance(value, list) or len(value) > MAX_NAMES
                or not all(isinstance(v, str) and 0 < len(v) <= MAX_NAME_LENGTH for v in value)):
            raise InvalidInput(f"{field} must be a list of names (strings) or null")
        if key == "mcpServers":
            unknown = [v for v in value if v not in mcp_servers]
            if unknown:
                known = ", ".join(sorted(mcp_servers)) or "none are configured"
                raise InvalidInput(f"{field}: unknown MCP server {unknown[0]!r} ({known})")


def space_if_busy(space: Mapping[str, Any]) -> str | None:
    """The space's default busy policy (None: not set, or not a valid one, e.g. written by hand
    in the admin)."""
    value = space.get("ifBusy")
    return value if value in IF_BUSY else None


def effective_config(space: Mapping[str, Any], session: Mapping[str, Any]) -> AgentConfig:
    """The session's settings over the space's, key by key (a stored value that is not of the
    expected shape, e.g. written by hand in the admin, counts as absent)."""

    def pick(key: str) -> Any:
        value = session.get(key)
        return value if value is not None else space.get(key)

    temperature = pick("temperature")
    max_tokens = pick("maxOutputTokens")
    return AgentConfig(
        model=_text(pick("model")),
        provider=_text(pick("provider")),
        temperature=float(temperature) if _number(temperature) else None,
        max_output_tokens=max_tokens if _integer(max_tokens) else None,
        tools=_names(pick("tools")),
        skills=_names(pick("skills")),
        approve_tools=_names(pick("approveTools")) or (),
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _number(value: Any) -> bool:
    return (not isinstance(value, bool) and isinstance(value, int | float)
            and math.isfinite(value) and 0 <= value <= 2)


def _integer(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value > 0


def _names(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def configured_llm(llm: LLM, config: AgentConfig) -> LLM:
    """`llm` with the config's model, temperature and output limit; the same object when the
    config changes none of them. The copy shares the original's HTTP clients."""
    if not config.changes_the_llm:
        return llm
    variant = copy.copy(llm)
    if config.model is not None:
        variant.model = config.model
    if config.temperature is not None:
        variant.temperature = config.temperature  # type: ignore[attr-defined]
    if config.max_output_tokens is not None:
        variant.max_output_tokens = config.max_output_tokens  # type: ignore[attr-defined]
    return variant

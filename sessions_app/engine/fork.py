"""Fork rules shared by REST, WebSocket and the built-in tool.

`parse_fork_options` validates the caller's raw options; `plan_child` decides what the child
gets from its source. The store places the child (flat or tree) and writes it in one go.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from .agent_config import SESSION_KEYS, validate_config
from .errors import InvalidInput, required_text, wrong_type
from .history import drop_incomplete_tool_groups
from .types import ForkOptions, Message, NewChild, TurnContext

CONTEXT_MODES = ("none", "inherit", "compress")


def parse_fork_options(raw: object) -> ForkOptions:
    """Validated ForkOptions from a JSON object; unknown keys are ignored."""
    if not isinstance(raw, dict):
        raise InvalidInput("fork options must be a JSON object")
    label = required_text(raw, "label", strip=True)
    context = raw.get("context", "none")
    if context is None:
        context = "none"
    if context not in CONTEXT_MODES:
        raise InvalidInput('context must be "none", "inherit" or "compress"')
    from_message = raw.get("fromMessage")
    if from_message is not None:
        if type(from_message) is not int or from_message < 1:
            raise wrong_type("fromMessage", "a message id (a positive integer) or null")
        if "context" in raw and context != "inherit":
            raise InvalidInput('fromMessage copies the history: context must be "inherit"')
        context = "inherit"
    return ForkOptions(
        label=label,
        scope=_optional_string(raw, "scope"),
        system_prompt=_optional_string(raw, "systemPrompt"),
        prompt=_optional_string(raw, "prompt"),
        context=context,
        skills=_optional_names(raw, "skills"),
        from_message=from_message,
        config=_optional_config(raw),
    )


def _optional_config(raw: dict[str, Any]) -> dict[str, Any] | None:
    value = raw.get("config")
    if value is None:
        return None
    # The provider profile's name is checked by the agent, which knows the profiles.
    return validate_config(value, where="config", space=False, profiles=None)


def _optional_string(raw: dict[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise wrong_type(key, "a string or null")
    return value


def _optional_names(raw: dict[str, Any], key: str) -> tuple[str, ...] | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise wrong_type(key, "a list of strings or null")
    return tuple(value)


def plan_child(
    source: TurnContext, options: ForkOptions, placement: Literal["flat", "tree"],
    parent_context: str | None = None,
) -> NewChild:
    """What a fork of `source` creates. Memory, insight, tags and metadata are not inherited.
    `parent_context` (context "compress"): the memory model's summary of the source's history,
    given to the child in its system prompt instead of the history itself."""
    system_prompt = (
        options.system_prompt if options.system_prompt is not None else source.system_prompt
    )
    if parent_context is not None:
        block = f"<parent_context>\n{parent_context}\n</parent_context>"
        system_prompt = f"{system_prompt}\n\n{block}" if system_prompt else block
    records: list[Message] = []
    if options.context == "inherit":
        records.extend(drop_incomplete_tool_groups(source.history))
    if options.prompt:
        records.append(Message("assistant", options.prompt))
    return NewChild(
        source_id=source.session.id,
        label=options.label,
        scope=options.scope,
        system_prompt=system_prompt,
        records=tuple(records),
        placement=placement,
        session_config=_frozen_config(source, options),
        from_message=options.from_message,
    )


def _frozen_config(source: TurnContext, options: ForkOptions) -> dict[str, Any] | None:
    """The child's `{systemPrompt?, skills?, <agent settings>}`: the fork's own choices over a
    standard source's. The main session's own config is never passed on: it configures the
    root agent, not its children (the original server made the same change)."""
    config: dict[str, Any] = {}
    if source.session.role == "standard":
        config.update((k, v) for k, v in source.config.items()
                      if k in SESSION_KEYS and k != "skills" and v is not None)
    if options.config:
        config.update((k, v) for k, v in options.config.items() if k != "skills")
        config = {k: v for k, v in config.items() if v is not None}  # null: back to the space's
        if options.skills is None and "skills" in options.config:
            options = replace(options, skills=_names_or_none(options.config["skills"]))
    if options.system_prompt is not None:
        config["systemPrompt"] = options.system_prompt
    skills = options.skills
    if skills is None and source.session.role == "standard":
        skills = source.skills
    if skills is not None:
        config["skills"] = list(skills)
    return config or None


def _names_or_none(value: Any) -> tuple[str, ...] | None:
    return tuple(value) if isinstance(value, list) else None

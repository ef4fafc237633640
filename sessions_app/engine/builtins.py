"""The built-in tools: `stello_create_session` (always) and `activate_skill` (only
when the session can see at least one skill). They come before user tools; a user tool with a
built-in's name is dropped.

The toolbox is built per turn, so `stello_create_session` counts the sessions it created in
that turn: past `max_forks` (STELLO_MAX_FORKS_PER_TURN) a call creates nothing and its result
tells the LLM the limit, so a looping model cannot fill the tree."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from .fork import parse_fork_options
from .skills import Skill
from .tools import Tool, ToolBox, ToolContext
from .types import ForkOptions, SessionMeta

CREATE_SESSION = "stello_create_session"
ACTIVATE_SKILL = "activate_skill"

# Forks a child from the current session (the caller already holds that session's lock).
ForkFromCurrent = Callable[[ForkOptions], Awaitable[SessionMeta]]

CREATE_SESSION_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "description": "Display name of the new child session."},
        "systemPrompt": {
            "type": "string",
            "description": "The child's role and instructions. Inherited from this session "
            "when omitted.",
        },
        "prompt": {
            "type": "string",
            "description": "An opening assistant message the child session starts with.",
        },
        "context": {
            "type": "string",
            "enum": ["none", "inherit"],
            "description": '"none" (default) starts with an empty history; "inherit" copies '
            "this session's conversation into the child.",
        },
    },
    "required": ["label"],
}

ACTIVATE_SKILL_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string", "description": "The name of the skill to load."}},
    "required": ["name"],
}


class ForkLimitReached(Exception):
    """A `stello_create_session` call over the per-turn cap (its text goes to the LLM)."""

    def __init__(self, max_forks: int) -> None:
        super().__init__(
            f"Not created: at most {max_forks} sessions may be created per turn, and this "
            "turn has reached that limit. Continue without creating more sessions.")


def create_session_tool(fork_from_current: ForkFromCurrent, *, max_forks: int) -> Tool:
    created = 0
    # The calls of a round run concurrently; forks of this session go one at a time, so the
    # count is exact and the children are placed in call order.
    one_at_a_time = asyncio.Lock()

    async def create_session(args: dict[str, Any], context: ToolContext) -> dict[str, str]:
        nonlocal created
        # The model may not choose its children's agent settings (it could widen its own
        # tool allowlist that way); they inherit this session's.
        options = parse_fork_options({k: v for k, v in args.items() if k != "config"})
        if options.context == "compress":
            raise ValueError('context "compress" is not available to this tool; use "none" '
                             'or "inherit"')
        async with one_at_a_time:
            if created >= max_forks:
                raise ForkLimitReached(max_forks)
            child = await fork_from_current(options)
            created += 1
        return {"sessionId": child.id, "label": child.label}

    return Tool(
        name=CREATE_SESSION,
        description="Create a new child session (a separate conversation branch) from this "
        "session, for a sub-task or a topic that deserves its own thread. Returns the new "
        "session's id and label.",
        input_schema=CREATE_SESSION_SCHEMA,
        fn=create_session,
    )


def activate_skill_tool(skills: Mapping[str, Skill]) -> Tool:
    async def activate_skill(args: dict[str, Any], context: ToolContext) -> str:
        name = args.get("name")
        skill = skills.get(name) if isinstance(name, str) else None
        if skill is None:
            raise LookupError(f'Skill "{name}" not found')
        return skill.content

    listing = "\n".join(f"- **{s.name}**: {s.description}" for s in skills.values())
    return Tool(
        name=ACTIVATE_SKILL,
        description="Load the specialized instructions of a skill when the task matches it."
        f"\n\nAvailable Skills:\n{listing}",
        input_schema=ACTIVATE_SKILL_SCHEMA,
        fn=activate_skill,
    )


def turn_toolbox(
    *,
    fork_from_current: ForkFromCurrent,
    visible_skills: Mapping[str, Skill],
    user_tools: Sequence[Tool],
    max_forks: int,
    max_parallel: int = 8,
    allowed: Sequence[str] | None = None,
) -> ToolBox:
    """The tools of one turn: built-ins first, then user tools (built-in names win); only
    those named in `allowed` when it is given (the space's or session's tool allowlist)."""
    builtins = [create_session_tool(fork_from_current, max_forks=max_forks)]
    if visible_skills:
        builtins.append(activate_skill_tool(visible_skills))
    tools = [*builtins, *user_tools]
    if allowed is not None:
        tools = [t for t in tools if t.name in allowed]
    return ToolBox.of(tools, max_parallel=max_parallel)

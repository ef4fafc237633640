"""Tools: decorator, loading by dotted path, the runner, tool message content, built-ins."""

from __future__ import annotations

import json
import threading

import pytest

from sessions_app.engine.builtins import ACTIVATE_SKILL, CREATE_SESSION
from sessions_app.engine.skills import Skill
from sessions_app.engine.tools import Tool, ToolBox, ToolContext, ToolResult, load_tools, tool
from sessions_app.engine.types import ForkOptions, Message, ToolCall

from .fakes import ScriptedLLM, call, make_agent, reply

CTX = ToolContext(space_id="space-1", session_id="s1")


@tool(
    name="echo",
    description="echoes its text",
    input_schema={"type": "object", "properties": {"text": {"type": "string"}}},
)
def echo(args: dict, context: ToolContext) -> dict:
    return {"text": args.get("text"), "thread": threading.current_thread().name}


@tool(name="where", description="async tool")
async def where(args: dict, context: ToolContext) -> str:
    return f"{context.space_id}/{context.session_id}"


not_a_tool = "just a string"

SKILLS = {
    "pdf": Skill("pdf", "Work with PDF files", "PDF INSTRUCTIONS"),
    "sql": Skill("sql", "Write SQL", "SQL INSTRUCTIONS"),
}


def test_the_decorator_makes_a_tool() -> None:
    assert isinstance(echo, Tool)
    assert echo.name == "echo"
    assert echo.spec().input_schema["properties"] == {"text": {"type": "string"}}
    assert where.input_schema == {"type": "object", "properties": {}}


def test_load_tools_by_dotted_path() -> None:
    loaded = load_tools(["tests.engine.test_tools.echo", "tests.engine.test_tools:where"])
    assert loaded == [echo, where]


@pytest.mark.parametrize(
    "path",
    [
        "tests.engine.test_tools.not_a_tool",
        "tests.engine.no_such_module.x",
        "nodots",
        "x.y.missing",
    ],
)
def test_load_tools_rejects_a_bad_path_naming_it(path: str) -> None:
    with pytest.raises(ValueError, match=path):
        load_tools([path])


async def test_sync_tools_run_in_a_thread_and_async_tools_are_awaited() -> None:
    box = ToolBox.of([echo, where])
    results = await box.run_all(
        [ToolCall("1", "echo", {"text": "hi"}), ToolCall("2", "where", {})], CTX
    )
    assert results[0].success and results[0].data["text"] == "hi"
    assert results[0].data["thread"] != threading.current_thread().name
    assert results[1] == ToolResult("2", "where", True, data="space-1/s1")


async def test_failures_and_unknown_tools_become_error_results() -> None:
    def boom(args: dict, context: ToolContext) -> None:
        raise ValueError("bad value")

    box = ToolBox.of([Tool("boom", "fails", {}, boom)])
    failed, unknown = await box.run_all(
        [ToolCall("a", "boom", {}), ToolCall("b", "ghost", {})], CTX
    )
    assert failed == ToolResult("a", "boom", False, error="bad value")
    assert unknown == ToolResult("b", "ghost", False, error="Unknown tool: ghost")


@pytest.mark.parametrize(
    ("result", "content"),
    [
        (ToolResult("i", "t", False, data="ignored", error="it broke"), "it broke"),
        (ToolResult("i", "t", True, data="plain text"), "plain text"),
        (ToolResult("i", "t", True, data=None), ""),
        (ToolResult("i", "t", True, data={"a": [1, "é"]}), '{"a":[1,"é"]}'),
        (ToolResult("i", "t", True, data=7), "7"),
    ],
)
def test_tool_message_content(result: ToolResult, content: str) -> None:
    assert result.to_message() == Message("tool", content, tool_call_id="i")


async def test_create_session_tool_forks_the_current_session() -> None:
    create = call(CREATE_SESSION, "cs1", label="Research", systemPrompt="You research.")
    h = make_agent(llm=ScriptedLLM(reply(None, create), "Created it."))
    parent = await h.child("Parent", systemPrompt="Parent prompt")

    await h.agent.turn(parent, "make a child")

    child = next(s for s in h.store.sessions.values() if s.meta.label == "Research")
    assert child.meta.source_session_id == parent
    assert child.meta.parent_id == h.root_id  # flat placement
    assert child.slots["system_prompt"] == "You research."
    assert child.records == []
    tool_message = Message(
        "tool",
        json.dumps({"sessionId": child.meta.id, "label": "Research"}, separators=(",", ":")),
        tool_call_id="cs1",
    )
    assert h.store.records(parent) == [
        Message("user", "make a child"),
        Message("assistant", "", tool_calls=(create,)),
        tool_message,
        Message("assistant", "Created it."),
    ]


async def test_create_session_creates_at_most_the_per_turn_cap_across_rounds() -> None:
    first = [call(CREATE_SESSION, f"a{n}", label=f"A{n}") for n in range(2)]
    second = [call(CREATE_SESSION, f"b{n}", label=f"B{n}") for n in range(2)]
    h = make_agent(llm=ScriptedLLM(reply(None, *first), reply(None, *second), "done",
                                   reply(None, call(CREATE_SESSION, "c0", label="C0")), "ok"),
                   max_forks_per_turn=3)
    parent = await h.child("Parent")

    result = await h.agent.turn(parent, "make many")

    assert result.tool_calls_executed == 4
    labels = sorted(s.meta.label for s in h.store.sessions.values() if s.meta.role == "standard")
    assert labels == ["A0", "A1", "B0", "Parent"]
    refused = h.store.records(parent)[-2]
    assert refused.tool_call_id == "b1"
    assert refused.content == ("Not created: at most 3 sessions may be created per turn, and "
                               "this turn has reached that limit. Continue without creating "
                               "more sessions.")
    # The cap is per turn: the next turn may create again.
    await h.agent.turn(parent, "one more")
    assert any(s.meta.label == "C0" for s in h.store.sessions.values())


async def test_a_zero_cap_disables_creating_sessions_from_tools() -> None:
    h = make_agent(llm=ScriptedLLM(reply(None, call(CREATE_SESSION, "x", label="X")), "ok"),
                   max_forks_per_turn=0)
    await h.agent.turn(h.root_id, "try")
    assert len(h.store.sessions) == 1
    assert h.store.records(h.root_id)[2].content.startswith("Not created: at most 0 sessions")


async def test_create_session_with_inherit_copies_only_complete_history() -> None:
    create = call(
        CREATE_SESSION, "cs1", label="Copy", context="inherit", prompt="Hi, I am the copy."
    )
    h = make_agent(llm=ScriptedLLM("earlier", reply(None, create), "ok"))
    parent = await h.child("Parent")
    await h.agent.turn(parent, "first")

    await h.agent.turn(parent, "fork me")

    child = next(s for s in h.store.sessions.values() if s.meta.label == "Copy")
    # The current turn's tool-call message has no result yet when the tool runs: trimmed.
    assert child.records == [
        Message("user", "first"),
        Message("assistant", "earlier"),
        Message("user", "fork me"),
        Message("assistant", "Hi, I am the copy."),
    ]


async def test_create_session_errors_go_back_to_the_llm() -> None:
    bad = call(CREATE_SESSION, "cs1", systemPrompt="no label")
    h = make_agent(llm=ScriptedLLM(reply(None, bad), "I could not."))

    result = await h.agent.turn(h.root_id, "go")

    assert result.final_content == "I could not."
    assert h.llm.calls[1].messages[-1] == Message("tool", "label is required", tool_call_id="cs1")
    assert len(h.store.sessions) == 1


async def test_activate_skill_is_offered_only_when_skills_are_visible() -> None:
    h = make_agent(llm=ScriptedLLM("a"))
    await h.agent.turn(h.root_id, "hi")
    assert h.llm.calls[0].tool_names == [CREATE_SESSION]

    h = make_agent(llm=ScriptedLLM("a"), skills=SKILLS)
    await h.agent.turn(h.root_id, "hi")
    assert h.llm.calls[0].tool_names == [CREATE_SESSION, ACTIVATE_SKILL]
    description = h.llm.calls[0].tools[1].description
    assert "Available Skills" in description
    assert "- **pdf**: Work with PDF files" in description
    assert "- **sql**: Write SQL" in description


async def test_the_session_whitelist_limits_the_skills() -> None:
    h = make_agent(llm=ScriptedLLM("a", "b"), skills=SKILLS)
    only_sql = await h.agent.fork(h.root_id, ForkOptions(label="sql", skills=("sql",)))
    no_skills = await h.agent.fork(h.root_id, ForkOptions(label="none", skills=()))

    await h.agent.turn(only_sql.id, "hi")
    await h.agent.turn(no_skills.id, "hi")

    description = h.llm.calls[0].tools[1].description
    assert "**sql**" in description and "**pdf**" not in description
    assert h.llm.calls[1].tool_names == [CREATE_SESSION]


async def test_activate_skill_returns_the_content_or_a_not_found_error() -> None:
    h = make_agent(
        skills=SKILLS,
        llm=ScriptedLLM(
            reply(
                None,
                call(ACTIVATE_SKILL, "a1", name="pdf"),
                call(ACTIVATE_SKILL, "a2", name="nope"),
            ),
            "ok",
        ),
    )

    await h.agent.turn(h.root_id, "use skills")

    assert list(h.llm.calls[1].messages[-2:]) == [
        Message("tool", "PDF INSTRUCTIONS", tool_call_id="a1"),
        Message("tool", 'Skill "nope" not found', tool_call_id="a2"),
    ]

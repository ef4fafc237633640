"""Message edits in the engine, over the in-memory fakes: which records a delete takes, what
the re-run turn sees and replaces, and what a branch from a message copies."""

from __future__ import annotations

import pytest

from sessions_app.engine.editing import (
    MessageNotEditable,
    MessageNotFound,
    NothingToRegenerate,
    delete_message,
    rerun_last_turn,
    tool_group,
)
from sessions_app.engine.errors import InvalidInput, LLMError
from sessions_app.engine.fork import parse_fork_options
from sessions_app.engine.types import Message, ToolCall

from .fakes import ScriptedLLM, make_agent

CALLS = (ToolCall("c1", "a", {}), ToolCall("c2", "b", {}))
STRETCH = [
    (10, Message("user", "u")),
    (11, Message("assistant", "", tool_calls=CALLS)),
    (12, Message("tool", "r1", tool_call_id="c1")),
    (13, Message("tool", "r2", tool_call_id="c2")),
    (14, Message("assistant", "done")),
]


@pytest.mark.parametrize(("target", "group"), [
    (10, [10]), (11, [11, 12, 13]), (12, [11, 12, 13]), (13, [11, 12, 13]), (14, [14]),
])
def test_a_tool_call_group_is_taken_whole(target, group) -> None:
    assert tool_group(STRETCH, target) == group


def test_an_orphan_tool_message_goes_alone() -> None:
    orphan = [(1, Message("user", "u")), (2, Message("tool", "r", tool_call_id="x"))]
    assert tool_group(orphan, 2) == [2]


def history(h, session_id: str) -> list[str]:
    return [m.content for m in h.store.records(session_id)]


async def test_regenerate_runs_on_the_history_before_the_last_turn() -> None:
    h = make_agent(llm=ScriptedLLM("one", "two", "two again", "three"))
    await h.agent.turn(h.root_id, "q1")
    await h.agent.turn(h.root_id, "q2")
    result = await rerun_last_turn(h.agent, h.root_id)
    assert result.final_content == "two again"
    assert [m.content for m in h.llm.calls[-1].messages if m.role != "system"] == [
        "q1", "one", "q2"]
    assert history(h, h.root_id) == ["q1", "one", "q2", "two again"]
    assert h.store.meta(h.root_id).turn_count == 2
    await h.agent.turn(h.root_id, "q3")  # the agent's cached history follows the rewrite
    assert [m.content for m in h.llm.calls[-1].messages if m.role != "system"] == [
        "q1", "one", "q2", "two again", "q3"]


async def test_edit_replaces_the_last_user_message() -> None:
    h = make_agent(llm=ScriptedLLM("one", "two", "fixed"))
    await h.agent.turn(h.root_id, "q1")
    await h.agent.turn(h.root_id, "q2 typo")
    last_user = h.store.sessions[h.root_id].record_ids[2]
    await rerun_last_turn(h.agent, h.root_id, text="q2", message_id=last_user)
    assert history(h, h.root_id) == ["q1", "one", "q2", "fixed"]
    first_user = h.store.sessions[h.root_id].record_ids[0]
    with pytest.raises(MessageNotEditable):
        await rerun_last_turn(h.agent, h.root_id, text="x", message_id=first_user)
    with pytest.raises(MessageNotFound):
        await rerun_last_turn(h.agent, h.root_id, text="x", message_id=9999)


async def test_a_failed_first_call_leaves_the_session_as_it_was() -> None:
    h = make_agent(llm=ScriptedLLM("one"))
    await h.agent.turn(h.root_id, "q1")
    before = (history(h, h.root_id), h.store.meta(h.root_id).turn_count)
    h.llm.fail_next()
    with pytest.raises(LLMError):
        await rerun_last_turn(h.agent, h.root_id)
    assert (history(h, h.root_id), h.store.meta(h.root_id).turn_count) == before


async def test_nothing_to_regenerate_without_a_turn() -> None:
    h = make_agent()
    with pytest.raises(NothingToRegenerate):
        await rerun_last_turn(h.agent, h.root_id)


async def test_delete_keeps_later_messages_and_the_turn_count() -> None:
    h = make_agent(llm=ScriptedLLM("one", "two"))
    await h.agent.turn(h.root_id, "q1")
    await h.agent.turn(h.root_id, "q2")
    ids = list(h.store.sessions[h.root_id].record_ids)
    assert await delete_message(h.agent, h.root_id, ids[1]) == [ids[1]]
    assert history(h, h.root_id) == ["q1", "q2", "two"]
    assert h.store.meta(h.root_id).turn_count == 2
    with pytest.raises(MessageNotFound):
        await delete_message(h.agent, h.root_id, ids[1])


async def test_a_branch_copies_the_history_up_to_the_message() -> None:
    h = make_agent(llm=ScriptedLLM("one", "two"))
    await h.agent.turn(h.root_id, "q1")
    await h.agent.turn(h.root_id, "q2")
    ids = h.store.sessions[h.root_id].record_ids
    meta = await h.agent.fork(h.root_id, parse_fork_options(
        {"label": "B", "fromMessage": ids[1]}))
    assert history(h, meta.id) == ["q1", "one"]
    assert meta.metadata["sourceMessageId"] == ids[1]
    with pytest.raises(InvalidInput):
        await h.agent.fork(h.root_id, parse_fork_options({"label": "C", "fromMessage": 9999}))

"""SpaceAgent: archive, consolidate/integrate with prompts resolved at call time, background
triggers, bootstrap/leave, locking and statelessness."""

from __future__ import annotations

import asyncio
import json

import pytest

from sessions_app.engine.errors import (
    InvalidInput,
    MainSessionNotArchivable,
    SessionArchived,
    SessionBusy,
    SessionNotFound,
)
from sessions_app.engine.memory import default_consolidate_prompt, default_integrate_prompt
from sessions_app.engine.types import ForkOptions, Insight, IntegrationResult, Message, SpacePrompts

from .fakes import InMemoryStore, ScriptedLLM, make_agent


async def test_turn_and_stream_on_an_archived_session_are_refused() -> None:
    h = make_agent(llm=ScriptedLLM("a"))
    child = await h.child()
    await h.agent.turn(child, "hi")

    meta = await h.agent.archive(child)

    assert meta.status == "archived"
    with pytest.raises(SessionArchived) as raised:
        await h.agent.turn(child, "again")
    assert raised.value.session_id == child
    with pytest.raises(SessionArchived):
        await anext(h.agent.stream(child, "again"))
    assert len(h.llm.calls) == 1


async def test_a_turn_on_an_unknown_session_is_not_found() -> None:
    h = make_agent()
    with pytest.raises(SessionNotFound):
        await h.agent.turn("missing", "hi")


async def test_archive_status_is_read_from_the_store_every_time() -> None:
    h = make_agent(llm=ScriptedLLM("a"))
    child = await h.child()
    await h.agent.turn(child, "warm up")
    await h.store.archive(child)  # archived by another process, behind the agent's back

    with pytest.raises(SessionArchived):
        await h.agent.turn(child, "again")


async def test_forking_from_an_archived_session_is_allowed() -> None:
    h = make_agent()
    child = await h.child()
    await h.agent.archive(child)

    grandchild = await h.agent.fork(child, ForkOptions(label="After"))

    assert grandchild.status == "active"
    assert grandchild.source_session_id == child


async def test_archive_submits_a_final_consolidation_of_a_standard_session() -> None:
    h = make_agent(
        llm=ScriptedLLM("a"), memory_llm=ScriptedLLM("final L2"), integrate_after_consolidate=False
    )
    child = await h.child()
    await h.agent.turn(child, "hi")

    await h.agent.archive(child)
    assert h.jobs.pending_keys == [f"consolidate:{child}"]
    await h.jobs.run_all()

    assert h.store.slot(child, "memory") == "final L2"


async def test_archive_without_consolidation_setting_or_for_main_submits_nothing() -> None:
    h = make_agent(consolidate_on_archive=False)
    child = await h.child()
    await h.agent.archive(child)
    assert h.jobs.submitted == []

    h = make_agent()
    with pytest.raises(MainSessionNotArchivable):
        await h.agent.archive(h.root_id)
    assert h.store.meta(h.root_id).status == "active"
    assert h.jobs.submitted == []


async def test_unarchive_makes_the_session_usable_again() -> None:
    h = make_agent(llm=ScriptedLLM("welcome back"))
    child = await h.child()
    await h.agent.archive(child)
    meta = await h.agent.unarchive(child)
    assert meta.status == "active"
    assert (await h.agent.turn(child, "back")).final_content == "welcome back"


async def test_background_jobs_on_archived_sessions_end_quietly() -> None:
    h = make_agent(llm=ScriptedLLM("1", "2"), memory_llm=ScriptedLLM("child L2"),
                   consolidate_every_n_turns=1)
    child = await h.child()
    await h.agent.turn(child, "one")
    h.store._update(h.root_id, status="archived")  # archived by an older release
    await h.store.archive(child)  # archived behind the job's back: it no longer consolidates
    await h.jobs.run_all()
    assert h.store.slot(child, "memory") is None
    assert h.jobs.errors == []

    await h.store.unarchive(child)
    await h.agent.turn(child, "two")
    await h.jobs.run_all()  # consolidates, then skips integration of the archived main
    assert h.store.slot(child, "memory") == "child L2"
    assert h.jobs.errors == []
    assert h.jobs.submitted[-1] == "integrate"


async def test_consolidate_writes_the_memory_from_the_whole_history() -> None:
    h = make_agent(llm=ScriptedLLM("echo: a1"), memory_llm=ScriptedLLM("<think>x</think> new L2"))
    child = await h.child()
    await h.agent.turn(child, "a1")
    h.store.set_slot(child, "memory", "old L2")

    assert await h.agent.consolidate(child) == "new L2"

    assert h.store.slot(child, "memory") == "new L2"
    sent = h.memory_llm.calls[0].messages
    assert sent[0] == Message("system", default_consolidate_prompt("English"))
    assert sent[1].content == (
        "Current summary:\nold L2\n\nConversation:\nuser: a1\nassistant: echo: a1"
    )
    assert h.memory_llm.calls[0].tools == ()


async def test_consolidate_prompt_resolves_at_call_time() -> None:
    store = InMemoryStore()
    h = make_agent(store=store, memory_llm=ScriptedLLM("m1", "m2", "m3"))
    child = await h.child()
    store.add_records(child, Message("user", "q"), Message("assistant", "a"))

    await h.agent.consolidate(child)
    store.prompts = SpacePrompts(None, "Space consolidate prompt", None)
    store.add_records(child, Message("user", "q2"))  # something new to consolidate
    await h.agent.consolidate(child)
    store.set_slot(child, "consolidate_prompt", "Session consolidate prompt")
    store.add_records(child, Message("user", "q3"))
    await h.agent.consolidate(child)

    assert [c.messages[0].content for c in h.memory_llm.calls] == [
        default_consolidate_prompt("English"),
        "Space consolidate prompt",
        "Session consolidate prompt",
    ]


async def test_consolidate_refuses_the_main_session_and_archived_sessions() -> None:
    h = make_agent(memory_llm=ScriptedLLM("allowed"))
    child = await h.child()
    h.store.add_records(child, Message("user", "q"), Message("assistant", "a"))
    await h.agent.archive(child)

    with pytest.raises(InvalidInput, match="integrates"):
        await h.agent.consolidate(h.root_id)
    with pytest.raises(SessionArchived):
        await h.agent.consolidate(child)
    assert await h.agent.consolidate(child, allow_archived=True) == "allowed"


async def test_integrate_sees_archived_children_but_gives_insights_to_active_ones_only() -> None:
    h = make_agent(memory_llm=ScriptedLLM())
    a = await h.child("A")
    b = await h.child("B")
    archived = await h.child("Old")
    h.store.set_slot(a, "memory", "A did X")
    h.store.set_slot(b, "memory", "B did Y")
    h.store.set_slot(archived, "memory", "old stuff")
    await h.agent.archive(archived)
    h.store.set_slot(h.root_id, "memory", "previous synthesis")
    answer = {
        "synthesis": "X and Y",
        "insights": [
            {"sessionId": a, "content": "Consider Y"},
            {"sessionId": archived, "content": "dropped"},
            {"sessionId": "invented", "content": "dropped"},
        ],
    }
    h.memory_llm.push(json.dumps(answer))

    result = await h.agent.integrate()

    assert result == IntegrationResult("X and Y", (Insight(a, "Consider Y"),))
    assert h.store.slot(h.root_id, "memory") == "X and Y"
    assert h.store.slot(a, "insight") == "Consider Y"
    assert h.store.slot(b, "insight") is None
    assert h.store.slot(archived, "insight") is None
    user_text = h.memory_llm.calls[0].messages[1].content
    assert user_text.startswith(
        "Current synthesis:\nprevious synthesis\n\nChild session summaries:\n"
    )
    assert f"- [sessionId={a}] A: A did X" in user_text
    # The archived child's final memory reaches the synthesis, marked, without an insight.
    assert f"- [sessionId={archived}] Old (archived): old stuff" in user_text


async def test_integrate_prompt_resolves_at_call_time() -> None:
    store = InMemoryStore()
    h = make_agent(store=store, memory_llm=ScriptedLLM("s1", "s2", "s3"))

    await h.agent.integrate()
    store.prompts = SpacePrompts(None, None, "Space integrate prompt")
    await h.agent.integrate()
    store.set_slot(store.root_id, "integrate_prompt", "Root integrate prompt")
    await h.agent.integrate()

    assert [c.messages[0].content for c in h.memory_llm.calls] == [
        default_integrate_prompt("English"),
        "Space integrate prompt",
        "Root integrate prompt",
    ]


async def test_integrate_refuses_an_archived_main_session() -> None:
    h = make_agent()
    h.store._update(h.root_id, status="archived")  # archived by an older release
    with pytest.raises(SessionArchived):
        await h.agent.integrate()


async def test_every_nth_turn_submits_consolidation_then_integration() -> None:
    h = make_agent(
        llm=ScriptedLLM("1", "2", "3", "4"),
        memory_llm=ScriptedLLM("child L2", '{"synthesis": "S", "insights": []}'),
        consolidate_every_n_turns=2,
    )
    child = await h.child()

    await h.agent.turn(child, "one")
    assert h.jobs.submitted == []
    await h.agent.turn(child, "two")
    assert h.jobs.pending_keys == [f"consolidate:{child}"]

    ran = await h.jobs.run_all()

    assert ran == [f"consolidate:{child}", "integrate"]
    assert h.store.slot(child, "memory") == "child L2"
    assert h.store.slot(h.root_id, "memory") == "S"


async def test_each_trigger_is_submitted_coalescing_is_left_to_the_runner() -> None:
    h = make_agent(llm=ScriptedLLM("1", "2"), consolidate_every_n_turns=1)
    child = await h.child()

    await h.agent.turn(child, "one")
    await h.agent.turn(child, "two")

    assert h.jobs.pending_keys == [f"consolidate:{child}", f"consolidate:{child}"]


async def test_no_triggers_for_the_main_session_or_when_disabled() -> None:
    h = make_agent(llm=ScriptedLLM("1"), consolidate_every_n_turns=1)
    await h.agent.turn(h.root_id, "one")
    assert h.jobs.submitted == []

    h = make_agent(llm=ScriptedLLM("1"), consolidate_every_n_turns=0)
    child = await h.child()
    await h.agent.turn(child, "one")
    assert h.jobs.submitted == []


async def test_no_integration_after_consolidation_when_disabled() -> None:
    h = make_agent(
        llm=ScriptedLLM("1"),
        memory_llm=ScriptedLLM("L2"),
        consolidate_every_n_turns=1,
        integrate_after_consolidate=False,
    )
    child = await h.child()
    await h.agent.turn(child, "one")

    assert await h.jobs.run_all() == [f"consolidate:{child}"]


async def test_a_failing_background_consolidation_never_touches_the_turn() -> None:
    h = make_agent(llm=ScriptedLLM("answer"), consolidate_every_n_turns=1)
    child = await h.child()
    h.memory_llm.fail_next("memory model down")

    result = await h.agent.turn(child, "one")

    assert result.final_content == "answer"
    await h.jobs.run_all(expect_errors=True)
    assert [key for key, _ in h.jobs.errors] == [f"consolidate:{child}"]
    assert h.store.slot(child, "memory") is None


async def test_leave_consolidates_an_active_standard_session_when_configured() -> None:
    h = make_agent(consolidate_on_leave=True)
    child = await h.child()
    await h.agent.leave(h.root_id)
    await h.agent.leave(child)
    assert h.jobs.submitted == [f"consolidate:{child}"]

    h = make_agent()  # consolidate_on_leave is off by default
    child = await h.child()
    await h.agent.leave(child)
    assert h.jobs.submitted == []


async def test_bootstrap_gives_ancestor_memories_nearest_first() -> None:
    h = make_agent(store=InMemoryStore(core={"user": "Ada"}), fork_strategy="tree")
    a = await h.child("A", scope="top")
    b = await h.child("B", source_id=a)
    h.store.set_slot(h.root_id, "memory", "root synthesis")
    h.store.set_slot(a, "memory", "A memory")
    h.store.set_slot(b, "memory", "B memory")

    boot = await h.agent.bootstrap(b)

    assert boot.memories == ("A memory", "root synthesis")
    assert boot.current_memory == "B memory"
    assert boot.core == {"user": "Ada"}
    assert boot.session.id == b
    assert (await h.agent.bootstrap(a)).scope == "top"


async def test_operations_on_one_session_are_serialised() -> None:
    h = make_agent(llm=ScriptedLLM("a"))
    h.locks.timeout = 0.01
    child = await h.child()

    async with h.locks.hold(child):
        with pytest.raises(SessionBusy):
            await h.agent.turn(child, "hi")
        with pytest.raises(SessionBusy):
            await h.agent.fork(child, ForkOptions(label="x"))
        # Another session is not blocked.
        await h.agent.turn(h.root_id, "hi")


async def test_two_turns_on_one_session_run_one_after_the_other() -> None:
    h = make_agent(llm=ScriptedLLM("first", "second"))
    child = await h.child()

    await asyncio.gather(h.agent.turn(child, "a"), h.agent.turn(child, "b"))

    assert [m.role for m in h.store.records(child)] == ["user", "assistant", "user", "assistant"]
    assert h.store.meta(child).turn_count == 2


async def test_a_rebuilt_agent_carries_on_from_the_store() -> None:
    h = make_agent(llm=ScriptedLLM("a"))
    child = await h.child()
    await h.agent.turn(child, "one")

    fresh = make_agent(store=h.store, llm=ScriptedLLM("b"))
    await fresh.agent.turn(child, "two")

    assert [m.content for m in fresh.llm.calls[0].messages] == ["one", "a", "two"]
    assert h.store.meta(child).turn_count == 2



async def test_consolidating_a_session_without_history_makes_no_llm_call() -> None:
    h = make_agent(memory_llm=ScriptedLLM("never used"))
    child = await h.child()
    h.store.set_slot(child, "memory", "kept as is")

    assert await h.agent.consolidate(child) == "kept as is"

    assert h.memory_llm.calls == []

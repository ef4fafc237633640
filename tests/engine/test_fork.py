"""Fork: option parsing, what the child inherits, placement flat/tree."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sessions_app.engine.errors import InvalidInput, SessionNotFound
from sessions_app.engine.fork import parse_fork_options, plan_child
from sessions_app.engine.types import ForkOptions, Message, SessionMeta, ToolCall, TurnContext

from .fakes import InMemoryStore, ScriptedLLM, make_agent


def test_parse_fork_options_reads_every_known_key_and_ignores_others() -> None:
    options = parse_fork_options(
        {
            "label": "Kid",
            "scope": "billing",
            "systemPrompt": "Be brief.",
            "prompt": "Hello!",
            "context": "inherit",
            "skills": ["pdf"],
            "surprise": 1,
        }
    )
    assert options == ForkOptions(
        label="Kid",
        scope="billing",
        system_prompt="Be brief.",
        prompt="Hello!",
        context="inherit",
        skills=("pdf",),
    )
    assert parse_fork_options({"label": "x"}) == ForkOptions(label="x")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (["label"], "must be a JSON object"),
        (None, "must be a JSON object"),
        ({}, "label is required"),
        ({"label": ""}, "label must not be empty"),
        ({"label": "   "}, "label must not be blank"),
        ({"label": 3}, "label must be a string"),
        ({"label": "x", "scope": 1}, "scope must be a string"),
        ({"label": "x", "systemPrompt": {}}, "systemPrompt must be a string"),
        ({"label": "x", "prompt": ["hi"]}, "prompt must be a string"),
        ({"label": "x", "context": "summary"}, "context must be"),
        ({"label": "x", "skills": "pdf"}, "skills must be a list of strings"),
    ],
)
def test_parse_fork_options_rejects_invalid_options(raw: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_fork_options(raw)


def source_context(role: str = "standard", **changes: object) -> TurnContext:
    now = datetime.now(UTC)
    meta = SessionMeta(
        id="src",
        space_id="sp",
        label="Source",
        role=role,
        status="active",
        scope=None,  # type: ignore[arg-type]
        metadata={"k": "v"},
        turn_count=3,
        created_at=now,
        updated_at=now,
        last_active_at=now,
    )
    base = {
        "session": meta,
        "system_prompt": "Source prompt",
        "insight": "source insight",
        "synthesis": None,
        "history": (Message("user", "q"), Message("assistant", "a")),
    }
    base.update(changes)
    return TurnContext(**base)  # type: ignore[arg-type]


def test_plan_child_inherits_the_system_prompt_unless_given() -> None:
    inherited = plan_child(source_context(), ForkOptions(label="c"), "flat")
    given = plan_child(source_context(), ForkOptions(label="c", system_prompt="Own"), "tree")

    assert inherited.system_prompt == "Source prompt"
    assert inherited.session_config is None
    assert inherited.records == ()
    assert given.system_prompt == "Own"
    assert given.session_config == {"systemPrompt": "Own"}
    assert (inherited.placement, given.placement) == ("flat", "tree")


def test_plan_child_inherit_trims_incomplete_groups_then_adds_the_opening() -> None:
    dangling = Message("assistant", "", tool_calls=(ToolCall("t", "x", {}),))
    ctx = source_context(history=(Message("user", "q"), Message("assistant", "a"), dangling))

    child = plan_child(ctx, ForkOptions(label="c", context="inherit", prompt="Opening"), "flat")

    assert child.records == (
        Message("user", "q"),
        Message("assistant", "a"),
        Message("assistant", "Opening"),
    )


def test_plan_child_carries_a_standard_sources_whitelist_not_the_mains() -> None:
    from_standard = plan_child(source_context(skills=("pdf",)), ForkOptions(label="c"), "flat")
    from_main = plan_child(source_context("main", skills=("pdf",)), ForkOptions(label="c"), "flat")
    overridden = plan_child(
        source_context(skills=("pdf",)), ForkOptions(label="c", skills=()), "flat"
    )

    assert from_standard.session_config == {"skills": ["pdf"]}
    assert from_main.session_config is None
    assert overridden.session_config == {"skills": []}


async def test_flat_fork_places_children_under_the_root_with_sibling_index() -> None:
    h = make_agent(store=InMemoryStore(system_prompt="Space prompt"))
    a = await h.agent.fork(h.root_id, ForkOptions(label="A", scope="area A"))
    b = await h.agent.fork(a.id, ForkOptions(label="B"))

    assert (a.parent_id, a.depth, a.index, a.source_session_id) == (h.root_id, 1, 0, h.root_id)
    assert (b.parent_id, b.depth, b.index, b.source_session_id) == (h.root_id, 1, 1, a.id)
    assert b.metadata == {"sourceSessionId": a.id}
    assert a.scope == "area A"
    assert h.store.meta(a.id).scope == "area A"
    # Inherited from the main session, and from A in turn.
    assert h.store.slot(a.id, "system_prompt") == "Space prompt"
    assert h.store.slot(b.id, "system_prompt") == "Space prompt"


async def test_tree_fork_places_the_child_under_its_source() -> None:
    h = make_agent(fork_strategy="tree")
    a = await h.agent.fork(h.root_id, ForkOptions(label="A"))
    b = await h.agent.fork(a.id, ForkOptions(label="B"))

    assert (b.parent_id, b.depth, b.index, b.source_session_id) == (a.id, 2, 0, a.id)


async def test_inherit_copies_history_but_not_memory_insight_or_metadata() -> None:
    h = make_agent(llm=ScriptedLLM("answer"))
    a = await h.child("A")
    await h.agent.turn(a, "question")
    h.store.set_slot(a, "memory", "A's L2")
    h.store.set_slot(a, "insight", "A's insight")

    b = await h.agent.fork(a, ForkOptions(label="B", context="inherit"))
    c = await h.agent.fork(a, ForkOptions(label="C"))

    assert h.store.records(b.id) == [Message("user", "question"), Message("assistant", "answer")]
    assert h.store.records(c.id) == []
    assert h.store.slot(b.id, "memory") is None
    assert h.store.slot(b.id, "insight") is None
    assert b.metadata == {"sourceSessionId": a}
    assert b.turn_count == 0


async def test_forking_an_unknown_session_is_not_found() -> None:
    h = make_agent()
    with pytest.raises(SessionNotFound):
        await h.agent.fork("missing", ForkOptions(label="x"))

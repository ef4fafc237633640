"""The history a session keeps between turns: the same prompts as a fresh read, at a cost that
does not grow with the history (a turn reads only the records it does not hold yet)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sessions_app.engine.compression import estimate_tokens
from sessions_app.engine.history import History, drop_incomplete_tool_groups
from sessions_app.engine.types import LockedRead, Message, Prefetched, ToolCall

from .fakes import AsyncioLocks, InMemoryStore, ScriptedLLM, make_agent

# -- History: incremental cleaning equals cleaning the whole ------------------------------------

_calls = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=2, unique=True)
_message = st.one_of(
    st.builds(lambda t: Message("user", t), st.text(max_size=5)),
    st.builds(lambda t: Message("assistant", t), st.text(max_size=5)),
    st.builds(lambda ids: Message("assistant", "", tool_calls=tuple(
        ToolCall(i, "tool", {}) for i in ids)), _calls),
    st.builds(lambda i: Message("tool", "result", tool_call_id=i), st.sampled_from("abcz")),
)


@settings(max_examples=300, deadline=None)
@given(messages=st.lists(_message, max_size=30), cuts=st.lists(st.integers(0, 30), max_size=5))
def test_history_kept_in_pieces_cleans_like_the_whole(messages: list[Message],
                                                      cuts: list[int]) -> None:
    history = History()
    start = 0
    for cut in sorted(cuts):
        history.extend(messages[start:cut])
        start = max(start, cut)
    history.extend(messages[start:])

    clean, tokens = history.clean()
    assert clean == drop_incomplete_tool_groups(messages)
    assert tokens == estimate_tokens(clean)
    assert history.count == len(messages)


# -- The agent's cache ---------------------------------------------------------------------------


class CountingStore(InMemoryStore):
    """Records what each `load_turn_context` asked for and how many records it returned."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.loads: list[tuple[int | None, int]] = []

    async def load_turn_context(self, session_id: str, *, history_after: int | None = 0):
        ctx = await super().load_turn_context(session_id, history_after=history_after)
        self.loads.append((history_after, len(ctx.history)))
        return ctx


async def test_a_turn_reads_only_the_records_it_does_not_hold() -> None:
    store = CountingStore()
    h = make_agent(store=store, llm=ScriptedLLM(*[f"reply {i}" for i in range(30)]))
    for i in range(30):
        await h.agent.turn(h.root_id, f"message {i}")

    first, *rest = store.loads
    assert first == (0, 0)  # the first turn reads the (empty) history whole
    assert all(after > 0 and returned == 0 for after, returned in rest)
    # ... and the LLM still saw the whole conversation.
    assert len(h.llm.calls[-1].messages) == 2 * 29 + 1


async def test_records_written_elsewhere_are_read_and_seen_by_the_llm() -> None:
    store = CountingStore()
    h = make_agent(store=store, llm=ScriptedLLM("one", "two"))
    await h.agent.turn(h.root_id, "first")
    # Another server process completed a turn on this session meanwhile.
    store.add_records(h.root_id, Message("user", "from elsewhere"), Message("assistant", "ok"))

    await h.agent.turn(h.root_id, "second")

    assert store.loads[-1][1] == 2  # only the two new records were read
    assert [m.content for m in h.llm.calls[-1].messages] == [
        "first", "one", "from elsewhere", "ok", "second"]


async def test_a_history_that_is_no_longer_a_plain_append_is_read_whole_again() -> None:
    store = CountingStore()
    h = make_agent(store=store, llm=ScriptedLLM("one", "two"))
    await h.agent.turn(h.root_id, "first")
    # The stored history changed under us (a record removed): the counts no longer add up.
    store.replace_records(h.root_id, [Message("user", "rewritten")])

    await h.agent.turn(h.root_id, "second")

    assert store.loads[-1] == (0, 1)  # the whole history, read again
    assert [m.content for m in h.llm.calls[-1].messages] == ["rewritten", "second"]


class PrefetchingStore(CountingStore):
    """Offers its turn context as a read a session lock can make (as PostgreSQL's does)."""

    def turn_context_read(self, session_id: str, *, history_after: int) -> LockedRead:
        return LockedRead("turn context", {"sid": session_id, "after": history_after},
                          lambda row: row)


class PrefetchingLocks(AsyncioLocks):
    """Makes the first read once the session is held, as PostgreSQL's locks do in the round
    trip of their try (here straight from the store, not counted in its `loads`)."""

    def __init__(self, store: PrefetchingStore) -> None:
        super().__init__()
        self.store = store
        self.reads: list[int] = []

    @asynccontextmanager
    async def hold(self, session_id: str, *, wait: bool = True,
                   first_read: Any = None) -> AsyncIterator[Prefetched | None]:
        async with super().hold(session_id, wait=wait):
            read = first_read() if first_read is not None else None
            if read is None:
                yield None
                return
            self.reads.append(read.params["after"])
            ctx = await InMemoryStore.load_turn_context(self.store, session_id,
                                                        history_after=read.params["after"])
            yield Prefetched(read, ctx)


async def test_a_turn_takes_its_context_from_the_locks_first_read() -> None:
    store = PrefetchingStore()
    h = make_agent(store=store, llm=ScriptedLLM("one", "two", "three"))
    h.agent.locks = locks = PrefetchingLocks(store)
    await h.agent.turn(h.root_id, "first")
    store.add_records(h.root_id, Message("user", "from elsewhere"), Message("assistant", "ok"))
    await h.agent.turn(h.root_id, "second")
    async for _ in h.agent.stream(h.root_id, "third"):
        pass

    assert store.loads == []  # the agent read nothing itself
    assert locks.reads[0] == 0 and all(after > 0 for after in locks.reads[1:])
    assert len(locks.reads) == 3
    assert [m.content for m in h.llm.calls[-1].messages] == [
        "first", "one", "from elsewhere", "ok", "second", "two", "third"]


async def test_a_first_read_of_another_position_is_not_used() -> None:
    store = PrefetchingStore()
    h = make_agent(store=store, llm=ScriptedLLM("one", "two"))
    await h.agent.turn(h.root_id, "first")  # the cache now holds the session
    whole = await InMemoryStore.load_turn_context(store, h.root_id)  # read from 0, not after
    stale = Prefetched(store.turn_context_read(h.root_id, history_after=0), whole)
    store.loads.clear()

    ctx, history = await h.agent._histories.load(store, h.root_id, stale)

    assert store.loads == [(whole.last_record_id, 0)]  # read again, from where the cache is
    assert [m.content for m in history.clean()[0]] == ["first", "one"]


async def test_a_fork_without_context_reads_no_history() -> None:
    store = CountingStore()
    h = make_agent(store=store, llm=ScriptedLLM("one"))
    await h.agent.turn(h.root_id, "first")
    store.loads.clear()

    await h.child("no context")

    assert store.loads == [(None, 0)]

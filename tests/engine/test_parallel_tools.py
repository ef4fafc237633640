"""Parallel tool calls: the calls of one round overlap (bounded), each settles on its own, the
results keep call order, and cancelling the round reaches every call."""

from __future__ import annotations

import asyncio
import time

import pytest

from sessions_app.engine.tools import ToolBox, ToolContext, tool
from sessions_app.engine.types import ToolCall

from .fakes import ScriptedLLM, call, make_agent, reply

CTX = ToolContext(space_id="space-1", session_id="s1")
spans: dict[str, tuple[float, float]] = {}


@tool(name="slow", description="sleeps, then returns its tag")
async def slow(args: dict, context: ToolContext) -> str:
    start = time.monotonic()
    await asyncio.sleep(args.get("seconds", 0.2))
    spans[args["tag"]] = (start, time.monotonic())
    return f"done {args['tag']}"


@tool(name="slow_sync", description="a blocking tool (runs in a thread)")
def slow_sync(args: dict, context: ToolContext) -> str:
    start = time.monotonic()
    time.sleep(0.2)
    spans[args["tag"]] = (start, time.monotonic())
    return f"sync {args['tag']}"


@tool(name="fails", description="fails after a while")
async def fails(args: dict, context: ToolContext) -> str:
    await asyncio.sleep(0.05)
    raise RuntimeError("broken on purpose")


def overlap_all(tags: list[str]) -> bool:
    """Every pair of recorded spans overlaps in time (all ran at once)."""
    latest_start = max(spans[t][0] for t in tags)
    earliest_end = min(spans[t][1] for t in tags)
    return latest_start < earliest_end


async def test_three_slow_tools_in_one_round_run_at_the_same_time() -> None:
    spans.clear()
    h = make_agent(
        tools=[slow, slow_sync],
        llm=ScriptedLLM(
            reply(None, call("slow", "c1", tag="a"), call("slow_sync", "c2", tag="b"),
                  call("slow", "c3", tag="c", seconds=0.1)),
            reply("all done"),
        ),
    )
    child = await h.child()

    result = await h.agent.turn(child, "go")

    assert result.final_content == "all done"
    assert result.tool_calls_executed == 3
    assert overlap_all(["a", "b", "c"]), spans
    # The results go back in call order, whatever order the calls finished in ("c" first).
    records = h.store.records(child)
    assert [(m.tool_call_id, m.content) for m in records if m.role == "tool"] == [
        ("c1", "done a"), ("c2", "sync b"), ("c3", "done c")]
    second_prompt = h.llm.calls[1].messages
    assert [m.tool_call_id for m in second_prompt if m.role == "tool"] == ["c1", "c2", "c3"]


async def test_one_failure_does_not_cancel_the_others() -> None:
    spans.clear()
    box = ToolBox.of([slow, fails])
    results = await box.run_all([
        ToolCall("c1", "slow", {"tag": "x"}),
        ToolCall("c2", "fails", {}),
        ToolCall("c3", "nope", {}),
        ToolCall("c4", "slow", {"tag": "y"}),
    ], CTX)
    assert [(r.tool_call_id, r.success) for r in results] == [
        ("c1", True), ("c2", False), ("c3", False), ("c4", True)]
    assert results[1].error == "broken on purpose"
    assert results[2].error == "Unknown tool: nope"
    assert set(spans) == {"x", "y"}  # both slow calls ran to their end


async def test_the_bound_limits_how_many_run_at_once() -> None:
    spans.clear()
    box = ToolBox.of([slow], max_parallel=1)
    await box.run_all([ToolCall(f"c{n}", "slow", {"tag": str(n), "seconds": 0.05})
                       for n in range(3)], CTX)
    ordered = [spans[str(n)] for n in range(3)]
    assert all(ordered[n][1] <= ordered[n + 1][0] for n in range(2)), ordered

    spans.clear()
    box = ToolBox.of([slow], max_parallel=2)
    await box.run_all([ToolCall(f"c{n}", "slow", {"tag": str(n), "seconds": 0.1})
                       for n in range(3)], CTX)
    assert overlap_all(["0", "1"])
    assert spans["2"][0] >= min(spans["0"][1], spans["1"][1])  # the third waited for a slot


async def test_cancelling_the_round_cancels_every_call() -> None:
    cancelled: list[str] = []
    started = asyncio.Event()
    running = 0

    @tool(name="forever", description="never ends")
    async def forever(args: dict, context: ToolContext) -> str:
        nonlocal running
        running += 1
        if running == 3:
            started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(args["tag"])
            raise
        return "unreachable"

    box = ToolBox.of([forever])
    task = asyncio.create_task(box.run_all(
        [ToolCall(f"c{n}", "forever", {"tag": str(n)}) for n in range(3)], CTX))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(cancelled) == ["0", "1", "2"]


async def test_parallel_create_session_calls_respect_the_fork_cap_and_call_order() -> None:
    h = make_agent(
        max_forks_per_turn=2,
        llm=ScriptedLLM(
            reply(None, *(call("stello_create_session", f"c{n}", label=f"Kid {n}")
                          for n in range(3))),
            reply("ok"),
        ),
    )
    child = await h.child()

    await h.agent.turn(child, "make three")

    tool_messages = [m for m in h.store.records(child) if m.role == "tool"]
    assert [m.tool_call_id for m in tool_messages] == ["c0", "c1", "c2"]
    assert "Kid 0" in tool_messages[0].content and "Kid 1" in tool_messages[1].content
    assert tool_messages[2].content.startswith("Not created: at most 2 sessions")

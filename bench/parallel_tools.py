"""Parallel tool rounds: how long one round of K slow tool calls takes, one by one and in
parallel (STELLO_MAX_PARALLEL_TOOLS), through the engine's own tool runner.

    .venv/bin/python bench/parallel_tools.py [--calls 3] [--delay-ms 100] [--rounds 20]

Each call is an async tool that waits `--delay-ms` (an I/O-bound tool: an HTTP API, an MCP
server) plus a sync tool that blocks as long (it runs in a worker thread). Prints one JSON
document: the median round time per mode and the speedup. No server and no database are
involved: this isolates the runner, whose overhead is what the parallel mode adds to a turn.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sessions_app.engine.tools import ToolBox, ToolContext, tool
from sessions_app.engine.types import ToolCall


def make_tools(delay: float):
    @tool(name="wait_async", description="waits")
    async def wait_async(args, context):
        await asyncio.sleep(delay)
        return "ok"

    @tool(name="wait_sync", description="blocks")
    def wait_sync(args, context):
        time.sleep(delay)
        return "ok"

    return [wait_async, wait_sync]


async def measure(calls: int, delay: float, rounds: int, max_parallel: int) -> float:
    box = ToolBox.of(make_tools(delay), max_parallel=max_parallel)
    context = ToolContext(space_id="bench", session_id="bench")
    batch = [ToolCall(f"c{n}", "wait_async" if n % 2 == 0 else "wait_sync", {})
             for n in range(calls)]
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        results = await box.run_all(batch, context)
        times.append(time.perf_counter() - start)
        assert all(r.success for r in results)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3, help="tool calls per round")
    parser.add_argument("--delay-ms", type=float, default=100.0, help="each call's duration")
    parser.add_argument("--rounds", type=int, default=20, help="measured rounds per mode")
    parser.add_argument("--max-parallel", type=int, default=8)
    args = parser.parse_args()
    delay = args.delay_ms / 1000
    serial = asyncio.run(measure(args.calls, delay, args.rounds, 1))
    parallel = asyncio.run(measure(args.calls, delay, args.rounds, args.max_parallel))
    print(json.dumps({
        "phase": "parallelTools", "calls": args.calls, "delayMs": args.delay_ms,
        "maxParallel": args.max_parallel,
        "serialRoundMs": round(serial * 1000, 2), "parallelRoundMs": round(parallel * 1000, 2),
        "overheadMs": round((parallel - delay) * 1000, 2),
        "speedup": round(serial / parallel, 2),
    }, indent=2))


if __name__ == "__main__":
    main()

"""The benchmark's `resume` phase (bench/run.py): its checks of a resumed turn on made-up frames,
and one short run against two real server processes sharing PostgreSQL and Redis (each client
drops its connection at the first delta and resumes on the other process)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.bench import run_phase_on_two_processes
from tests.support.servers import committed_tenant

ROOT = Path(__file__).resolve().parents[1]


def load_bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


bench = load_bench()


class FakeSocket:
    """Hands out the frames it was given, as a server would send them."""

    def __init__(self, frames: list[dict[str, Any]]) -> None:
        self.frames = [json.dumps(f) for f in frames]
        self.sent: list[dict[str, Any]] = []

    async def recv(self) -> str:
        return self.frames.pop(0)

    async def send(self, text: str) -> None:
        self.sent.append(json.loads(text))


TURN = "t-1"
FIRST = {"type": "stream.delta", "seq": 2, "turnId": TURN, "round": 0, "chunk": "echo:"}


def rest(*chunks: str, final: str = "echo: a b", start: int = 3) -> list[dict[str, Any]]:
    """The events after FIRST: one delta per chunk, then turn.completed with `final`."""
    frames = [{"type": "stream.delta", "seq": start + n, "turnId": TURN, "round": 0,
               "chunk": chunk} for n, chunk in enumerate(chunks)]
    frames.append({"type": "turn.completed", "seq": start + len(chunks), "turnId": TURN,
                   "result": {"turn": {"finalContent": final}}})
    return frames


def check_rest(frames: list[dict[str, Any]]) -> tuple[int, int]:
    deadline = bench.time.perf_counter() + 5
    return asyncio.run(bench.resumed_rest_of_turn(FakeSocket(frames), FIRST, deadline))


def test_a_complete_resume_counts_its_events_and_ends_at_turn_completed() -> None:
    assert check_rest(rest(" a", " b")) == (3, 5)


@pytest.mark.parametrize(("frames", "why"), [
    (rest(" b", start=3), "chunks make"),                               # a chunk lost
    (rest(" a", " a", " b"), "chunks make"),                            # a chunk twice
    (rest(" a", " b", start=4), "at seq 4"),                             # a gap in the seqs
    (rest(" a", " b", start=2), "at seq 2"),                             # FIRST again
    ([{"type": "turn.failed", "seq": 3, "turnId": TURN, "error": "x"}], "turn.failed"),
    ([{**rest(" a", " b")[0], "turnId": "t-2"}], "turn t-2"),            # another turn
])
def test_a_resume_that_loses_repeats_or_misorders_events_is_an_error(frames, why) -> None:
    with pytest.raises(bench.ResumeMismatch, match=why):
        check_rest(frames)


def stream_start(since: int, since_is_newest: bool, frames: list[dict[str, Any]]) -> Any:
    ws = FakeSocket(frames)
    deadline = bench.time.perf_counter() + 5
    first = asyncio.run(bench.stream_until_first_delta(ws, since, since_is_newest, "hi",
                                                       deadline))
    assert ws.sent == [{"type": "session.stream", "input": "hi"}]
    return first


OLD = {"type": "turn.completed", "seq": 5, "turnId": "t-0", "result": {}}
OWN = [{"type": "turn.started", "seq": 6, "turnId": TURN, "input": "hi"},
       {**FIRST, "seq": 7}]


def test_events_before_the_own_turn_are_a_duplicate_after_a_resume_from_the_newest_seq() -> None:
    assert stream_start(5, True, OWN)["seq"] == 7
    with pytest.raises(bench.ResumeMismatch, match="replayed"):
        stream_start(4, True, [OLD, *OWN])
    # after a turn that was cut off half-way the rest of it is expected first
    assert stream_start(4, False, [OLD, *OWN])["seq"] == 7
    with pytest.raises(bench.ResumeMismatch, match="at seq 5 after seq 3"):
        stream_start(3, False, [{**OLD, "seq": 5}, *OWN])


@pytest.mark.servers
@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_the_resume_phase_runs_clean_across_two_processes(tmp_path) -> None:
    tenant = committed_tenant("bench-resume", "bench resume")
    report, phase = run_phase_on_two_processes("resume", tenant["key"], tmp_path)
    assert report["failure"] is None and report["errors"] == 0
    assert phase["concurrency"] == 2 and phase["ok"] >= 2
    # each timed resume replayed the turn after its first delta (32 words and more), in order
    assert phase["missedEvents"]["min"] >= 33
    assert {"p50", "p95", "max"} <= set(phase["latencyMs"])
    assert phase["enteredMs"]["p50"] <= phase["latencyMs"]["p50"]
    assert phase["nothingMissedMs"]["p50"] > 0
    assert phase["targetMet"] is (phase["latencyMs"]["p50"] <= 50)
    assert report["cleanup"]["notDeleted"] == [] and report["cleanup"]["spacesDeleted"] >= 1
    assert report["compare"] is None

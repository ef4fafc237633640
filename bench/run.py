#!/usr/bin/env python3
"""Load benchmark of a running Stello for Django server. Prints one JSON document.

It starts no server. It talks to one or more running daphne processes on loopback only (any host
outside 127.0.0.0/8, `localhost` and `::1` is refused), runs each phase with N concurrent
clients for T seconds after a ~1 s warm-up that is not counted, and deletes every space it
created. Phases (``--phases``, default all, in this order):

  tree    GET  /spaces/{id}/sessions on a 9-session tree (main + 8 forks)        req/s
  spaces  POST /spaces (the spaces are deleted afterwards, outside the timed window) req/s
  turns   POST .../sessions/{id}/turn, one session per client                     turns/s
  ws      WebSocket session.stream: K connections x M turns, each on its own session:
          time to first stream.delta and streams/s
  forks   POST .../sessions/{id}/fork, one source session per client              forks/s

Latencies are exact percentiles (nearest rank) of every successful request. Every phase counts
its errors: non-2xx answers, exceptions, WebSocket `error` frames, and requests still in flight
when the phase's time limit (duration + grace) ends. The whole run has a hard timeout.

With ``STELLO_SERVER_PIDS`` (comma-separated pids of the server processes) it samples
/proc/<pid>/status (VmRSS, VmHWM) during the run and reports RSS at start, at end and at peak.

Embedded default (SQLite, in-memory channel layer, one process, offline LLM)::

    .venv/bin/python manage.py migrate
    export STELLO_API_KEY=$(.venv/bin/python manage.py createapikey bench | tail -n1)
    .venv/bin/daphne -b 127.0.0.1 -p 8000 stello_project.asgi:application &
    STELLO_SERVER_PIDS=$! .venv/bin/python bench/run.py --seconds 10 --clients 16

Production shape (PostgreSQL + Redis + several daphne processes; there is no load balancer in
the repository, so the benchmark spreads its clients round-robin over ``STELLO_BASE_URLS``)::

    export DATABASE_URL=postgresql://user@127.0.0.1:5432/stello_bench REDIS_URL=redis://127.0.0.1:6379/0
    bench/serve.sh 4            # migrate once, daphne on 8001..8004; prints the two exports
    export STELLO_BASE_URLS=http://127.0.0.1:8001,http://127.0.0.1:8002,...
    export STELLO_SERVER_PIDS=1234,1235,...
    export STELLO_API_KEY=$(.venv/bin/python manage.py createapikey bench | tail -n1)
    .venv/bin/python bench/run.py --clients 32
    bench/serve.sh stop

Flags default to environment variables: STELLO_BENCH_CLIENTS (16), STELLO_BENCH_SECONDS (10),
STELLO_BENCH_WS_CONNECTIONS (16), STELLO_BENCH_WS_TURNS (50), STELLO_BENCH_PHASES (all),
STELLO_BENCH_OUTPUT (none). Exit status: 0 clean run, 1 errors or a failed/aborted run, 2 usage.
Ctrl-C / SIGTERM stop the phases, clean up and still print the JSON. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import math
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import websockets
from websockets.asyncio.client import connect as ws_connect

try:
    import httpx
except ImportError:  # the openai SDK of this project ships it as `httpx2`
    import httpx2 as httpx

ALL_PHASES = ("tree", "spaces", "turns", "ws", "forks")
TREE_FORKS = 8
# Every space of a run is labelled `stello-bench-<run>-...`, so the final cleanup finds them all.
LABEL = f"stello-bench-{os.getpid():x}{int(time.time()) & 0xFFFF:04x}"
SETUP_TIMEOUT = 60.0  # seconds for creating the fixtures
CLEANUP_TIMEOUT = 30.0  # seconds for deleting spaces (after the spaces phase, and at the end)
LIST_TIMEOUT = 10.0  # seconds for listing this run's spaces before the final cleanup
RSS_INTERVAL = 0.1  # seconds between two RSS samples
MAX_ERROR_SAMPLES = 5


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Config:
    base_urls: tuple[str, ...]
    api_key: str
    clients: int
    seconds: float
    warmup: float
    grace: float
    ws_connections: int
    ws_turns: int
    phases: tuple[str, ...]
    output: str | None
    server_pids: tuple[int, ...]
    timeout: float


def env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--base-urls", default=env(
        "STELLO_BASE_URLS", env("STELLO_BASE_URL", "http://127.0.0.1:8000")),
        help="comma-separated server URLs, loopback only (STELLO_BASE_URLS / STELLO_BASE_URL)")
    # string defaults go through `type` too, so a bad environment value is a usage error
    parser.add_argument("--clients", type=int, default=env("STELLO_BENCH_CLIENTS", "16"))
    parser.add_argument("--seconds", type=float, default=env("STELLO_BENCH_SECONDS", "10"),
                        help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=1.0, help="uncounted seconds per phase")
    parser.add_argument("--grace", type=float, default=5.0,
                        help="extra seconds a phase may take to finish its in-flight requests")
    parser.add_argument("--ws-connections", type=int,
                        default=env("STELLO_BENCH_WS_CONNECTIONS", "16"))
    parser.add_argument("--ws-turns", type=int, default=env("STELLO_BENCH_WS_TURNS", "50"),
                        help="streamed turns per connection (at most, within --seconds)")
    parser.add_argument("--phases", default=env("STELLO_BENCH_PHASES", ",".join(ALL_PHASES)))
    parser.add_argument("--output", default=os.environ.get("STELLO_BENCH_OUTPUT") or None,
                        help="also write the JSON to this file")
    parser.add_argument("--timeout", type=float, default=None,
                        help="hard limit of the whole run in seconds (default: from the phases)")
    args = parser.parse_args(argv)

    api_key = os.environ.get("STELLO_API_KEY", "").strip()
    if not api_key:
        parser.error("set STELLO_API_KEY (manage.py createapikey <user> prints one)")
    base_urls = tuple(u.strip().rstrip("/") for u in args.base_urls.split(",") if u.strip())
    if not base_urls:
        parser.error("no base URL (STELLO_BASE_URLS / STELLO_BASE_URL / --base-urls)")
    for url in base_urls:
        problem = loopback_problem(url)
        if problem:
            parser.error(f"refusing {url!r}: {problem}")
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    unknown = sorted(set(phases) - set(ALL_PHASES))
    if unknown or not phases:
        parser.error(f"--phases: unknown {unknown}; choose from {','.join(ALL_PHASES)}")
    if min(args.clients, args.ws_connections, args.ws_turns) < 1 or args.seconds <= 0:
        parser.error("--clients, --ws-connections, --ws-turns and --seconds must be positive")
    phases = tuple(p for p in ALL_PHASES if p in phases)
    per_phase = args.warmup + args.seconds + 2 * args.grace + 5
    budget = SETUP_TIMEOUT + 2 * CLEANUP_TIMEOUT + LIST_TIMEOUT + len(phases) * per_phase
    timeout = args.timeout or budget + (CLEANUP_TIMEOUT if "spaces" in phases else 0)
    if timeout <= 2 * CLEANUP_TIMEOUT + LIST_TIMEOUT + 15:
        parser.error(f"--timeout must be more than {2 * CLEANUP_TIMEOUT + LIST_TIMEOUT + 15:.0f} s")
    return Config(
        base_urls=base_urls, api_key=api_key, clients=args.clients, seconds=args.seconds,
        warmup=max(0.0, args.warmup), grace=max(0.5, args.grace),
        ws_connections=args.ws_connections, ws_turns=args.ws_turns, phases=phases,
        output=args.output, server_pids=parse_pids(os.environ.get("STELLO_SERVER_PIDS", "")),
        timeout=timeout,
    )


def loopback_problem(url: str) -> str | None:
    """Why `url` may not be benchmarked (None when it is an http(s) URL on loopback)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return "the scheme must be http or https"
    host = (parts.hostname or "").lower()
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return "only loopback hosts (127.0.0.0/8, localhost, ::1) may be benchmarked"


def parse_pids(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.replace(" ", "").split(",") if p)
    except ValueError:
        sys.exit(f"STELLO_SERVER_PIDS must be comma-separated pids, not {text!r}")


# --------------------------------------------------------------------------- statistics


def percentile(ordered: list[float], p: float) -> float:
    """Exact nearest-rank percentile of an already sorted list."""
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_summary(samples_ms: list[float]) -> dict[str, float] | None:
    if not samples_ms:
        return None
    ordered = sorted(samples_ms)
    return {
        "p50": round(percentile(ordered, 50), 2),
        "p90": round(percentile(ordered, 90), 2),
        "p99": round(percentile(ordered, 99), 2),
        "min": round(ordered[0], 2),
        "max": round(ordered[-1], 2),
        "mean": round(sum(ordered) / len(ordered), 2),
    }


@dataclass
class Stats:
    """What one phase recorded. Workers share it (one event loop: no locking needed)."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    in_flight: int = 0

    def ok(self, started: float) -> None:
        self.latencies_ms.append((time.perf_counter() - started) * 1000)

    def error(self, kind: str, detail: str = "") -> None:
        self.errors[kind] += 1
        sample = f"{kind}: {detail}"[:200] if detail else kind
        if len(self.error_samples) < MAX_ERROR_SAMPLES and sample not in self.error_samples:
            self.error_samples.append(sample)

    def report(self, elapsed: float, rate_name: str) -> dict[str, Any]:
        done = len(self.latencies_ms)
        return {
            "ok": done,
            "errors": sum(self.errors.values()),
            rate_name: round(done / elapsed, 2) if elapsed > 0 else 0.0,
            "latencyMs": latency_summary(self.latencies_ms),
            "elapsedSeconds": round(elapsed, 3),
            "errorKinds": dict(self.errors),
            "errorSamples": self.error_samples,
        }


# --------------------------------------------------------------------------- HTTP


class Api:
    """One keep-alive connection pool per base URL; client `i` uses URL `i % len(urls)`."""

    def __init__(self, config: Config) -> None:
        pool = max(config.clients, config.ws_connections)
        limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
        timeout = httpx.Timeout(config.seconds + config.grace, connect=5.0)
        headers = {"X-API-Key": config.api_key, "Content-Type": "application/json"}
        self.base_urls = config.base_urls
        self.clients = [
            httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=timeout,
                              http1=True, http2=False, trust_env=False)
            for url in config.base_urls
        ]

    def client(self, index: int = 0):
        return self.clients[index % len(self.clients)]

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self.clients), return_exceptions=True)

    async def call(self, method: str, path: str, body: Any = None, *, index: int = 0) -> Any:
        """A request that must succeed (setup and cleanup): the JSON answer, or raises."""
        content = None if body is None else orjson.dumps(body)
        response = await self.client(index).request(method, path, content=content)
        if not response.is_success:
            raise RuntimeError(f"{method} {path}: HTTP {response.status_code} "
                               f"{response.text[:200]}")
        return orjson.loads(response.content) if response.content else None

    async def timed(self, stats: Stats, method: str, path: str, body: Any = None, *,
                    index: int = 0) -> Any:
        """A measured request: records its latency, or an error; returns the JSON or None."""
        content = None if body is None else orjson.dumps(body)
        stats.in_flight += 1
        started = time.perf_counter()
        try:
            response = await self.client(index).request(method, path, content=content)
        except httpx.HTTPError as exc:
            stats.error(type(exc).__name__, str(exc))
            return None
        finally:
            stats.in_flight -= 1
        if not response.is_success:
            stats.error(f"HTTP {response.status_code}", response.text)
            return None
        stats.ok(started)
        return orjson.loads(response.content) if response.content else None


# --------------------------------------------------------------------------- phase runner

Worker = Callable[[int, Stats, float], Awaitable[None]]


async def cancel_all(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def run_workers(count: int, worker: Worker, stats: Stats, seconds: float,
                      grace: float) -> float:
    """`count` workers that loop until `seconds` have passed; they are cut off at
    `seconds + grace`, and whatever is still in flight then is an error. Returns the elapsed
    seconds."""
    started = time.perf_counter()
    stop_at = started + seconds
    tasks = [asyncio.create_task(worker(i, stats, stop_at)) for i in range(count)]
    try:
        _, pending = await asyncio.wait(tasks, timeout=seconds + grace)
        in_flight = stats.in_flight
    finally:  # also when the whole run is cancelled: no worker outlives its phase
        await cancel_all(tasks)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            stats.error(f"worker crashed: {type(exc).__name__}", str(exc))
    if pending:
        stats.errors["cut off at the phase time limit"] += max(in_flight, 1)
    return time.perf_counter() - started


async def run_phase(config: Config, count: int, worker: Worker, rate_name: str,
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Warm-up (discarded) and then the measured run of one phase."""
    if config.warmup > 0:
        await run_workers(count, worker, Stats(), config.warmup, config.grace)
    stats = Stats()
    elapsed = await run_workers(count, worker, stats, config.seconds, config.grace)
    return {"concurrency": count, **(extra or {}), **stats.report(elapsed, rate_name)}


def request_loop(api: Api, method: str, path_of: Callable[[int], str],
                 body_of: Callable[[int, int], Any] | None = None,
                 on_result: Callable[[Any], None] | None = None) -> Worker:
    """A worker that sends the same kind of request back to back until the phase ends."""

    async def worker(index: int, stats: Stats, stop_at: float) -> None:
        n = 0
        while time.perf_counter() < stop_at:
            body = body_of(index, n) if body_of else None
            result = await api.timed(stats, method, path_of(index), body, index=index)
            if result is not None and on_result:
                on_result(result)
            n += 1

    return worker


# --------------------------------------------------------------------------- fixtures


@dataclass
class Fixtures:
    """Spaces and sessions the phases work on; `space_ids` is everything to delete."""

    space_ids: list[str] = field(default_factory=list)
    tree_space: str | None = None
    work_space: str | None = None
    turn_sessions: list[str] = field(default_factory=list)
    ws_sessions: list[str] = field(default_factory=list)
    fork_sources: list[str] = field(default_factory=list)


async def create_space(api: Api, fixtures: Fixtures, label: str) -> tuple[str, str]:
    """A new space and the id of its main session."""
    space = await api.call("POST", "/spaces", {"label": label, "systemPrompt": "Be brief."})
    fixtures.space_ids.append(space["id"])
    tree = await api.call("GET", f"/spaces/{space['id']}/sessions")
    return space["id"], tree["id"]


async def fork_many(api: Api, space_id: str, source_id: str, count: int, prefix: str) -> list[str]:
    children = []
    for i in range(count):  # forks of one source are serialised by the server anyway
        child = await api.call("POST", f"/spaces/{space_id}/sessions/{source_id}/fork",
                               {"label": f"{prefix}-{i}"})
        children.append(child["id"])
    return children


async def build_fixtures(api: Api, config: Config, fixtures: Fixtures) -> None:
    if "tree" in config.phases:
        fixtures.tree_space, main = await create_space(api, fixtures, f"{LABEL}-tree")
        await fork_many(api, fixtures.tree_space, main, TREE_FORKS, "branch")
    if not {"turns", "ws", "forks"} & set(config.phases):
        return
    fixtures.work_space, main = await create_space(api, fixtures, f"{LABEL}-work")
    space = fixtures.work_space
    if "turns" in config.phases:
        fixtures.turn_sessions = await fork_many(api, space, main, config.clients, "turns")
    if "ws" in config.phases:
        fixtures.ws_sessions = await fork_many(api, space, main, config.ws_connections, "ws")
    if "forks" in config.phases:
        fixtures.fork_sources = await fork_many(api, space, main, config.clients, "forks")


async def labelled_spaces(api: Api) -> list[str]:
    """Spaces labelled with this run's LABEL, e.g. made by a request whose answer was cut off."""
    try:
        listed = await asyncio.wait_for(api.call("GET", "/spaces"), LIST_TIMEOUT)
    except (TimeoutError, RuntimeError, httpx.HTTPError):
        return []
    return [s["id"] for s in listed if str(s.get("label", "")).startswith(LABEL)]


async def final_cleanup(api: Api, config: Config, fixtures: Fixtures) -> dict[str, Any]:
    """Deletes the spaces the run knows it made, then any others carrying its label."""
    known = list(dict.fromkeys(fixtures.space_ids))
    left = await delete_spaces(api, known, config.clients)
    stray = [s for s in await labelled_spaces(api) if s not in set(known)]
    left += await delete_spaces(api, stray, config.clients)
    return {"spacesDeleted": len(known) + len(stray) - len(left), "notDeleted": left}


async def delete_spaces(api: Api, space_ids: list[str], concurrency: int) -> list[str]:
    """Deletes the spaces (404 counts as deleted) within CLEANUP_TIMEOUT; returns the ids that
    could not be deleted."""
    gate = asyncio.Semaphore(concurrency)
    done: set[str] = set()

    async def delete(index: int, space_id: str) -> None:
        async with gate:
            try:
                response = await api.client(index).delete(f"/spaces/{space_id}")
            except httpx.HTTPError:
                return
            if response.is_success or response.status_code == 404:
                done.add(space_id)

    try:
        await asyncio.wait_for(
            asyncio.gather(*(delete(i, s) for i, s in enumerate(space_ids))), CLEANUP_TIMEOUT)
    except TimeoutError:
        pass
    return [s for s in space_ids if s not in done]


# --------------------------------------------------------------------------- HTTP phases


async def phase_tree(api: Api, config: Config, fixtures: Fixtures) -> dict[str, Any]:
    path = f"/spaces/{fixtures.tree_space}/sessions"
    worker = request_loop(api, "GET", lambda i: path)
    return await run_phase(config, config.clients, worker, "reqPerSec",
                           {"treeSessions": 1 + TREE_FORKS})


async def phase_spaces(api: Api, config: Config, fixtures: Fixtures) -> dict[str, Any]:
    created: list[str] = []
    worker = request_loop(api, "POST", lambda i: "/spaces",
                          body_of=lambda i, n: {"label": f"{LABEL}-space-{i}-{n}"},
                          on_result=lambda space: created.append(space["id"]))
    try:
        result = await run_phase(config, config.clients, worker, "reqPerSec")
    finally:
        fixtures.space_ids.extend(created)  # if anything goes wrong, the final cleanup has them
    left = await delete_spaces(api, created, config.clients)  # outside the timed window
    gone = set(created) - set(left)
    fixtures.space_ids[:] = [s for s in fixtures.space_ids if s not in gone]
    return {**result, "createdIncludingWarmup": len(created), "deletedAfterwards": len(gone)}


async def phase_turns(api: Api, config: Config, fixtures: Fixtures) -> dict[str, Any]:
    space, sessions = fixtures.work_space, fixtures.turn_sessions
    worker = request_loop(api, "POST", lambda i: f"/spaces/{space}/sessions/{sessions[i]}/turn",
                          body_of=lambda i, n: {"input": f"benchmark turn {n} of client {i}"})
    return await run_phase(config, config.clients, worker, "turnsPerSec",
                           {"sessions": len(sessions)})


async def phase_forks(api: Api, config: Config, fixtures: Fixtures) -> dict[str, Any]:
    space, sources = fixtures.work_space, fixtures.fork_sources
    worker = request_loop(api, "POST", lambda i: f"/spaces/{space}/sessions/{sources[i]}/fork",
                          body_of=lambda i, n: {"label": f"fork-{i}-{n}"})
    return await run_phase(config, config.clients, worker, "forksPerSec",
                           {"sourceSessions": len(sources)})


# --------------------------------------------------------------------------- WebSocket phase


class FrameError(Exception):
    """The server answered with an `error` frame, or a frame we did not expect."""


@dataclass
class StreamStats:
    first_delta_ms: list[float] = field(default_factory=list)
    stream_ms: list[float] = field(default_factory=list)
    connect_ms: list[float] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    stopped_by_time: bool = False
    last_end: float = 0.0


def ws_url(base_url: str, space_id: str) -> str:
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}/spaces/{space_id}/ws"


async def next_frame(ws, deadline: float) -> dict[str, Any]:
    remaining = deadline - time.perf_counter()
    if remaining <= 0:
        raise TimeoutError("phase time limit")
    raw = await asyncio.wait_for(ws.recv(), remaining)
    frame = orjson.loads(raw)
    if frame.get("type") == "error":
        raise FrameError(f"{frame.get('code', 'error')}: {frame.get('message', '')}")
    return frame


async def enter(ws, session_id: str, deadline: float) -> None:
    await ws.send(orjson.dumps({"type": "session.enter", "sessionId": session_id}).decode())
    while (await next_frame(ws, deadline)).get("type") != "session.entered":
        pass  # other pushes (e.g. space events) may come first


async def stream_turn(ws, text: str, deadline: float) -> tuple[float, float]:
    """One session.stream: (ms to the first stream.delta, ms to stream.end)."""
    started = time.perf_counter()
    await ws.send(orjson.dumps({"type": "session.stream", "input": text}).decode())
    first = None
    while True:
        kind = (await next_frame(ws, deadline)).get("type")
        if kind == "stream.delta" and first is None:
            first = (time.perf_counter() - started) * 1000
        elif kind == "stream.end":
            total = (time.perf_counter() - started) * 1000
            return (total if first is None else first), total


def ws_error(stats: Stats, exc: BaseException) -> None:
    if isinstance(exc, FrameError):
        stats.error("error frame", str(exc))
    elif isinstance(exc, websockets.InvalidStatus):
        stats.error(f"handshake HTTP {exc.response.status_code}", str(exc))
    else:
        stats.error(type(exc).__name__, str(exc))


class StartLine:
    """The measured window starts once every connection has warmed up (or given up)."""

    def __init__(self, count: int) -> None:
        self.waiting = count
        self.event = asyncio.Event()
        self.at = 0.0

    def arrive(self) -> None:
        self.waiting -= 1
        if self.waiting <= 0:
            self.start()

    def start(self) -> None:
        if not self.event.is_set():
            self.at = time.perf_counter()
            self.event.set()

    async def wait(self, deadline: float) -> float:
        try:
            await asyncio.wait_for(self.event.wait(), max(0.0, deadline - time.perf_counter()))
        except TimeoutError:
            self.start()  # the stragglers join late
        return self.at


async def ws_client(config: Config, index: int, space_id: str, session_id: str,
                    record: StreamStats, line: StartLine, setup_deadline: float) -> None:
    """One connection on its own session: connect, enter, one uncounted warm-up stream, wait
    for the others, then up to `ws_turns` streams while the phase's seconds last."""
    url = ws_url(config.base_urls[index % len(config.base_urls)], space_id)
    stats = record.stats
    arrived = False
    started = time.perf_counter()
    try:
        async with ws_connect(url, additional_headers={"X-API-Key": config.api_key},
                              open_timeout=5, close_timeout=2, max_size=2**24,
                              proxy=None) as ws:
            await enter(ws, session_id, setup_deadline)
            record.connect_ms.append((time.perf_counter() - started) * 1000)
            if config.warmup > 0:
                await stream_turn(ws, "warm-up", setup_deadline)
            line.arrive()
            arrived = True
            stop_at = await line.wait(setup_deadline) + config.seconds
            deadline = stop_at + config.grace
            for n in range(config.ws_turns):
                if time.perf_counter() >= stop_at:
                    record.stopped_by_time = True
                    break
                try:
                    first, total = await stream_turn(ws, f"benchmark stream {n}", deadline)
                except FrameError as exc:  # the turn failed, the connection lives on
                    ws_error(stats, exc)
                    continue
                record.first_delta_ms.append(first)
                record.stream_ms.append(total)
                record.last_end = time.perf_counter()
    except TimeoutError:
        stats.error("cut off at the phase time limit" if arrived else "timeout while warming up")
    except (OSError, websockets.WebSocketException, FrameError) as exc:
        ws_error(stats, exc)
    finally:
        if not arrived:
            line.arrive()


async def phase_ws(api: Api, config: Config, fixtures: Fixtures) -> dict[str, Any]:
    """K connections x M streamed turns, within --seconds (+ grace) after the warm-up."""
    record = StreamStats()
    line = StartLine(len(fixtures.ws_sessions))
    setup_deadline = time.perf_counter() + config.warmup + config.grace + 5
    tasks = [asyncio.create_task(ws_client(config, i, fixtures.work_space, session, record,
                                           line, setup_deadline))
             for i, session in enumerate(fixtures.ws_sessions)]
    try:
        await line.wait(setup_deadline)
        limit = line.at + config.seconds + config.grace + 1 - time.perf_counter()
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, limit))
        for _task in pending:
            record.stats.error("cut off at the phase time limit")
    finally:
        await cancel_all(tasks)
    streams = len(record.stream_ms)
    elapsed = max(record.last_end - line.at, 1e-9) if streams else 0.0
    result = {
        "connections": len(fixtures.ws_sessions),
        "turnsPerConnection": config.ws_turns,
        "streams": streams,
        "planned": len(fixtures.ws_sessions) * config.ws_turns,
        "stoppedByTime": record.stopped_by_time,
        "streamsPerSec": round(streams / elapsed, 2) if streams else 0.0,
        "firstDeltaMs": latency_summary(record.first_delta_ms),
        "streamMs": latency_summary(record.stream_ms),
        "connectAndEnterMs": latency_summary(record.connect_ms),
        "elapsedSeconds": round(elapsed, 3),
        "errors": sum(record.stats.errors.values()),
        "errorKinds": dict(record.stats.errors),
        "errorSamples": record.stats.error_samples,
    }
    if not record.connect_ms:
        result["hint"] = ("no connection entered its session: is the WebSocket endpoint "
                          "/spaces/{spaceId}/ws served? (see errorSamples)")
    return result


# --------------------------------------------------------------------------- RSS sampler


def read_status(pid: int) -> dict[str, int] | None:
    """VmRSS and VmHWM of a process in kB (None when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


class RssSampler:
    """Samples the server processes' RSS every RSS_INTERVAL seconds while the run goes on."""

    def __init__(self, pids: tuple[int, ...]) -> None:
        self.pids = pids
        self.start: dict[int, dict[str, int] | None] = {p: read_status(p) for p in pids}
        self.peak: dict[int, int] = {p: (s or {}).get("VmRSS", 0) for p, s in self.start.items()}
        self.samples = 0
        self.marks: dict[str, int] = {}
        self._task: asyncio.Task | None = None

    def sample(self) -> int:
        """Takes one sample; returns the current sum of RSS in kB."""
        total = 0
        for pid in self.pids:
            status = read_status(pid)
            if status and "VmRSS" in status:
                self.peak[pid] = max(self.peak[pid], status["VmRSS"])
                total += status["VmRSS"]
        self.samples += 1
        return total

    def mark(self, name: str) -> None:
        """Remembers the summed RSS now (e.g. after each phase)."""
        if self.pids:
            self.marks[name] = self.sample()

    async def _loop(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(RSS_INTERVAL)

    def __enter__(self) -> RssSampler:
        if self.pids:
            self._task = asyncio.get_running_loop().create_task(self._loop())
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._task:
            self._task.cancel()

    def report(self) -> dict[str, Any] | None:
        if not self.pids:
            return None
        end = {p: read_status(p) for p in self.pids}
        mib = lambda kb: round(kb / 1024, 1)  # noqa: E731
        per_pid = {}
        for pid in self.pids:
            first, last = self.start[pid] or {}, end[pid] or {}
            self.peak[pid] = max(self.peak[pid], last.get("VmRSS", 0))
            per_pid[str(pid)] = {
                "alive": end[pid] is not None,
                "startMiB": mib(first.get("VmRSS", 0)),
                "endMiB": mib(last.get("VmRSS", 0)),
                "peakSampledMiB": mib(self.peak[pid]),
                "peakKernelVmHWMMiB": mib(last.get("VmHWM", first.get("VmHWM", 0))),
            }
        total = lambda key: round(sum(p[key] for p in per_pid.values()), 1)  # noqa: E731
        return {
            "pids": per_pid,
            "sumStartMiB": total("startMiB"),
            "sumEndMiB": total("endMiB"),
            "sumPeakSampledMiB": total("peakSampledMiB"),
            "sumPeakKernelVmHWMMiB": total("peakKernelVmHWMMiB"),
            "sumAfterPhaseMiB": {k: mib(v) for k, v in self.marks.items()},
            "samples": self.samples,
            "intervalSeconds": RSS_INTERVAL,
        }


# --------------------------------------------------------------------------- main

PHASES = {
    "tree": ("sessionTree", phase_tree),
    "spaces": ("createSpace", phase_spaces),
    "turns": ("turn", phase_turns),
    "ws": ("wsStream", phase_ws),
    "forks": ("fork", phase_forks),
}


async def check_servers(api: Api) -> None:
    """Every base URL must answer /healthz and accept the key (within LIST_TIMEOUT)."""
    try:
        await asyncio.wait_for(check_each_server(api), LIST_TIMEOUT)
    except TimeoutError:
        raise SystemExit("the server did not answer /healthz and /spaces in time") from None


async def check_each_server(api: Api) -> None:
    for i, url in enumerate(api.base_urls):
        try:
            response = await api.client(i).get("/healthz")
        except httpx.HTTPError as exc:
            raise SystemExit(f"{url} is not reachable ({type(exc).__name__}: {exc}); start the "
                             "server first (see bench/README.md)") from exc
        if not response.is_success:
            raise SystemExit(f"{url}/healthz answered HTTP {response.status_code}")
        key_check = await api.client(i).get("/spaces")
        if key_check.status_code == 401:
            raise SystemExit(f"{url} rejects STELLO_API_KEY: {key_check.text[:200]}")


async def run_phases(api: Api, config: Config, fixtures: Fixtures, sampler: RssSampler,
                     results: dict[str, Any]) -> None:
    await asyncio.wait_for(build_fixtures(api, config, fixtures), SETUP_TIMEOUT)
    for phase in config.phases:
        name, run = PHASES[phase]
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        results[name] = await run(api, config, fixtures)
        sampler.mark(name)


async def measure(api: Api, config: Config, fixtures: Fixtures, sampler: RssSampler,
                  results: dict[str, Any]) -> str | None:
    """Runs the phases within the overall time limit; Ctrl-C or SIGTERM stops them early
    (the cleanup still runs). Returns why the run failed, or None."""
    budget = config.timeout - 2 * CLEANUP_TIMEOUT - LIST_TIMEOUT - 10
    task = asyncio.ensure_future(
        asyncio.wait_for(run_phases(api, config, fixtures, sampler, results), budget))
    loop = asyncio.get_running_loop()
    interrupted = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, lambda n=signum: (interrupted.append(n), task.cancel()))
    try:
        await task
    except asyncio.CancelledError:
        if not interrupted:
            raise
        return f"interrupted by {signal.Signals(interrupted[0]).name}"
    except TimeoutError:
        return f"overall timeout of {config.timeout:.0f} s reached"
    except (RuntimeError, httpx.HTTPError, KeyError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return None


async def benchmark(config: Config) -> dict[str, Any]:
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    started = time.perf_counter()
    results: dict[str, Any] = {}
    fixtures = Fixtures()
    api = Api(config)
    try:
        await check_servers(api)
        with RssSampler(config.server_pids) as sampler:
            try:
                failure = await measure(api, config, fixtures, sampler, results)
            finally:
                cleanup = await final_cleanup(api, config, fixtures)
            rss = sampler.report()
    finally:
        await api.aclose()
    total_errors = sum(p.get("errors", 0) for p in results.values())
    return {
        "startedAt": started_at,
        "config": {
            "baseUrls": list(config.base_urls), "clients": config.clients,
            "secondsPerPhase": config.seconds, "warmupSeconds": config.warmup,
            "graceSeconds": config.grace, "wsConnections": config.ws_connections,
            "wsTurns": config.ws_turns, "phases": list(config.phases),
            "serverPids": list(config.server_pids),
        },
        "phases": results,
        "errors": total_errors,
        "failure": failure,
        "cleanup": cleanup,
        "rss": rss,
        "elapsedSeconds": round(time.perf_counter() - started, 2),
    }


def emit(report: dict[str, Any], output: str | None) -> None:
    data = orjson.dumps(report, option=orjson.OPT_INDENT_2)
    sys.stdout.write(data.decode() + "\n")
    sys.stdout.flush()
    if output:
        Path(output).write_bytes(data + b"\n")


def arm_watchdog(seconds: float) -> None:
    """Last resort if the event loop itself is stuck: exit hard after `seconds`."""

    def expire(signum, frame):
        os.write(2, b"[bench] hard timeout: exiting\n")
        os._exit(3)

    signal.signal(signal.SIGALRM, expire)
    signal.alarm(math.ceil(seconds))


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    arm_watchdog(config.timeout + 5)
    report = asyncio.run(benchmark(config))
    emit(report, config.output)
    return 1 if report["failure"] or report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

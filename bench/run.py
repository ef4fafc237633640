#!/usr/bin/env python3
"""Load benchmark of a running Stello for Django server. Prints one JSON document.

It starts no server. It talks to one or more running server processes on loopback only (any
host outside 127.0.0.0/8, `localhost` and `::1` is refused), runs each phase with N concurrent
clients for T seconds after a ~1 s warm-up that is not counted, and deletes every space it
created. Phases (``--phases``; default the first five, in this order):

  tree    GET  /spaces/{id}/sessions on a 9-session tree (main + 8 forks)        req/s
  spaces  POST /spaces (the spaces are deleted afterwards, outside the timed window) req/s
  turns   POST .../sessions/{id}/turn, one session per client                     turns/s
  ws      WebSocket session.stream: K connections x M turns, each on its own session:
          time to first stream.delta and streams/s
  forks   POST .../sessions/{id}/fork, one source session per client              forks/s
  longsession  one session, sequential turns: median latency of --long-sample turns at each
          of --long-turns turns of history (default 10,100,1000), and latency@last/@first
  messagepage  GET .../messages?limit=50 (newest page and the one before it) in a 100-message
          session and in a long one (--page-session, seeded with manage.py seedhistory):
          req/s and latency of each, and longOverSmallP50 (about 1.0: pages do not grow)
  inflight  --inflight turns (default 1000) in flight at once, half REST, half WebSocket, each
          on its own session, against our server on a slow LLM (bench/slow_llm.py); a second
          tenant (--other-api-key) reads its own session tree meanwhile. Ours only.
  usage   GET /usage?groupBy=day and GET /spaces/{id}/usage?groupBy=session. Ours only.
  resume  --ws-connections clients, one session each: stream, drop the connection at the
          first stream.delta, reconnect and session.resume from its seq; latency to
          turn.completed (target p50 <= 50 ms), the chunks checked against the reply, and a
          resume with nothing missed as the baseline. Ours only.

Latencies are exact percentiles (nearest rank) of every successful request. Every phase counts
its errors: non-2xx answers, exceptions, WebSocket `error` frames, and requests still in flight
when the phase's time limit (duration + grace) ends. The whole run has a hard timeout.

``--repeat N`` runs every phase N times per server and reports the median of every figure (and
the runs). ``--compare-base-url`` / ``--compare-api-key`` measure a second server (the Node
original) in the same sitting, interleaved phase by phase (ours, theirs, ours, theirs...), and
add ``ratios``: rates ours/theirs, latencies theirs/ours, so > 1.0 always means ours is better.

With ``STELLO_SERVER_PIDS`` (comma-separated pids of the server processes; the compare
server's: ``STELLO_COMPARE_SERVER_PIDS``) it samples /proc/<pid>/status (VmRSS, VmHWM) during
the run and reports RSS at start, at end and at peak.

The tree, spaces, turns, ws and forks phases also report ``cpuMsPerOp``: milliseconds of CPU
per request (per stream for ws) spent during the measured window by the server (its pids, when
given), every PostgreSQL and Redis process of the machine, and the benchmark client itself.

Embedded default (SQLite, in-memory channel layer, one process, offline LLM)::

    .venv/bin/python manage.py migrate
    export STELLO_API_KEY=$(.venv/bin/python manage.py createapikey bench | tail -n1)
    .venv/bin/daphne -b 127.0.0.1 -p 8000 stello_project.asgi:application &
    STELLO_SERVER_PIDS=$! .venv/bin/python bench/run.py --seconds 10 --clients 16

Production shape (PostgreSQL + Redis + several processes; there is no load balancer in the
repository, so the benchmark spreads its clients round-robin over ``STELLO_BASE_URLS``)::

    export DATABASE_URL=postgresql://user@127.0.0.1:5432/stello_bench REDIS_URL=redis://127.0.0.1:6379/0
    bench/serve.sh 4            # migrate once, daphne on 8001..8004; prints the two exports
    export STELLO_BASE_URLS=http://127.0.0.1:8001,http://127.0.0.1:8002,...
    export STELLO_SERVER_PIDS=1234,1235,...
    export STELLO_API_KEY=$(.venv/bin/python manage.py createapikey bench | tail -n1)
    .venv/bin/python bench/run.py --clients 32
    bench/serve.sh stop

Flags default to environment variables: STELLO_BENCH_CLIENTS (16), STELLO_BENCH_SECONDS (10),
STELLO_BENCH_WS_CONNECTIONS (16), STELLO_BENCH_WS_TURNS (50), STELLO_BENCH_PHASES,
STELLO_BENCH_OUTPUT (none), STELLO_BENCH_REPEAT (1), STELLO_COMPARE_BASE_URL,
STELLO_COMPARE_API_KEY, STELLO_BENCH_INFLIGHT (1000), STELLO_OTHER_API_KEY, STELLO_SLOW_LLM_URL,
STELLO_BENCH_LONG_TURNS (10,100,1000), STELLO_BENCH_PAGE_SESSION. Exit status: 0 clean run,
1 errors (on either server) or a failed/aborted run, 2 usage. Ctrl-C / SIGTERM stop the phases,
clean up and still print the JSON. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import math
import multiprocessing
import os
import resource
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
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

ALL_PHASES = ("tree", "spaces", "turns", "ws", "forks", "longsession", "inflight", "messagepage",
              "usage", "resume", "cancel")
DEFAULT_PHASES = ("tree", "spaces", "turns", "ws", "forks")  # the others are opt-in
OURS_ONLY_PHASES = {"inflight": "needs our server on the slow LLM (bench/slow_llm.py); the Node "
                                "original has a fake LLM without delay, so it is not run there",
                    "messagepage": "the Node original has no paged message list",
                    "usage": "usage accounting is ours: the Node original has no usage routes",
                    "resume": "session.resume is ours; the Node original cannot resume",
                    "cancel": "turn.cancel is ours; the Node original cannot cancel a turn"}
PAGE_SMALL_TURNS = 50  # the messagepage phase's short session: 100 messages
TREE_FORKS = 8
# Every space of a run is labelled `stello-bench-<run>-...`, so the final cleanup finds them all.
LABEL = f"stello-bench-{os.getpid():x}{int(time.time()) & 0xFFFF:04x}"
SETUP_TIMEOUT = 60.0  # seconds for creating one set of fixtures
CLEANUP_TIMEOUT = 30.0  # seconds for deleting spaces (after the spaces phase, and at the end)
LIST_TIMEOUT = 10.0  # seconds for listing this run's spaces before the final cleanup
RSS_INTERVAL = 0.1  # seconds between two RSS samples
MAX_ERROR_SAMPLES = 5
INFLIGHT_PER_SPACE = 100  # sessions forked from one main session for the inflight phase
INFLIGHT_CONNECT_CONCURRENCY = 64  # WebSocket handshakes at a time while setting up
# REST turns per HTTP client in the inflight phase. httpx's pool checks every connection it
# holds whenever a response closes (a readability syscall each): one pool of 500 connections
# made the client's own CPU, O(turns^2), a second of the phase's wall time.
INFLIGHT_TURNS_PER_CLIENT = 25
LONG_MAX_CONSECUTIVE_ERRORS = 20  # the longsession phase gives up after this many in a row


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
    repeat: int = 1
    compare_base_url: str | None = None
    ws_words: int = 0  # words added to each streamed input: the echo streams one chunk each
    compare_api_key: str | None = None
    compare_pids: tuple[int, ...] = ()
    inflight: int = 1000
    inflight_ws: str = "message"
    inflight_timeout: float = 120.0
    other_api_key: str | None = None
    slow_llm_url: str | None = None
    long_turns: tuple[int, ...] = (10, 100, 1000)
    page_session: tuple[str, str] | None = None  # (space, session) of a long seeded history
    long_sample: int = 20
    long_seconds: float = 600.0


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
    parser.add_argument("--ws-words", type=int, default=env("STELLO_BENCH_WS_WORDS", "0"),
                        help="words added to each streamed input (the offline echo streams a "
                             "chunk per word: long replies)")
    parser.add_argument("--phases", default=env("STELLO_BENCH_PHASES", ",".join(DEFAULT_PHASES)),
                        help=f"comma-separated, from {','.join(ALL_PHASES)}")
    parser.add_argument("--output", default=os.environ.get("STELLO_BENCH_OUTPUT") or None,
                        help="also write the JSON to this file")
    parser.add_argument("--timeout", type=float, default=None,
                        help="hard limit of the whole run in seconds (default: from the phases)")
    parser.add_argument("--repeat", type=int, default=env("STELLO_BENCH_REPEAT", "1"),
                        help="runs of every phase per server; the figures are their medians")
    parser.add_argument("--compare-base-url", default=env("STELLO_COMPARE_BASE_URL", "") or None,
                        help="a second server (the Node original) measured in the same sitting, "
                             "phase by phase, alternating with ours (loopback only)")
    parser.add_argument("--compare-api-key", default=env("STELLO_COMPARE_API_KEY", "") or None,
                        help="API key for --compare-base-url (STELLO_COMPARE_API_KEY)")
    parser.add_argument("--inflight", type=int, default=env("STELLO_BENCH_INFLIGHT", "1000"),
                        help="inflight phase: turns held in flight at once (half REST, half WS)")
    parser.add_argument("--inflight-ws", choices=("message", "stream"), default="message",
                        help="inflight phase: session.message (turn.complete) or session.stream")
    parser.add_argument("--inflight-timeout", type=float, default=120.0,
                        help="inflight phase: seconds until a turn still in flight is an error")
    parser.add_argument("--other-api-key", default=env("STELLO_OTHER_API_KEY", "") or None,
                        help="inflight phase: a second tenant's key; it reads its own session "
                             "tree during the phase (STELLO_OTHER_API_KEY)")
    parser.add_argument("--slow-llm-url", default=env("STELLO_SLOW_LLM_URL", "") or None,
                        help="inflight phase: bench/slow_llm.py's base URL, to report how many "
                             "LLM calls the server held at once (STELLO_SLOW_LLM_URL)")
    parser.add_argument("--long-turns", default=env("STELLO_BENCH_LONG_TURNS", "10,100,1000"),
                        help="longsession phase: history sizes (turns) to measure at")
    parser.add_argument("--long-sample", type=int, default=20,
                        help="longsession phase: measured turns at each history size")
    parser.add_argument("--long-seconds", type=float, default=600.0,
                        help="longsession phase: time limit of one run")
    parser.add_argument("--page-session", default=env("STELLO_BENCH_PAGE_SESSION", ""),
                        help="messagepage phase: SPACE_ID/SESSION_ID of a long history, e.g. "
                             "made by `manage.py seedhistory SPACE_ID --messages 100000`")
    args = parser.parse_args(argv)

    api_key = os.environ.get("STELLO_API_KEY", "").strip()
    if not api_key:
        parser.error("set STELLO_API_KEY (manage.py createapikey <user> prints one)")
    base_urls = tuple(u.strip().rstrip("/") for u in args.base_urls.split(",") if u.strip())
    if not base_urls:
        parser.error("no base URL (STELLO_BASE_URLS / STELLO_BASE_URL / --base-urls)")
    compare = args.compare_base_url.strip().rstrip("/") if args.compare_base_url else None
    for url in base_urls + ((compare,) if compare else ()):
        problem = loopback_problem(url)
        if problem:
            parser.error(f"refusing {url!r}: {problem}")
    if compare and not args.compare_api_key:
        parser.error("--compare-base-url needs --compare-api-key (STELLO_COMPARE_API_KEY)")
    if args.slow_llm_url and loopback_problem(args.slow_llm_url):
        parser.error(f"refusing --slow-llm-url {args.slow_llm_url!r}: "
                     f"{loopback_problem(args.slow_llm_url)}")
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    unknown = sorted(set(phases) - set(ALL_PHASES))
    if unknown or not phases:
        parser.error(f"--phases: unknown {unknown}; choose from {','.join(ALL_PHASES)}")
    if min(args.clients, args.ws_connections, args.ws_turns, args.repeat, args.inflight,
           args.long_sample) < 1 or args.seconds <= 0:
        parser.error("--clients, --ws-connections, --ws-turns, --repeat, --inflight, "
                     "--long-sample and --seconds must be positive")
    try:
        long_turns = tuple(sorted({int(t) for t in args.long_turns.split(",") if t.strip()}))
    except ValueError:
        parser.error(f"--long-turns must be comma-separated integers, not {args.long_turns!r}")
    if not long_turns or long_turns[0] < 0:
        parser.error("--long-turns needs at least one history size >= 0")
    phases = tuple(p for p in ALL_PHASES if p in phases)
    page_session = tuple(args.page_session.strip().split("/")) if args.page_session else None
    if page_session is not None and len(page_session) != 2:
        parser.error("--page-session must be SPACE_ID/SESSION_ID")
    if "messagepage" in phases and page_session is None:
        parser.error("the messagepage phase needs --page-session (STELLO_BENCH_PAGE_SESSION)")
    targets = 2 if compare else 1
    runs = args.repeat * targets
    per_phase = args.warmup + args.seconds + 2 * args.grace + 5
    budget = SETUP_TIMEOUT * runs + 2 * CLEANUP_TIMEOUT * targets + LIST_TIMEOUT * targets
    for phase in phases:
        if phase == "longsession":
            budget += (args.long_seconds + 10) * runs
        elif phase == "messagepage":  # two measured runs, and 50 turns of setup
            budget += 2 * per_phase * runs + SETUP_TIMEOUT
        elif phase == "inflight":
            budget += inflight_setup_timeout(args.inflight) + (
                args.inflight_timeout + 30) * args.repeat + CLEANUP_TIMEOUT
        else:
            budget += per_phase * runs
    timeout = args.timeout or budget + (CLEANUP_TIMEOUT * runs if "spaces" in phases else 0)
    if timeout <= 2 * CLEANUP_TIMEOUT + LIST_TIMEOUT + 15:
        parser.error(f"--timeout must be more than {2 * CLEANUP_TIMEOUT + LIST_TIMEOUT + 15:.0f} s")
    return Config(
        base_urls=base_urls, api_key=api_key, clients=args.clients, seconds=args.seconds,
        warmup=max(0.0, args.warmup), grace=max(0.5, args.grace),
        ws_connections=args.ws_connections, ws_turns=args.ws_turns, phases=phases,
        output=args.output, server_pids=parse_pids(os.environ.get("STELLO_SERVER_PIDS", "")),
        timeout=timeout, repeat=args.repeat, compare_base_url=compare,
        compare_api_key=args.compare_api_key, ws_words=max(0, args.ws_words),
        compare_pids=parse_pids(os.environ.get("STELLO_COMPARE_SERVER_PIDS", "")),
        inflight=args.inflight, inflight_ws=args.inflight_ws,
        inflight_timeout=max(1.0, args.inflight_timeout), other_api_key=args.other_api_key,
        slow_llm_url=args.slow_llm_url.rstrip("/") if args.slow_llm_url else None,
        long_turns=long_turns, long_sample=args.long_sample,
        long_seconds=max(1.0, args.long_seconds), page_session=page_session,
    )


def inflight_setup_timeout(count: int) -> float:
    """Seconds allowed for forking the inflight phase's sessions and connecting its sockets."""
    return SETUP_TIMEOUT + 0.2 * count


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

    def __init__(self, config: Config, timeout_seconds: float | None = None) -> None:
        pool = max(config.clients, config.ws_connections)
        limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
        timeout = httpx.Timeout(timeout_seconds or config.seconds + config.grace, connect=5.0)
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
    cpu = CpuWindow(config.server_pids)
    elapsed = await run_workers(count, worker, stats, config.seconds, config.grace)
    return {"concurrency": count, **(extra or {}), **stats.report(elapsed, rate_name),
            "cpuMsPerOp": cpu.per_op(len(stats.latencies_ms))}


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
class InflightFixtures:
    """The inflight phase's sessions, (space, session) pairs, built once per sitting."""

    rest: list[tuple[str, str]] = field(default_factory=list)
    ws: list[tuple[str, str]] = field(default_factory=list)
    other_space: str | None = None  # the second tenant's space (its session tree is read)
    setup_seconds: float = 0.0


@dataclass
class Shared:
    """What every run on one server shares: the spaces to delete (also the second tenant's)
    and the inflight phase's sessions."""

    space_ids: list[str] = field(default_factory=list)
    other_space_ids: list[str] = field(default_factory=list)
    other_api: Api | None = None
    inflight: InflightFixtures | None = None


@dataclass
class Fixtures:
    """Spaces and sessions the phases of one run work on; `space_ids` is everything to delete
    (the list of `shared`, so every run of a server adds to the same list)."""

    space_ids: list[str] = field(default_factory=list)
    tree_space: str | None = None
    work_space: str | None = None
    turn_sessions: list[str] = field(default_factory=list)
    ws_sessions: list[str] = field(default_factory=list)
    resume_sessions: list[str] = field(default_factory=list)
    cancel_sessions: list[str] = field(default_factory=list)
    fork_sources: list[str] = field(default_factory=list)
    page_small: tuple[str, str] | None = None  # the messagepage phase's 100-message session
    shared: Shared = field(default_factory=Shared)

    @classmethod
    def of(cls, shared: Shared) -> Fixtures:
        return cls(space_ids=shared.space_ids, shared=shared)


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
    if "messagepage" in config.phases:
        space, main = await create_space(api, fixtures, f"{LABEL}-pages")
        for n in range(PAGE_SMALL_TURNS):
            await api.call("POST", f"/spaces/{space}/sessions/{main}/turn",
                           {"input": f"page fixture turn {n}"})
        fixtures.page_small = (space, main)
    if "tree" in config.phases:
        fixtures.tree_space, main = await create_space(api, fixtures, f"{LABEL}-tree")
        await fork_many(api, fixtures.tree_space, main, TREE_FORKS, "branch")
    if not {"turns", "ws", "forks", "resume", "cancel"} & set(config.phases):
        return
    fixtures.work_space, main = await create_space(api, fixtures, f"{LABEL}-work")
    space = fixtures.work_space
    if "turns" in config.phases:
        fixtures.turn_sessions = await fork_many(api, space, main, config.clients, "turns")
    if "ws" in config.phases:
        fixtures.ws_sessions = await fork_many(api, space, main, config.ws_connections, "ws")
    if "resume" in config.phases:
        fixtures.resume_sessions = await fork_many(api, space, main, config.ws_connections,
                                                   "resume")
    if "cancel" in config.phases:
        fixtures.cancel_sessions = await fork_many(api, space, main, config.ws_connections,
                                                   "cancel")
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
    result = {"spacesDeleted": len(known) + len(stray) - len(left), "notDeleted": left}
    other = fixtures.shared.other_api
    if other is not None:  # the second tenant's space (inflight phase)
        own = list(dict.fromkeys(fixtures.shared.other_space_ids))
        stray = [s for s in await labelled_spaces(other) if s not in set(own)]
        other_left = await delete_spaces(other, own + stray, config.clients)
        result["otherTenantSpacesDeleted"] = len(own) + len(stray) - len(other_left)
        result["notDeleted"] = left + other_left
    return result


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


async def phase_messagepage(api: Api, config: Config, fixtures: Fixtures) -> dict[str, Any]:
    """GET .../messages?limit=50 (the newest page, and the page before it through the cursor)
    in a 100-message session and in the long seeded one: keyset pages should cost the same."""
    results: dict[str, Any] = {}
    assert fixtures.page_small is not None and config.page_session is not None
    for name, (space, session) in (("small", fixtures.page_small),
                                   ("long", config.page_session)):
        base = f"/spaces/{space}/sessions/{session}/messages?limit=50"
        first = await api.call("GET", base)
        cursor = first["nextCursor"]
        paths = [base, f"{base}&before={cursor}" if cursor else base]
        worker = request_loop(api, "GET", lambda i, paths=paths: paths[i % 2])
        results[name] = await run_phase(config, config.clients, worker, "reqPerSec",
                                        {"newestId": first["messages"][-1]["id"]
                                         if first["messages"] else None})
    small, long = (results[k].get("latencyMs") or {} for k in ("small", "long"))
    if small.get("p50") and long.get("p50"):
        results["longOverSmallP50"] = round(long["p50"] / small["p50"], 3)
    return results


async def phase_usage(api: Api, config: Config, fixtures: Fixtures) -> dict[str, Any]:
    """Usage reads, alternating the caller's usage by day and the work space's by session:
    they sum the daily rollup, so they should not slow down as calls pile up (run it after
    `turns`, or against a database with many recorded calls)."""
    paths = ("/usage?groupBy=day", f"/spaces/{fixtures.work_space}/usage?groupBy=session")
    worker = request_loop(api, "GET", lambda i: paths[i % 2])
    return await run_phase(config, config.clients, worker, "reqPerSec")


async def phase_longsession(api: Api, config: Config, fixtures: Fixtures) -> dict[str, Any]:
    """One session, sequential turns: the latency of `long_sample` turns once the session has
    each of `long_turns` turns of history; the turns in between (driving the history up) are
    not measured. Stops at `long_seconds` with what it has measured."""
    space, main = await create_space(api, fixtures, f"{LABEL}-long")
    session = (await fork_many(api, space, main, 1, "long"))[0]
    path = f"/spaces/{space}/sessions/{session}/turn"
    started = time.perf_counter()
    deadline = started + config.long_seconds
    driving, history, stopped = Stats(), 0, None
    checkpoints: dict[str, Any] = {}
    medians: dict[str, float] = {}
    errors: Counter = Counter()
    samples: list[str] = []

    async def turn(stats: Stats) -> bool:
        nonlocal history
        before = sum(stats.errors.values())
        await api.timed(stats, "POST", path, {"input": f"long session turn {history}"})
        if sum(stats.errors.values()) > before:
            return False
        history += 1
        return True

    async def run_turns(stats: Stats, until: Callable[[], bool]) -> str | None:
        failed_in_a_row = 0
        while not until():
            if time.perf_counter() >= deadline:
                return f"--long-seconds ({config.long_seconds:g} s) ran out at {history} turns"
            if await turn(stats):
                failed_in_a_row = 0
            else:
                failed_in_a_row += 1
                if failed_in_a_row >= LONG_MAX_CONSECUTIVE_ERRORS:
                    return f"{failed_in_a_row} turns failed in a row at {history} turns"
        return None

    for size in config.long_turns:
        stopped = await run_turns(driving, lambda size=size: history >= size)
        if stopped:
            break
        measured = Stats()
        start_history = history
        stopped = await run_turns(
            measured, lambda start=start_history: history - start >= config.long_sample)
        errors.update(measured.errors)
        samples.extend(s for s in measured.error_samples if s not in samples)
        if measured.latencies_ms:
            medians[str(size)] = round(statistics.median(measured.latencies_ms), 2)
        checkpoints[str(size)] = {
            "historyTurns": [start_history, history - 1], "turns": len(measured.latencies_ms),
            "latencyMs": latency_summary(measured.latencies_ms),
            "errors": sum(measured.errors.values()),
        }
        if stopped:
            break
    errors.update(driving.errors)
    samples.extend(s for s in driving.error_samples if s not in samples)
    first, last = str(config.long_turns[0]), str(config.long_turns[-1])
    growth = (round(medians[last] / medians[first], 3)
              if first in medians and last in medians and medians[first] > 0 else None)
    return {
        "historySizes": list(config.long_turns), "turnsPerSize": config.long_sample,
        "medianMs": medians,
        "growthRatio": growth,
        "growthRatioOf": f"median latency at {last} / at {first} turns of history",
        "target": "<= 1.3",
        "targetMet": None if growth is None else growth <= 1.3,
        "checkpoints": checkpoints,
        "turnsDone": history,
        "stopped": stopped,
        "elapsedSeconds": round(time.perf_counter() - started, 3),
        "errors": sum(errors.values()),
        "errorKinds": dict(errors),
        "errorSamples": samples[:MAX_ERROR_SAMPLES],
    }


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


def ws_error(stats: Stats, exc: BaseException, prefix: str = "") -> None:
    if isinstance(exc, FrameError):
        stats.error(f"{prefix}error frame", str(exc))
    elif isinstance(exc, websockets.InvalidStatus):
        stats.error(f"{prefix}handshake HTTP {exc.response.status_code}", str(exc))
    else:
        stats.error(f"{prefix}{type(exc).__name__}", str(exc))


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
    words = "".join(f" w{i}" for i in range(config.ws_words))
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
                    first, total = await stream_turn(ws, f"benchmark stream {n}{words}",
                                                     deadline)
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
        cpu = CpuWindow(config.server_pids)
        limit = line.at + config.seconds + config.grace + 1 - time.perf_counter()
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, limit))
        for _task in pending:
            record.stats.error("cut off at the phase time limit")
    finally:
        await cancel_all(tasks)
    streams = len(record.stream_ms)
    cpu_per_stream = cpu.per_op(streams)
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
        "cpuMsPerOp": cpu_per_stream,
    }
    if not record.connect_ms:
        result["hint"] = ("no connection entered its session: is the WebSocket endpoint "
                          "/spaces/{spaceId}/ws served? (see errorSamples)")
    return result


# --------------------------------------------------------------------------- inflight phase


async def build_inflight(api: Api, config: Config, fixtures: Fixtures) -> InflightFixtures:
    """`--inflight` sessions forked from the main sessions of a few spaces (INFLIGHT_PER_SPACE
    each; forks of one source are serialised, the spaces go in parallel), alternately for REST
    and WebSocket; and, with --other-api-key, the second tenant's space with a small tree."""
    started = time.perf_counter()
    count = config.inflight
    spaces = math.ceil(count / INFLIGHT_PER_SPACE)

    async def one_space(k: int) -> list[tuple[str, str]]:
        space, main = await create_space(api, fixtures, f"{LABEL}-inflight-{k}")
        children = await fork_many(api, space, main,
                                   min(INFLIGHT_PER_SPACE, count - k * INFLIGHT_PER_SPACE),
                                   "inflight")
        return [(space, child) for child in children]

    groups = await asyncio.gather(*(one_space(k) for k in range(spaces)))
    pairs = [pair for group in groups for pair in group]
    built = InflightFixtures(rest=pairs[0::2], ws=pairs[1::2])
    if config.other_api_key:
        shared = fixtures.shared
        if shared.other_api is None:
            shared.other_api = Api(replace(config, api_key=config.other_api_key),
                                   timeout_seconds=config.inflight_timeout)
        other = Fixtures(space_ids=shared.other_space_ids)
        built.other_space, main = await create_space(shared.other_api, other,
                                                     f"{LABEL}-other-tenant")
        await fork_many(shared.other_api, built.other_space, main, TREE_FORKS, "branch")
    built.setup_seconds = round(time.perf_counter() - started, 3)
    return built


async def slow_llm_stats(url: str | None, reset: bool = False) -> dict[str, Any] | None:
    """bench/slow_llm.py's counters (POST .../stats/reset first resets its maximum)."""
    if not url:
        return None
    root = url.removesuffix("/v1")
    try:
        async with httpx.AsyncClient(base_url=root, timeout=5.0, trust_env=False) as client:
            response = await (client.post("/stats/reset") if reset else client.get("/stats"))
        return orjson.loads(response.content) if response.is_success else None
    except (httpx.HTTPError, orjson.JSONDecodeError):
        return None


class InFlight:
    """Counts the turns sent and not answered yet, and the most at any one time."""

    def __init__(self) -> None:
        self.now = 0
        self.max = 0

    def __enter__(self) -> InFlight:
        self.now += 1
        self.max = max(self.max, self.now)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.now -= 1


async def inflight_ws_turn(ws, mode: str, text: str, deadline: float) -> None:
    """One session.message (until turn.complete) or session.stream (until stream.end)."""
    await ws.send(orjson.dumps({"type": f"session.{mode}", "input": text}).decode())
    last = "turn.complete" if mode == "message" else "stream.end"
    while (await next_frame(ws, deadline)).get("type") != last:
        pass


def other_tenant_process(config: Config, space: str, go: Any, stop: Any, out: Any) -> None:
    """The second tenant, in a process of its own: another user's client, whose reads must not
    wait behind this process's own thousand turns. Opens its connection and says "ready" on
    `out`, reads its session tree one request after another from `go` until `stop` (both
    `multiprocessing.Event`s), then sends back (latencies ms, error counts, error samples)."""
    asyncio.run(_other_tenant_reads(config, space, go, stop, out))


async def _other_tenant_reads(config: Config, space: str, go: Any, stop: Any, out: Any) -> None:
    stats = Stats()
    path = f"/spaces/{space}/sessions"
    api = Api(replace(config, api_key=config.other_api_key),
              timeout_seconds=config.inflight_timeout)
    try:
        await api.call("GET", path)
        out.send("ready")
        await asyncio.to_thread(go.wait)
        while not stop.is_set():
            await api.timed(stats, "GET", path)
    finally:
        await api.aclose()
    out.send((stats.latencies_ms, dict(stats.errors), stats.error_samples))


class OtherTenant:
    """Starts `other_tenant_process` and collects what it measured."""

    def __init__(self, config: Config, space: str) -> None:
        context = multiprocessing.get_context("spawn")
        self.go, self.stop = context.Event(), context.Event()
        self._answers, out = context.Pipe(duplex=False)
        self.process = context.Process(target=other_tenant_process, daemon=True,
                                       args=(config, space, self.go, self.stop, out))

    async def start(self) -> None:
        self.process.start()
        if await asyncio.to_thread(self._answers.poll, 60) and self._answers.recv() == "ready":
            return
        raise RuntimeError("the other tenant's reader did not start")

    async def finish(self, into: Stats) -> None:
        self.stop.set()
        if await asyncio.to_thread(self._answers.poll, 60):
            latencies, errors, samples = self._answers.recv()
            into.latencies_ms += latencies
            into.errors.update(errors)
            into.error_samples += samples
        await asyncio.to_thread(self.process.join, 10)
        if self.process.is_alive():
            self.process.kill()


async def phase_inflight(api: Api, config: Config, fixtures: Fixtures) -> dict[str, Any]:
    """`--inflight` turns in flight at once, each on its own session: half REST
    POST .../turn, half WebSocket session.message / session.stream. Set-up (forks, WebSocket
    connect + session.enter, one keep-alive HTTP connection per REST turn) is not counted;
    then every turn is started at once and the phase waits for all (at most
    --inflight-timeout). Meanwhile the second tenant reads its own session tree."""
    shared = fixtures.shared
    if shared.inflight is None:
        shared.inflight = await asyncio.wait_for(build_inflight(api, config, fixtures),
                                                 inflight_setup_timeout(config.inflight))
    built = shared.inflight
    headers = {"X-API-Key": config.api_key, "Content-Type": "application/json"}
    pool = INFLIGHT_TURNS_PER_CLIENT + 1
    limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool,
                          keepalive_expiry=config.inflight_timeout + 60)
    timeout = httpx.Timeout(config.inflight_timeout)
    # REST turn i goes to base URL i mod #URLs, through client i // INFLIGHT_TURNS_PER_CLIENT
    # of that URL (its warm-up too, so it finds its connection open).
    per_url = math.ceil(len(built.rest) / INFLIGHT_TURNS_PER_CLIENT) or 1
    clients = [[httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=timeout,
                                  http1=True, http2=False, trust_env=False)
                for _ in range(per_url)] for url in config.base_urls]

    def client_for(index: int) -> httpx.AsyncClient:
        return clients[index % len(clients)][index // INFLIGHT_TURNS_PER_CLIENT]
    stats, rest_ms, ws_ms = Stats(), [], []
    sockets: list[Any] = []
    tasks: list[asyncio.Task] = []
    reader: OtherTenant | None = None
    other = Stats()
    gate = asyncio.Semaphore(INFLIGHT_CONNECT_CONCURRENCY)
    setup_deadline = time.perf_counter() + inflight_setup_timeout(len(built.ws))
    setup_errors = Stats()

    async def connect(index: int, space: str, session: str) -> Any:
        url = ws_url(config.base_urls[index % len(config.base_urls)], space)
        async with gate:
            try:
                ws = await ws_connect(url, additional_headers={"X-API-Key": config.api_key},
                                      open_timeout=30, close_timeout=2, max_size=2**24,
                                      proxy=None, ping_interval=None)
            except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                ws_error(setup_errors, exc)
                return None
            try:
                await enter(ws, session, setup_deadline)
            except (OSError, TimeoutError, websockets.WebSocketException, FrameError) as exc:
                ws_error(setup_errors, exc)
                await ws.close()
                return None
            return ws

    async def warm(index: int, space: str, session: str) -> None:
        """Opens this REST turn's keep-alive connection (the requests run concurrently, so
        each needs its own)."""
        try:
            response = await client_for(index).get(
                f"/spaces/{space}/sessions/{session}")
            if response.status_code != 200:
                setup_errors.error(f"warm-up HTTP {response.status_code}", response.text)
        except httpx.HTTPError as exc:
            setup_errors.error(f"warm-up {type(exc).__name__}", str(exc))

    counter = InFlight()

    async def rest_turn(index: int, space: str, session: str, deadline: float) -> None:
        started = time.perf_counter()
        with counter:
            try:
                response = await client_for(index).post(
                    f"/spaces/{space}/sessions/{session}/turn",
                    content=orjson.dumps({"input": f"inflight REST turn {index}"}))
            except httpx.HTTPError as exc:
                stats.error(f"REST {type(exc).__name__}", str(exc) or repr(exc))
                return
        if response.status_code != 200:
            stats.error(f"REST HTTP {response.status_code}", response.text)
            return
        stats.ok(started)
        rest_ms.append(stats.latencies_ms[-1])

    async def ws_turn(index: int, ws: Any, deadline: float) -> None:
        started = time.perf_counter()
        with counter:
            try:
                await inflight_ws_turn(ws, config.inflight_ws, f"inflight WS turn {index}",
                                       deadline)
            except (OSError, TimeoutError, websockets.WebSocketException, FrameError) as exc:
                ws_error(stats, exc, "WS ")
                return
        stats.ok(started)
        ws_ms.append(stats.latencies_ms[-1])

    try:
        if built.other_space:  # first: the REST turns' connections are opened just before
            reader = OtherTenant(config, built.other_space)
            await reader.start()
        connect_started = time.perf_counter()
        sockets = await asyncio.gather(*(connect(i, space, session)
                                         for i, (space, session) in enumerate(built.ws)))
        connect_seconds = time.perf_counter() - connect_started
        await asyncio.gather(*(warm(i, space, session)
                               for i, (space, session) in enumerate(built.rest)))
        llm_before = await slow_llm_stats(config.slow_llm_url, reset=True)
        if reader is not None:
            reader.go.set()
        started = time.perf_counter()
        deadline = started + config.inflight_timeout
        tasks = [asyncio.create_task(rest_turn(i, space, session, deadline))
                 for i, (space, session) in enumerate(built.rest)]
        tasks += [asyncio.create_task(ws_turn(i, ws, deadline))
                  for i, ws in enumerate(sockets) if ws is not None]
        _, pending = await asyncio.wait(tasks, timeout=config.inflight_timeout + 1)
        wall = time.perf_counter() - started
        if pending:
            stats.errors["cut off at --inflight-timeout"] += len(pending)
        other_seconds = time.perf_counter() - started
        if reader is not None:
            await reader.finish(other)
            reader = None
        llm_after = await slow_llm_stats(config.slow_llm_url)
    finally:
        if reader is not None:  # failed or cancelled midway
            reader.stop.set()
            reader.process.kill()
        await cancel_all(tasks)
        await asyncio.gather(*(ws.close() for ws in sockets if ws is not None),
                             return_exceptions=True)
        await asyncio.gather(*(c.aclose() for shard in clients for c in shard),
                             return_exceptions=True)
    not_connected = sum(1 for ws in sockets if ws is None)
    if not_connected:
        stats.errors["WS not connected/entered in set-up"] += not_connected
        for sample in setup_errors.error_samples:
            stats.error("set-up", sample)
    if other.latencies_ms or other.errors:
        tenant: dict[str, Any] = {
            "reads": len(other.latencies_ms),
            "readsPerSec": round(len(other.latencies_ms) / other_seconds, 2),
            "latencyMs": latency_summary(other.latencies_ms),
            "errors": sum(other.errors.values()), "errorKinds": dict(other.errors),
            "errorSamples": other.error_samples,
        }
    else:
        tenant = {"skipped": "no --other-api-key (STELLO_OTHER_API_KEY)"
                  if not built.other_space else "no read finished"}
    return {
        "inflight": len(built.rest) + len(built.ws),
        "rest": len(built.rest), "ws": len(built.ws), "wsMode": f"session.{config.inflight_ws}",
        "ok": len(stats.latencies_ms),
        "errors": sum(stats.errors.values()),
        "wallSeconds": round(wall, 3),
        "maxInFlight": counter.max,
        "latencyMs": latency_summary(stats.latencies_ms),
        "restLatencyMs": latency_summary(rest_ms),
        "wsLatencyMs": latency_summary(ws_ms),
        "llm": slow_llm_report(llm_before, llm_after),
        "otherTenant": tenant,
        "setupSeconds": built.setup_seconds,
        "wsConnectSeconds": round(connect_seconds, 3),
        "setupErrors": sum(setup_errors.errors.values()),
        "errorKinds": dict(stats.errors),
        "errorSamples": stats.error_samples,
    }


def slow_llm_report(before: dict[str, Any] | None,
                    after: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the slow LLM saw during the phase: calls, and the most it held at once."""
    if not before or not after:
        return None
    return {
        "calls": after.get("requests", 0) - before.get("requests", 0),
        "maxInFlight": after.get("maxInFlight"),
        "delaySeconds": after.get("delaySeconds"),
    }


# --------------------------------------------------------------------------- CPU per operation

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PROCESS_GROUPS = {"postgres": "postgres", "redis": "redis-server"}  # group: process name


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def named_processes() -> dict[str, list[int]]:
    """The pids of this machine's database and Redis servers, by group (from /proc comm)."""
    found: dict[str, list[int]] = {group: [] for group in PROCESS_GROUPS}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if entry.name.isdigit():
            try:
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue
            for group, name in PROCESS_GROUPS.items():
                if comm == name:
                    found[group].append(int(entry.name))
    return found


class CpuWindow:
    """CPU spent by each party during a phase's measured window, per operation: the server
    (its pids, when given), PostgreSQL and Redis (every process of that name on the machine:
    run nothing else on them meanwhile) and this client. On a machine where they share the
    cores, the sum is what bounds the rate; it says where a gap between two servers lies."""

    def __init__(self, server_pids: tuple[int, ...]) -> None:
        self.server_pids = server_pids
        self.start = self._snapshot()

    def _snapshot(self) -> dict[str, float]:
        groups = named_processes()  # backends come and go: found again each time
        times = os.times()
        snapshot = {"client": times.user + times.system}
        if self.server_pids:
            snapshot["server"] = sum(map(process_cpu_seconds, self.server_pids))
        for group, pids in groups.items():
            snapshot[group] = sum(map(process_cpu_seconds, pids))
        return snapshot

    def per_op(self, operations: int) -> dict[str, float] | None:
        """Milliseconds of CPU per operation since the window opened, by party (None when
        nothing was done). A process that ended inside the window is not counted."""
        end = self._snapshot()
        if operations <= 0:
            return None
        return {group: round(max(end[group] - self.start.get(group, 0.0), 0.0) * 1000
                             / operations, 3) for group in end}


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


# --------------------------------------------------------------------------- resume phase

RESUME_TARGET_P50_MS = 50.0  # the target: missed events within 50 ms p50, one machine
CANCEL_TARGET_P50_MS = 100.0  # a cancel from another process stops the turn within 100 ms
RESUME_WORDS = " ".join(f"w{n}" for n in range(32))  # the offline LLM streams one chunk a word


@dataclass
class ResumeStats(Stats):
    """`latencies_ms` are the resumes after a disconnect (send of `session.resume` to the
    frame that ends the turn); `baseline_ms` the resumes with nothing missed (send to
    `session.entered`); `entered_ms` the timed resumes' part up to `session.entered` (the
    rest is the replay, and the end of the turn if it was still running); `missed` how many
    events each timed resume replayed."""

    baseline_ms: list[float] = field(default_factory=list)
    entered_ms: list[float] = field(default_factory=list)
    missed: list[float] = field(default_factory=list)


@dataclass
class ResumeClient:
    """One client's session: every event up to `seen_seq` has reached the client, and
    `is_newest` says that no event came after it (false once a turn was cut off half-way: the
    next resume then replays the rest, and is not a nothing-missed baseline)."""

    space_id: str
    session_id: str
    seen_seq: int = 0
    is_newest: bool = True
    turns: int = 0  # numbers the inputs, so a turn is known by its `turn.started`


class ResumeMismatch(Exception):
    """The resumed events are not the turn: a seq out of order, a chunk lost, another ending."""


def with_p95(samples_ms: list[float]) -> dict[str, float] | None:
    summary = latency_summary(samples_ms)
    if summary is not None:
        summary["p95"] = round(percentile(sorted(samples_ms), 95), 2)
    return summary


async def send_resume(ws, session_id: str, since: int, deadline: float) -> None:
    """`session.resume` and its `session.entered` (which must echo `since`)."""
    await ws.send(orjson.dumps({"type": "session.resume", "sessionId": session_id,
                                "since": since}).decode())
    while True:
        frame = await next_frame(ws, deadline)
        if frame.get("type") == "session.entered":
            if frame.get("seq") != since:
                raise ResumeMismatch(f"session.entered at seq {frame.get('seq')}, not {since}")
            return


async def stream_until_first_delta(ws, since: int, since_is_newest: bool, text: str,
                                   deadline: float) -> dict[str, Any]:
    """Sends `session.stream` on a connection resumed from `since` and reads up to its turn's
    first `stream.delta` (returned). The seqs must follow on from `since`. Events of an earlier
    turn may come first only when `since` was not the newest seq; otherwise they are an error
    (a duplicate)."""
    await ws.send(orjson.dumps({"type": "session.stream", "input": text}).decode())
    seq, turn_id = since, None
    while True:
        frame = await next_frame(ws, deadline)
        kind = frame.get("type")
        if "seq" not in frame:
            continue
        if frame["seq"] != seq + 1:
            raise ResumeMismatch(f"{kind} at seq {frame['seq']} after seq {seq}")
        seq = frame["seq"]
        if kind == "turn.started" and frame.get("input") == text:
            turn_id = frame.get("turnId")
        elif turn_id is None:
            if since_is_newest:
                raise ResumeMismatch(f"{kind} (seq {seq}) replayed by a resume from the "
                                     f"newest seq {since}")
        elif kind == "stream.delta" and frame.get("turnId") == turn_id:
            return frame
        else:
            raise ResumeMismatch(f"{kind} before the first stream.delta of turn {turn_id}")


async def resumed_rest_of_turn(ws, first: dict[str, Any], deadline: float) -> tuple[int, int]:
    """Reads the events after `first` up to the turn's `turn.completed`; checks that the seqs
    follow one another and that the chunks, the first one included, make the reply (its last
    round). Returns (events replayed, seq of turn.completed)."""
    seq, turn_id = first["seq"], first["turnId"]
    chunks = [(first.get("round", 0), first.get("chunk", ""))]
    events = 0
    while True:
        frame = await next_frame(ws, deadline)
        kind = frame.get("type")
        if "seq" not in frame:
            continue
        events += 1
        if frame["seq"] != seq + 1 or frame.get("turnId") != turn_id:
            raise ResumeMismatch(f"{kind} at seq {frame['seq']} (turn {frame.get('turnId')}) "
                                 f"after seq {seq} of turn {turn_id}")
        seq = frame["seq"]
        if kind == "stream.delta":
            chunks.append((frame.get("round", 0), frame.get("chunk", "")))
        elif kind == "turn.completed":
            break
        elif kind in ("turn.failed", "turn.cancelled"):
            raise ResumeMismatch(f"the turn ended with {kind}: {frame.get('error', '')}")
    final = ((frame.get("result") or {}).get("turn") or {}).get("finalContent")
    last_round = max(r for r, _ in chunks)
    text = "".join(c for r, c in chunks if r == last_round)
    if not final or text != final:
        raise ResumeMismatch(f"chunks make {text[:60]!r}, the reply is {str(final)[:60]!r}")
    return events, seq


def resume_worker(config: Config, clients: list[ResumeClient]) -> Worker:
    """Client `index`, turn after turn on its own session until the phase ends: connect and
    resume from its newest seq (timed to `session.entered`: the nothing-missed baseline), send
    `session.stream`, drop the connection without a close handshake at the first
    `stream.delta`, connect again (to the next base URL, so with several processes the resume
    is served by another one) and resume from that delta's seq: timed until `turn.completed`,
    checking that every chunk arrived once and in order."""

    async def worker(index: int, stats: Stats, stop_at: float) -> None:
        assert isinstance(stats, ResumeStats)
        client = clients[index]
        urls = [ws_url(config.base_urls[(index + k) % len(config.base_urls)], client.space_id)
                for k in (0, 1)]
        headers = {"X-API-Key": config.api_key}
        deadline = stop_at + config.grace
        while time.perf_counter() < stop_at:
            client.turns += 1
            stats.in_flight += 1
            since, since_is_newest = client.seen_seq, client.is_newest
            client.is_newest = False  # until this turn has been seen to its end
            try:
                ws = await ws_connect(urls[0], additional_headers=headers, open_timeout=5,
                                      close_timeout=2, max_size=2**24, proxy=None)
                try:
                    started = time.perf_counter()
                    await send_resume(ws, client.session_id, since, deadline)
                    entered_ms = (time.perf_counter() - started) * 1000
                    text = f"resume benchmark {index}-{client.turns} {RESUME_WORDS}"
                    first = await stream_until_first_delta(ws, since, since_is_newest, text,
                                                           deadline)
                finally:
                    ws.transport.abort()  # abruptly: no close frame, as a lost network does
                client.seen_seq = first["seq"]
                if since_is_newest:
                    stats.baseline_ms.append(entered_ms)
                async with ws_connect(urls[1], additional_headers=headers, open_timeout=5,
                                      close_timeout=2, max_size=2**24, proxy=None) as ws:
                    started = time.perf_counter()
                    await send_resume(ws, client.session_id, first["seq"], deadline)
                    entered_ms = (time.perf_counter() - started) * 1000
                    events, client.seen_seq = await resumed_rest_of_turn(ws, first, deadline)
                    client.is_newest = True
                    stats.ok(started)
                    stats.missed.append(events)
                    stats.entered_ms.append(entered_ms)
            except ResumeMismatch as exc:
                stats.error("resumed events do not match the turn", str(exc))
            except TimeoutError:
                stats.error("cut off at the phase time limit")
            except (OSError, websockets.WebSocketException, FrameError) as exc:
                ws_error(stats, exc)
            finally:
                stats.in_flight -= 1

    return worker


async def phase_resume(api: Api, config: Config, fixtures: Fixtures) -> dict[str, Any]:
    """K clients (--ws-connections), each on its own session, each turn: stream, drop the
    connection at the first delta, reconnect and resume (docs/live-turns.md); the resume is
    timed from `session.resume` to `turn.completed`. Ours only."""
    clients = [ResumeClient(fixtures.work_space or "", session)
               for session in fixtures.resume_sessions]
    worker = resume_worker(config, clients)
    if config.warmup > 0:
        await run_workers(len(clients), worker, ResumeStats(), config.warmup, config.grace)
    stats = ResumeStats()
    elapsed = await run_workers(len(clients), worker, stats, config.seconds, config.grace)
    report = stats.report(elapsed, "resumesPerSec")
    p50 = (report["latencyMs"] or {}).get("p50")
    return {
        "concurrency": len(clients),
        **report,
        "latencyMs": with_p95(stats.latencies_ms),
        "latencyOf": "send of session.resume after a drop at the first stream.delta, "
                     "to turn.completed",
        "target": f"latencyMs.p50 <= {RESUME_TARGET_P50_MS:g}",
        "targetMet": None if p50 is None else p50 <= RESUME_TARGET_P50_MS,
        "enteredMs": with_p95(stats.entered_ms),
        "missedEvents": latency_summary(stats.missed),
        "nothingMissedMs": with_p95(stats.baseline_ms),
    }


# --------------------------------------------------------------------------- cancel phase


@dataclass
class CancelStats(Stats):
    stopped_ms: list[float] = field(default_factory=list)  # cancel sent -> runner hears it


def cancel_worker(config: Config, space: str, sessions: list[str]) -> Worker:
    """Client i: a runner connection on the first server streams turns on its own session; a
    canceller connection on the last server (another process when several are given) cancels
    each turn as soon as the runner has seen it start."""
    headers = {"X-API-Key": config.api_key}
    runner_url = ws_url(config.base_urls[0], space)
    canceller_url = ws_url(config.base_urls[-1], space)
    seen = [0] * len(sessions)  # each session's newest seq: a later run resumes after it

    async def frame_of(ws, wanted: str, deadline: float, index: int = -1) -> dict[str, Any]:
        while True:
            frame = await next_frame(ws, deadline)
            if index >= 0 and isinstance(frame.get("seq"), int):
                seen[index] = max(seen[index], frame["seq"])
            if frame.get("type") == wanted:
                return frame

    async def worker(index: int, stats: Stats, stop_at: float) -> None:
        assert isinstance(stats, CancelStats)
        session = sessions[index]
        deadline = stop_at + config.grace
        try:
            async with ws_connect(runner_url, additional_headers=headers, open_timeout=5,
                                  proxy=None) as runner, \
                    ws_connect(canceller_url, additional_headers=headers, open_timeout=5,
                               proxy=None) as canceller:
                await runner.send(orjson.dumps({"type": "session.resume", "sessionId": session,
                                                "since": seen[index]}).decode())
                await frame_of(runner, "session.entered", deadline)
                await enter(canceller, session, deadline)
                while time.perf_counter() < stop_at:
                    stats.in_flight += 1
                    try:
                        await runner.send(orjson.dumps({"type": "session.stream",
                                                        "input": "a turn to cancel"}).decode())
                        started = await frame_of(runner, "turn.started", deadline, index)
                        sent = time.perf_counter()
                        await canceller.send(orjson.dumps(
                            {"type": "turn.cancel", "turnId": started["turnId"]}).decode())
                        await frame_of(runner, "turn.cancelled", deadline, index)
                        heard = time.perf_counter()
                        reply = await frame_of(canceller, "turn.cancelled", deadline)
                        if reply.get("turnId") != started["turnId"]:
                            raise FrameError(f"cancelled {reply.get('turnId')}")
                        stats.stopped_ms.append((heard - sent) * 1000)
                        stats.latencies_ms.append((time.perf_counter() - sent) * 1000)
                        try:  # the cancelled request's own answer: an error frame
                            await next_frame(runner, deadline)
                        except FrameError:
                            pass
                    finally:
                        stats.in_flight -= 1
        except FrameError as exc:
            stats.error(f"frame: {exc}")
        except (OSError, TimeoutError, websockets.WebSocketException) as exc:
            stats.error(type(exc).__name__)

    return worker


async def phase_cancel(api: Api, config: Config, fixtures: Fixtures) -> dict[str, Any]:
    """Cancel latency (docs/live-turns.md): K clients, each streaming turns on its own session
    through one server and cancelling each from a second connection through the last server
    (give two base URLs to cross processes). Run it against a server on the slow LLM
    (bench/slow_llm.py), so every turn is still waiting on the LLM when it is cancelled.
    Ours only."""
    sessions = fixtures.cancel_sessions
    worker = cancel_worker(config, fixtures.work_space or "", sessions)
    if config.warmup > 0:
        await run_workers(len(sessions), worker, CancelStats(), config.warmup, config.grace)
    stats = CancelStats()
    elapsed = await run_workers(len(sessions), worker, stats, config.seconds, config.grace)
    p50 = (latency_summary(stats.stopped_ms) or {}).get("p50")
    return {
        "concurrency": len(sessions),
        "acrossProcesses": len(config.base_urls) > 1,
        **stats.report(elapsed, "cancelsPerSec"),
        "latencyOf": "turn.cancel sent (second connection) to its turn.cancelled reply",
        "stoppedMs": with_p95(stats.stopped_ms),
        "stoppedOf": "turn.cancel sent to the running connection's turn.cancelled event",
        "target": f"stoppedMs.p50 <= {CANCEL_TARGET_P50_MS:g}",
        "targetMet": None if p50 is None else p50 <= CANCEL_TARGET_P50_MS,
    }


# --------------------------------------------------------------------------- main

PHASES = {
    "tree": ("sessionTree", phase_tree),
    "spaces": ("createSpace", phase_spaces),
    "turns": ("turn", phase_turns),
    "ws": ("wsStream", phase_ws),
    "forks": ("fork", phase_forks),
    "longsession": ("longSession", phase_longsession),
    "inflight": ("inflight", phase_inflight),
    "messagepage": ("messagePage", phase_messagepage),
    "usage": ("usageRead", phase_usage),
    "resume": ("resume", phase_resume),
    "cancel": ("cancel", phase_cancel),
}
# The figures compared with --compare-base-url: (rates: more is better, latencies: less is
# better); dotted paths into a phase's result. For longSession every entry of `medianMs` too.
FIGURES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "sessionTree": (("reqPerSec",), ("latencyMs.p50", "latencyMs.p99")),
    "createSpace": (("reqPerSec",), ("latencyMs.p50", "latencyMs.p99")),
    "turn": (("turnsPerSec",), ("latencyMs.p50", "latencyMs.p99")),
    "wsStream": (("streamsPerSec",),
                 ("firstDeltaMs.p50", "firstDeltaMs.p99", "streamMs.p50", "streamMs.p99")),
    "fork": (("forksPerSec",), ("latencyMs.p50", "latencyMs.p99")),
    "longSession": ((), ("growthRatio",)),
}


@dataclass
class Target:
    """One server of the sitting: ours, or the compare server ("theirs")."""

    name: str
    config: Config
    api: Api
    sampler: RssSampler | None = None
    shared: Shared = field(default_factory=Shared)
    fixtures: list[Fixtures] = field(default_factory=list)  # one set per repeat
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    cleanup: dict[str, Any] | None = None

    async def aclose(self) -> None:
        await self.api.aclose()
        if self.shared.other_api is not None:
            await self.shared.other_api.aclose()


def make_targets(config: Config) -> list[Target]:
    targets = [Target("ours", config, Api(config))]
    if config.compare_base_url:
        theirs = replace(config, base_urls=(config.compare_base_url,),
                         api_key=config.compare_api_key or "", server_pids=config.compare_pids,
                         other_api_key=None, slow_llm_url=None)
        targets.append(Target("theirs", theirs, Api(theirs)))
    for target in targets:
        target.fixtures = [Fixtures.of(target.shared) for _ in range(config.repeat)]
    return targets


async def check_servers(api: Api) -> None:
    """Every base URL must answer (/healthz, or GET /spaces where there is no /healthz, as on
    the Node original) and accept the key (within LIST_TIMEOUT)."""
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
        if not response.is_success and response.status_code != 404:
            raise SystemExit(f"{url}/healthz answered HTTP {response.status_code}")
        key_check = await api.client(i).get("/spaces")
        if key_check.status_code == 401:
            raise SystemExit(f"{url} rejects its API key: {key_check.text[:200]}")
        if not key_check.is_success:
            raise SystemExit(f"{url}/spaces answered HTTP {key_check.status_code}")


async def run_phases(targets: list[Target], config: Config) -> None:
    """Fixtures first (one set per server and repeat), then phase by phase: run 1 on every
    server, run 2 on every server... so that drift over the sitting hits all servers alike."""
    for target in targets:
        for fixtures in target.fixtures:
            await asyncio.wait_for(build_fixtures(target.api, target.config, fixtures),
                                   SETUP_TIMEOUT)
    for phase in config.phases:
        name, run = PHASES[phase]
        for r in range(config.repeat):
            for target in targets:
                if target.name != "ours" and phase in OURS_ONLY_PHASES:
                    continue
                print(f"[bench] {name} on {target.name} (run {r + 1}/{config.repeat}) ...",
                      file=sys.stderr, flush=True)
                result = await run(target.api, target.config, target.fixtures[r])
                target.runs.setdefault(name, []).append(result)
                if target.sampler:
                    target.sampler.mark(name if config.repeat == 1 else f"{name}#{r + 1}")


async def measure(targets: list[Target], config: Config) -> str | None:
    """Runs the phases within the overall time limit; Ctrl-C or SIGTERM stops them early
    (the cleanup still runs). Returns why the run failed, or None."""
    budget = config.timeout - (2 * CLEANUP_TIMEOUT + LIST_TIMEOUT) * len(targets) - 10
    task = asyncio.ensure_future(asyncio.wait_for(run_phases(targets, config), budget))
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
    except (RuntimeError, httpx.HTTPError, KeyError, ValueError, IndexError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return None


# --------------------------------------------------------------------------- medians, ratios


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def median_of(values: list[Any]) -> Any:
    """The median of the numbers, recursively through dicts of the same shape; `any` of
    booleans; otherwise the first value that is not None."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    if all(isinstance(v, dict) for v in present):
        keys = list(dict.fromkeys(k for v in present for k in v))
        return {k: median_of([v.get(k) for v in present]) for k in keys}
    if all(is_number(v) for v in present):
        middle = statistics.median(present)
        if all(isinstance(v, int) for v in present) and middle == int(middle):
            return int(middle)  # counts stay integers
        return round(middle, 3)
    if all(isinstance(v, bool) for v in present):
        return any(present)
    return present[0]


def combine_runs(runs: list[dict[str, Any]], repeat: int) -> dict[str, Any]:
    """Without --repeat: the run itself. With it: the median of every figure over the runs
    done, the errors of all runs (`errorsAllRuns`, `errorKinds` summed, `errorSamples` merged)
    and the runs themselves."""
    if repeat == 1:
        return runs[0]
    figures = {k: v for k, v in median_of(runs).items()
               if k not in ("errorKinds", "errorSamples")}
    kinds: Counter = Counter()
    samples: list[str] = []
    for run in runs:
        kinds.update(run.get("errorKinds") or {})
        samples.extend(x for x in run.get("errorSamples") or () if x not in samples)
    if "growthRatio" in figures:  # the target check follows the median, not the runs
        growth = figures["growthRatio"]
        figures["targetMet"] = None if growth is None else growth <= 1.3
    if "resumesPerSec" in figures:
        p50 = figure(figures, "latencyMs.p50")
        figures["targetMet"] = None if p50 is None else p50 <= RESUME_TARGET_P50_MS
    return {
        "medianOf": len(runs), **figures,
        "errorsAllRuns": sum(run.get("errors", 0) for run in runs),
        "errorKinds": dict(kinds), "errorSamples": samples[:MAX_ERROR_SAMPLES],
        "runs": runs,
    }


def phase_results(target: Target, config: Config) -> dict[str, Any]:
    results = {name: combine_runs(runs, config.repeat)
               for name, runs in target.runs.items() if runs}
    if target.name != "ours":
        for phase, why in OURS_ONLY_PHASES.items():
            if phase in config.phases:
                results[PHASES[phase][0]] = {"skipped": why}
    return results


def figure(result: dict[str, Any], path: str) -> float | None:
    value: Any = result
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value if is_number(value) else None


def ratios(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """Per figure: rates ours/theirs, latencies theirs/ours, so > 1.0 means ours is better;
    the target is >= 1.0 for every figure."""
    out: dict[str, Any] = {}
    met, missed, unknown = 0, [], []
    for name, (rates, latencies) in FIGURES.items():
        a, b = ours.get(name), theirs.get(name)
        if not isinstance(a, dict) or not isinstance(b, dict) or "skipped" in b:
            continue
        paths = [(p, True) for p in rates] + [(p, False) for p in latencies]
        if name == "longSession":
            sizes = sorted(set(a.get("medianMs") or {}) & set(b.get("medianMs") or {}), key=int)
            paths = [(f"medianMs.{size}", False) for size in sizes] + paths
        entries = {}
        for path, is_rate in paths:
            mine, other = figure(a, path), figure(b, path)
            num, den = (mine, other) if is_rate else (other, mine)
            ratio = round(num / den, 3) if num is not None and den else None
            entries[path] = {"ours": mine, "theirs": other, "ratio": ratio,
                             "ratioOf": "ours/theirs" if is_rate else "theirs/ours",
                             "target": ">= 1.0", "met": None if ratio is None else ratio >= 1.0}
            if ratio is None:
                unknown.append(f"{name}.{path}")
            elif ratio >= 1.0:
                met += 1
            else:
                missed.append(f"{name}.{path}")
        out[name] = entries
    out["summary"] = {"figures": met + len(missed) + len(unknown), "met": met,
                      "notMet": missed, "unknown": unknown}
    return out


# --------------------------------------------------------------------------- the sitting


def config_report(config: Config) -> dict[str, Any]:
    report: dict[str, Any] = {
        "baseUrls": list(config.base_urls), "clients": config.clients,
        "secondsPerPhase": config.seconds, "warmupSeconds": config.warmup,
        "graceSeconds": config.grace, "wsConnections": config.ws_connections,
        "wsTurns": config.ws_turns, "wsWords": config.ws_words,
        "phases": list(config.phases),
        "serverPids": list(config.server_pids), "repeat": config.repeat,
        "compareBaseUrl": config.compare_base_url,
    }
    if "inflight" in config.phases:
        report["inflight"] = {"turns": config.inflight, "wsMode": config.inflight_ws,
                              "timeoutSeconds": config.inflight_timeout,
                              "otherTenant": bool(config.other_api_key),
                              "slowLlmUrl": config.slow_llm_url}
    if "longsession" in config.phases:
        report["longSession"] = {"historySizes": list(config.long_turns),
                                 "turnsPerSize": config.long_sample,
                                 "secondsLimit": config.long_seconds}
    return report


def count_errors(results: dict[str, Any]) -> int:
    return sum(r.get("errorsAllRuns", r.get("errors", 0)) for r in results.values())


async def benchmark(config: Config) -> dict[str, Any]:
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    started = time.perf_counter()
    targets = make_targets(config)
    failure = None
    try:
        for target in targets:
            await check_servers(target.api)
        with contextlib.ExitStack() as stack:
            for target in targets:
                target.sampler = stack.enter_context(RssSampler(target.config.server_pids))
            try:
                failure = await measure(targets, config)
            finally:
                for target in targets:
                    target.cleanup = await final_cleanup(target.api, target.config,
                                                         Fixtures.of(target.shared))
            reports = [t.sampler.report() if t.sampler else None for t in targets]
    finally:
        await asyncio.gather(*(t.aclose() for t in targets), return_exceptions=True)
    ours = phase_results(targets[0], config)
    report: dict[str, Any] = {
        "startedAt": started_at,
        "config": config_report(config),
        "phases": ours,
        "errors": count_errors(ours),
        "failure": failure,
        "cleanup": targets[0].cleanup,
        "rss": reports[0],
    }
    if len(targets) > 1:
        theirs = phase_results(targets[1], config)
        report["compare"] = {
            "baseUrl": config.compare_base_url, "phases": theirs,
            "errors": count_errors(theirs), "cleanup": targets[1].cleanup, "rss": reports[1],
        }
        report["ratios"] = ratios(ours, theirs)
        report["errors"] += report["compare"]["errors"]
    else:
        report["compare"] = None
        report["ratios"] = None
    report["elapsedSeconds"] = round(time.perf_counter() - started, 2)
    return report


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


def raise_nofile_limit() -> None:
    """Thousands of sockets (the inflight phase) need the soft descriptor limit at the hard."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard or hard == resource.RLIM_INFINITY:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    raise_nofile_limit()
    arm_watchdog(config.timeout + 5)
    report = asyncio.run(benchmark(config))
    emit(report, config.output)
    return 1 if report["failure"] or report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

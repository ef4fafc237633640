#!/usr/bin/env python3
"""CPU per operation of the hot paths, measured in this process through the real ASGI
application: no socket, no server process, no load client.

`bench/run.py` measures what a client sees, and on a shared host its figures move with
everything else that runs there (runs of one phase minutes apart have differed by a quarter).
The CPU one request costs in one process moves far less, so this is the figure to take before
and after a change to a hot path. It drives, one operation at a time:

  tree    GET /spaces/{id}/sessions on a 9-session tree (main + 8 forks)
  spaces  POST /spaces (each deleted after the phase, outside the measured window)
  ws      session.stream over /spaces/{id}/ws, through the real consumer, with a fresh
          session every 50 streams (forked over the socket, as bench/run.py's ws phase has
          one session per connection)

and prints one JSON document: per phase the operations, the process's CPU per operation
(`cpuUsPerOp`, median of `--repeat` runs), the wall time per operation and the PostgreSQL round
trips per operation (`spaces.pgpool.round_trips`; 0 on SQLite). `--profile DIR` also writes a
cProfile of each phase's last run (`DIR/<phase>.prof`).

It uses the configured database and channel layer (DATABASE_URL, REDIS_URL or the embedded
default; migrate first), makes a user and an API key of its own and deletes both, with
everything they own, at the end. Start it with the settings the server would have (SECRET_KEY,
STELLO_CONSOLIDATE_EVERY_N_TURNS=0 to leave background memory work out, as bench/README.md
says):

    .venv/bin/python bench/inprocess.py --ops 2000 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stello_project.settings")

PHASES = ("tree", "spaces", "ws")
TREE_FORKS = 8  # the tree phase's 9 sessions, as bench/run.py's
STREAMS_PER_SESSION = 50  # bench/run.py's default --ws-turns
WARMUP_OPS = 50  # uncounted, per run: caches, prepared statements, pool connections


class Client:
    """Requests and WebSocket frames through an ASGI application, authenticated by `key`."""

    def __init__(self, application: Any, key: str) -> None:
        self.application = application
        self.headers = [(b"host", b"127.0.0.1"), (b"x-api-key", key.encode())]

    def _scope(self, kind: str, path: str) -> dict[str, Any]:
        return {"type": kind, "asgi": {"version": "3.0"}, "http_version": "1.1",
                "scheme": "http" if kind == "http" else "ws", "path": path,
                "raw_path": path.encode(), "query_string": b"", "root_path": "",
                "headers": list(self.headers), "client": ("127.0.0.1", 50000),
                "server": ("127.0.0.1", 80), "subprotocols": []}

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(status, parsed JSON body or None)."""
        raw = b"" if body is None else orjson.dumps(body)
        scope = self._scope("http", path)
        scope["method"] = method
        if raw:
            scope["headers"] += [(b"content-type", b"application/json"),
                                 (b"content-length", str(len(raw)).encode())]
        delivered = False
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": raw, "more_body": False}
            await asyncio.Event().wait()  # the client never goes away
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await self.application(scope, receive, send)
        content = b"".join(m.get("body", b"") for m in sent
                           if m["type"] == "http.response.body")
        return sent[0]["status"], orjson.loads(content) if content else None

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = await self.request(method, path, body)
        if status >= 400:
            raise RuntimeError(f"{method} {path}: {status} {answer}")
        return answer

    def socket(self, path: str) -> Socket:
        return Socket(self.application, self._scope("websocket", path))


class Socket:
    """One WebSocket connection to the application."""

    def __init__(self, application: Any, scope: dict[str, Any]) -> None:
        self._incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._outgoing: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task = asyncio.ensure_future(
            application(scope, self._incoming.get, self._outgoing.put))

    async def open(self) -> None:
        await self._incoming.put({"type": "websocket.connect"})
        answer = await self._outgoing.get()
        if answer["type"] != "websocket.accept":
            raise RuntimeError(f"the WebSocket was refused: {answer}")

    async def send(self, frame: dict[str, Any]) -> None:
        await self._incoming.put({"type": "websocket.receive",
                                  "text": orjson.dumps(frame).decode()})

    async def until(self, frame_type: str) -> dict[str, Any]:
        """The next frame of `frame_type` (frames before it are skipped; an error raises)."""
        while True:
            message = await self._outgoing.get()
            if message["type"] != "websocket.send":
                raise RuntimeError(f"the WebSocket ended: {message}")
            frame = orjson.loads(message["text"])
            if frame["type"] == frame_type:
                return frame
            if frame["type"] == "error":
                raise RuntimeError(f"error frame: {frame}")

    async def close(self) -> None:
        await self._incoming.put({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(self._task, 10)


class Phase:
    """Set-up (not measured), the operation, and clean-up (not measured)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def setup(self) -> None:
        pass

    async def operation(self) -> None:
        raise NotImplementedError

    async def between(self, done: int) -> None:
        """Called before operation number `done` (uncounted work, e.g. a fresh session)."""

    async def teardown(self) -> None:
        pass


class TreePhase(Phase):
    async def setup(self) -> None:
        space = await self.client.call("POST", "/spaces", {"label": "inprocess tree"})
        self.path = f"/spaces/{space['id']}/sessions"
        main = (await self.client.call("GET", self.path))["id"]
        for index in range(TREE_FORKS):
            await self.client.call("POST", f"{self.path}/{main}/fork", {"label": f"c{index}"})

    async def operation(self) -> None:
        status, _ = await self.client.request("GET", self.path)
        if status != 200:
            raise RuntimeError(f"tree GET answered {status}")


class SpacesPhase(Phase):
    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self.made: list[str] = []

    async def operation(self) -> None:
        status, space = await self.client.request("POST", "/spaces", {"label": "inprocess"})
        if status != 201:
            raise RuntimeError(f"POST /spaces answered {status}")
        self.made.append(space["id"])

    async def teardown(self) -> None:
        for space_id in self.made:
            await self.client.call("DELETE", f"/spaces/{space_id}")
        self.made.clear()


class StreamPhase(Phase):
    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self.count = 0

    async def setup(self) -> None:
        space = await self.client.call("POST", "/spaces", {"label": "inprocess ws"})
        main = (await self.client.call("GET", f"/spaces/{space['id']}/sessions"))["id"]
        self.socket = self.client.socket(f"/spaces/{space['id']}/ws")
        await self.socket.open()
        await self.socket.send({"type": "session.enter", "sessionId": main})
        await self.socket.until("session.entered")
        await self._fresh_session()

    async def _fresh_session(self) -> None:
        await self.socket.send({"type": "session.fork", "options": {"label": "stream"}})
        child = (await self.socket.until("session.forked"))["child"]["id"]
        await self.socket.send({"type": "session.leave"})
        await self.socket.until("session.left")
        await self.socket.send({"type": "session.enter", "sessionId": child})
        await self.socket.until("session.entered")

    async def between(self, done: int) -> None:
        if done and done % STREAMS_PER_SESSION == 0:
            await self._fresh_session()

    async def operation(self) -> None:
        self.count += 1
        await self.socket.send({"type": "session.stream", "input": f"stream {self.count}"})
        await self.socket.until("stream.end")

    async def teardown(self) -> None:
        await self.socket.close()


async def measure(phase: Phase, ops: int, profile: cProfile.Profile | None, *,
                  warmup: int = WARMUP_OPS) -> dict[str, float]:
    """One run of `ops` operations (after `warmup` uncounted ones)."""
    from spaces.pgpool import round_trips

    for done in range(warmup):
        await phase.between(done)
        await phase.operation()
    cpu = wall = 0.0
    trips = 0
    for done in range(ops):
        await phase.between(done)  # outside the measured window
        trips_before = round_trips.count
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        if profile is not None:
            profile.enable()
        await phase.operation()
        if profile is not None:
            profile.disable()
        cpu += time.process_time() - cpu_before
        wall += time.perf_counter() - wall_before
        trips += round_trips.count - trips_before
    return {"cpuUsPerOp": cpu * 1e6 / ops, "wallUsPerOp": wall * 1e6 / ops,
            "roundTripsPerOp": trips / ops}


async def run(phases: tuple[str, ...], ops: int, repeat: int, profile_dir: Path | None,
              key: str, *, warmup: int = WARMUP_OPS) -> dict[str, Any]:
    from stello_project.asgi import application

    client = Client(application, key)
    makers = {"tree": TreePhase, "spaces": SpacesPhase, "ws": StreamPhase}
    report: dict[str, Any] = {}
    for name in phases:
        phase = makers[name](client)
        await phase.setup()
        runs = []
        try:
            for index in range(repeat):
                profile = (cProfile.Profile() if profile_dir is not None and index == repeat - 1
                           else None)
                runs.append(await measure(phase, ops, profile, warmup=warmup))
                if profile is not None:
                    profile.dump_stats(profile_dir / f"{name}.prof")
        finally:
            await phase.teardown()
        report[name] = {
            "ops": ops,
            **{figure: round(statistics.median(r[figure] for r in runs), 2)
               for figure in ("cpuUsPerOp", "wallUsPerOp", "roundTripsPerOp")},
            "runs": [round(r["cpuUsPerOp"], 2) for r in runs],
        }
    return report


def make_key() -> tuple[Any, str]:
    """A user and an API key of this run's own (the ORM, before the loop starts)."""
    from django.contrib.auth import get_user_model

    from spaces.apikeys import apikey_create

    user = get_user_model().objects.create_user(username=f"inprocess-{uuid.uuid4().hex[:12]}")
    _, raw = apikey_create(user=user, name="bench/inprocess.py")
    return user, raw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated, of {','.join(PHASES)}")
    parser.add_argument("--ops", type=int, default=2000, help="measured operations per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per phase (median)")
    parser.add_argument("--warmup", type=int, default=WARMUP_OPS,
                        help="uncounted operations before each run")
    parser.add_argument("--profile", type=Path, default=None,
                        help="write DIR/<phase>.prof (cProfile of each phase's last run)")
    args = parser.parse_args(argv)
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    if not phases or set(phases) - set(PHASES):
        parser.error(f"--phases: choose from {','.join(PHASES)}")
    if args.ops < 1 or args.repeat < 1 or args.warmup < 0:
        parser.error("--ops and --repeat must be at least 1, --warmup at least 0")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)

    import django

    django.setup()
    user, key = make_key()
    try:
        # The event loop the servers run on (uvicorn and daphne both take uvloop when present).
        report = uvloop.run(run(phases, args.ops, args.repeat, args.profile, key,
                                warmup=args.warmup))
    finally:
        user.delete()  # with its key and everything it owns
    print(orjson.dumps({"phases": report}, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())

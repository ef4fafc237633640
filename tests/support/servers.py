"""Real server processes (daphne, or uvicorn with STELLO_TEST_SERVER=uvicorn) on the pytest test
database, for the multi-process, soak, restart and capacity tests.

The processes serve the test database (`settings.DATABASES["default"]["NAME"]` once
pytest-django has created it); with `django_db(transaction=True)` the rows a test creates are
committed, so the servers see them. The environment of a server is built from scratch by
`server_env` (no STELLO_*, DATABASE_URL or REDIS_URL leaks in from the test run), so a test
states every setting it relies on.

    with server_processes([env_a, env_b], tmp_path) as (a, b):
        ...                      # a.http("/spaces"), a.ws(space_id), a.kill(), restart(a)

Every process started here is stopped (SIGTERM, then SIGKILL) when the block ends, whatever
happened, and the block checks that none is left running.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sessions_app.models import Session
from spaces.apikeys import apikey_create
from spaces.services import space_create
from tests.conftest import make_user

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0  # seconds for a server to answer HTTP
STOP_TIMEOUT = 10.0  # seconds for a server to exit after SIGTERM (then SIGKILL)
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Server:
    port: int
    process: subprocess.Popen
    log: Path
    env: dict[str, str] = field(repr=False)

    def http(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ws(self, space_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/spaces/{space_id}/ws"

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def output(self, tail: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-tail:]

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up (a crash, an OOM kill)."""
        if self.running:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT)

    def stop(self) -> None:
        if self.running:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url() -> str:
    """The database this test run uses (the test database), as a URL for the servers."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    credentials = quote(db.get("USER") or "", safe="")
    if db.get("PASSWORD"):
        credentials += ":" + quote(db["PASSWORD"], safe="")
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgresql://{credentials}@{host}:{port}/{quote(db['NAME'], safe='')}"


def server_env(**overrides: str | None) -> dict[str, str]:
    """A clean environment for a server on the test database; an override of None removes."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("STELLO_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update({
        "DJANGO_SETTINGS_MODULE": "stello_project.settings",
        "DATABASE_URL": database_url(),
        "STELLO_LLM_PROVIDER": "offline",
        "PYTHONUNBUFFERED": "1",
        # Servers run without DEBUG, where the embedded development key is refused.
        "SECRET_KEY": "stello-test-servers-not-a-secret",
    })
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


# Which ASGI server the multi-process tests start: daphne (the development server, default) or
# uvicorn (with uvloop and httptools, the production recommendation). CI runs them under both.
ASGI_SERVER = os.environ.get("STELLO_TEST_SERVER", "daphne")
if ASGI_SERVER not in ("daphne", "uvicorn"):
    raise RuntimeError(f"STELLO_TEST_SERVER must be daphne or uvicorn, not {ASGI_SERVER!r}")


def server_command(port: int, asgi_server: str = ASGI_SERVER) -> list[str]:
    """The production command (`stello_project.serve`, which sets the server's limits from the
    settings in the environment) on `port`."""
    serve = [sys.executable, "-m", "stello_project.serve", asgi_server]
    if asgi_server == "uvicorn":
        return [*serve, "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    return [*serve, "-b", "127.0.0.1", "-p", str(port)]


def start_server(env: Mapping[str, str], logs: Path, name: str = "server",
                 asgi_server: str = ASGI_SERVER) -> Server:
    port = free_port()
    log = logs / f"{name}-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            server_command(port, asgi_server), cwd=ROOT, env=dict(env), stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Server(port, process, log, dict(env))


def wait_until_answering(server: Server, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.running:
            raise RuntimeError(f"{ASGI_SERVER} exited with {server.process.returncode}:\n"
                               f"{server.output()}")
        try:
            NO_PROXY.open(server.http("/healthz"), timeout=2).close()
            return
        except urllib.error.HTTPError:  # any HTTP answer means it is up
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{ASGI_SERVER} did not answer within {timeout:g}s:\n{server.output()}")


@contextmanager
def server_processes(envs: list[dict[str, str]], logs: Path,
                     asgi_server: str = ASGI_SERVER) -> Iterator[list[Server]]:
    """Start one server process (`ASGI_SERVER`, or `asgi_server`) per environment, wait until
    all answer, stop all on the way out. Servers a test adds to the yielded list (`restart`)
    are stopped too."""
    started: list[Server] = []
    try:
        for n, env in enumerate(envs):
            started.append(start_server(env, logs, name=f"{asgi_server}{n}",
                                        asgi_server=asgi_server))
        for server in started:
            wait_until_answering(server)
        yield started
    finally:
        for server in started:
            server.stop()
        left = [s.process.pid for s in started if s.running]
        assert not left, f"server processes still running: {left}"


def restart(server: Server, servers: list[Server] | None = None) -> Server:
    """A new process with the same environment (on a new port); added to `servers` so that
    `server_processes` stops it too."""
    assert not server.running, "stop or kill the old process first"
    fresh = start_server(server.env, server.log.parent, name="restarted")
    if servers is not None:
        servers.append(fresh)
    wait_until_answering(fresh)
    return fresh


def http_json(method: str, url: str, key: str, body: Any = None,
              timeout: float = 30.0) -> tuple[int, Any]:
    """(status, parsed JSON body or text) of one request; no proxy, bounded by `timeout`."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"X-API-Key": key,
                                              "Content-Type": "application/json"})
    try:
        with NO_PROXY.open(request, timeout=timeout) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        text = error.read().decode(errors="replace")
        try:
            return error.code, json.loads(text)
        except ValueError:
            return error.code, text


def committed_tenant(username: str, label: str, **space_fields: Any) -> dict[str, str]:
    """A user, an API key and a space with its main session, written to the test database.
    Call it from a transactional test (`django_db(transaction=True)` or `transactional_db`):
    the rows must be committed for the server processes to see them."""
    user = make_user(username)
    key = apikey_create(user=user, name=username)[1]
    space = space_create(owner=user, label=label, **space_fields)
    root = Session.objects.get(space=space, role=Session.Role.MAIN)
    return {"key": key, "space_id": str(space.pk), "root_id": str(root.pk)}


daphne_processes = server_processes  # the name the older tests use

"""Turns on one session are serialised across server processes (PostgreSQL advisory locks).

Two real daphne processes serve the same (test) database; concurrent turns on one session are
sent through both at once. The history must come out as clean user/reply pairs, the turn
count must be exact, and every turn must have been answered with the complete history.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model

from sessions_app.models import Record, Session
from spaces.apikeys import apikey_create
from spaces.services import space_create

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

PROJECT_DIR = Path(__file__).resolve().parents[2]
DAPHNE = Path(sys.executable).with_name("daphne")
TURNS_PER_PROCESS = 15
START_TIMEOUT_SECONDS = 60.0
REQUEST_TIMEOUT_SECONDS = 120.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url_of_this_test() -> str:
    """The URL of the database this test runs on (pytest-django's test database)."""
    db = settings.DATABASES["default"]
    credentials = quote(db["USER"] or "", safe="")
    if db.get("PASSWORD"):
        credentials += ":" + quote(db["PASSWORD"], safe="")
    host = db.get("HOST") or "127.0.0.1"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgresql://{credentials}@{host}{port}/{quote(db['NAME'], safe='')}"


def server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("STELLO_") and k not in ("REDIS_URL", "DATABASE_URL")}
    env.update({
        "DATABASE_URL": database_url_of_this_test(),
        "DJANGO_SETTINGS_MODULE": "stello_project.settings",
        "STELLO_LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def request(method: str, url: str, key: str, body: Any = None,
            timeout: float = REQUEST_TIMEOUT_SECONDS) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"X-API-Key": key, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def wait_until_serving(base_url: str, key: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"daphne exited with {process.returncode}:\n{log.read_text()}")
        try:
            if request("GET", f"{base_url}/spaces", key, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"daphne at {base_url} did not answer in {START_TIMEOUT_SECONDS:g}s:\n"
                f"{log.read_text()}")


@pytest.fixture
def alice_in_committed_data(transactional_db) -> dict[str, str]:
    """A user, key and space committed to the database, so other processes see them."""
    user = get_user_model().objects.create_user(username="alice", password=None)
    key = apikey_create(user=user, name="multiprocess")[1]
    space = space_create(owner=user, label="Shared", system_prompt="Be brief.")
    root = Session.objects.get(space=space, role="main")
    return {"key": key, "space_id": str(space.id), "root_id": str(root.id)}


@pytest.fixture
def two_servers(alice_in_committed_data, tmp_path) -> Iterator[list[str]]:
    """Two daphne processes on the test database; stopped (and waited for) afterwards."""
    processes: list[subprocess.Popen] = []
    urls: list[str] = []
    try:
        for n in range(2):
            port = free_port()
            log = tmp_path / f"daphne-{n}.log"
            with log.open("wb") as out:
                processes.append(subprocess.Popen(
                    [str(DAPHNE), "-b", "127.0.0.1", "-p", str(port),
                     "stello_project.asgi:application"],
                    cwd=PROJECT_DIR, env=server_env(), stdout=out, stderr=subprocess.STDOUT,
                ))
            urls.append(f"http://127.0.0.1:{port}")
        for n, (url, process) in enumerate(zip(urls, processes, strict=True)):
            wait_until_serving(url, alice_in_committed_data["key"], process,
                               tmp_path / f"daphne-{n}.log")
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


def test_concurrent_turns_through_two_processes_are_serialised_per_session(
    alice_in_committed_data, two_servers
) -> None:
    key, space_id, root_id = (alice_in_committed_data[k] for k in ("key", "space_id", "root_id"))
    jobs = [
        (f"{url}/spaces/{space_id}/sessions/{root_id}/turn", f"process {p} turn {n}")
        for n in range(TURNS_PER_PROCESS) for p, url in enumerate(two_servers)
    ]

    def send(job: tuple[str, str]) -> tuple[str, int, Any]:
        url, text = job
        status, body = request("POST", url, key, {"input": text})
        return text, status, body

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(send, jobs))

    failures = [(text, status, body) for text, status, body in results if status != 200]
    assert failures == []
    assert all(body["turn"]["finalContent"] == f"echo: {text}" for text, _, body in results)

    records = list(Record.objects.filter(session_id=root_id).values_list("role", "content"))
    pairs = [records[i:i + 2] for i in range(0, len(records), 2)]
    assert all(pair == [("user", pair[0][1]), ("assistant", f"echo: {pair[0][1]}")]
               for pair in pairs), records
    assert sorted(user for (_, user), _ in pairs) == sorted(text for _, text in jobs)
    assert Session.objects.get(pk=root_id).turn_count == len(jobs)

    # Serialised turns each saw the whole history before them: the offline LLM bills
    # ceil(characters of the prompt / 4) tokens, so a turn that ran on a stale history (two
    # turns at once) would be billed for fewer characters than the records before it hold.
    billed = {text: json.loads(body["turn"]["rawResponse"])["usage"]["promptTokens"]
              for text, _, body in results}
    history_chars = 0
    for (_, user), (_, answer) in pairs:
        assert billed[user] * 4 >= history_chars + len(user), (user, billed[user])
        history_chars += len(user) + len(answer)

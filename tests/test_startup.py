"""Start-up: a bad setting stops the server with one line naming the variable, no traceback.

Each family of settings the README lists is tried in a real process: `manage.py` for what is
read when Django loads the settings, the ASGI server (daphne, or uvicorn with
STELLO_TEST_SERVER=uvicorn) for what is checked when the application starts.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import websockets
from django.core.exceptions import ImproperlyConfigured
from websockets.exceptions import InvalidStatus

from sessions_app.runtime import pool
from sessions_app.runtime.startup import load_extensions
from tests.support.servers import (
    Server,
    committed_tenant,
    free_port,
    http_json,
    server_command,
    server_env,
    wait_until_answering,
)


@pytest.fixture(autouse=True)
def fresh_extension_cache():
    pool._user_tools.cache_clear()
    pool._skills.cache_clear()
    yield
    pool._user_tools.cache_clear()
    pool._skills.cache_clear()


def test_a_bad_tool_path_stops_start_up_naming_the_variable(settings) -> None:
    settings.STELLO = {**settings.STELLO, "TOOLS": ["no.such.module.tool"]}
    with pytest.raises(ImproperlyConfigured, match="STELLO_TOOLS"):
        load_extensions()


def test_a_missing_skills_folder_stops_start_up_naming_the_variable(settings, tmp_path) -> None:
    settings.STELLO = {**settings.STELLO, "SKILLS_DIRS": [str(tmp_path / "missing")]}
    with pytest.raises(ImproperlyConfigured, match="STELLO_SKILLS_DIRS"):
        load_extensions()


def test_valid_tools_and_skills_load(settings, tmp_path) -> None:
    skill = tmp_path / "greet"
    skill.mkdir()
    (skill / "SKILL.md").write_text("---\nname: greet\ndescription: Say hi\n---\nSay hello.\n")
    settings.STELLO = {**settings.STELLO, "TOOLS": [], "SKILLS_DIRS": [str(tmp_path)]}
    load_extensions()
    assert set(pool._skills()) == {"greet"}


# --- In real processes: one line naming the variable, no traceback ----------------------------

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION_SECRET = "a-production-secret-key-" + "x" * 40


def clean_env(**env: str) -> dict[str, str]:
    """This process's environment without any setting of ours, plus `env`."""
    ours = ("STELLO_", "DATABASE_", "REDIS_", "SECURE_", "SESSION_", "CSRF_")
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(ours) and k not in ("SECRET_KEY", "DEBUG", "ALLOWED_HOSTS")}
    return {**base, "SECRET_KEY": PRODUCTION_SECRET, **env}


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def assert_one_line_naming(result: subprocess.CompletedProcess, variable: str) -> None:
    output = (result.stdout + result.stderr).strip()
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    last = output.splitlines()[-1]
    assert last.startswith("Configuration error: ") and variable in last, output
    assert output.count("Configuration error") == 1, output


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Settings read when Django loads them: every `manage.py` command (`migrate` too) stops at once.
SETTINGS_CASES = {
    "integer": ("STELLO_MAX_TOOL_ROUNDS", "many"),
    "integer minimum": ("STELLO_CONSOLIDATE_EVERY_N_TURNS", "-2"),
    "number": ("STELLO_LLM_TIMEOUT_SECONDS", "fast"),
    "boolean": ("STELLO_INTEGRATE_AFTER_CONSOLIDATE", "perhaps"),
    "choice": ("STELLO_LLM_PROVIDER", "gpt"),
    "log level": ("STELLO_LOG_LEVEL", "LOUD"),
    "rate": ("STELLO_RATE_LIMIT", "lots"),
    "memory LLM twin": ("STELLO_MEMORY_LLM_MAX_RETRIES", "twice"),
    "database URL": ("DATABASE_URL", "mysql://db/stello"),
    "missing LLM script": ("STELLO_LLM_SCRIPT", "/nonexistent/script.json"),
    "proxy header": ("SECURE_PROXY_SSL_HEADER", "https"),
    "HSTS": ("SECURE_HSTS_SECONDS", "a year"),
    "debug": ("DEBUG", "sometimes"),
}


@pytest.mark.parametrize("case", SETTINGS_CASES)
def test_a_bad_setting_stops_manage_py_in_one_line_naming_the_variable(case: str) -> None:
    variable, value = SETTINGS_CASES[case]
    result = run([sys.executable, "manage.py", "check"],
                 clean_env(**{variable: value}))
    assert_one_line_naming(result, variable)


def test_without_debug_the_embedded_secret_key_is_refused() -> None:
    env = clean_env()
    del env["SECRET_KEY"]
    assert_one_line_naming(run([sys.executable, "manage.py", "check"], env), "SECRET_KEY")
    development = run([sys.executable, "manage.py", "check"], {**env, "DEBUG": "1"})
    assert development.returncode == 0, development.stderr


def _bad_script(tmp_path: Path) -> str:
    script = tmp_path / "script.json"
    script.write_text('[{"content": 42}]')
    return str(script)


# Settings checked when the server starts (the ASGI application is imported): the server
# process exits at once instead of serving requests that would all fail.
SERVER_CASES: dict[str, tuple[str, Any]] = {
    "unreachable Redis": ("REDIS_URL", lambda tmp: f"redis://127.0.0.1:{closed_port()}/0"),
    "not a Redis URL": ("REDIS_URL", lambda tmp: "http://127.0.0.1:6379/0"),
    "unreadable LLM script": ("STELLO_LLM_SCRIPT", _bad_script),
    "memory LLM script": ("STELLO_MEMORY_LLM_SCRIPT", _bad_script),
    "tool path": ("STELLO_TOOLS", lambda tmp: "no.such.module.tool"),
    "skills folder": ("STELLO_SKILLS_DIRS", lambda tmp: str(tmp / "missing")),
    "secret key": ("SECRET_KEY", lambda tmp: None),
}


@pytest.mark.servers
@pytest.mark.parametrize("case", SERVER_CASES)
def test_a_bad_setting_stops_the_server_in_one_line_naming_the_variable(case: str,
                                                                        tmp_path) -> None:
    variable, make_value = SERVER_CASES[case]
    value = make_value(tmp_path)
    env = clean_env(**({} if value is None else {variable: value}))
    if value is None:
        del env[variable]
    if variable == "STELLO_MEMORY_LLM_SCRIPT":
        env["STELLO_MEMORY_LLM_PROVIDER"] = "offline"
    assert_one_line_naming(run(server_command(closed_port()), env), variable)


def make_run_server_command(port: int) -> list[str]:
    """The server command line of `make run` (as `make -n` prints it), on our Python."""
    lines = subprocess.run(["make", "-n", "run", f"PORT={port}", "VENV=/nonexistent-venv"],
                           cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    line = next(line for line in lines.splitlines() if "stello_project.serve daphne" in line)
    command = shlex.split(line)
    return [sys.executable, *command[1:]]


@pytest.mark.servers
def test_make_run_logs_each_line_once(tmp_path) -> None:
    """Under `make run` (daphne, DEBUG=1, SQLite) the start-up lines and Django's request
    warnings are printed once each, not once by Django's console and again by daphne's."""
    port = free_port()
    env = clean_env(DEBUG="1", STELLO_LLM_PROVIDER="offline")
    del env["SECRET_KEY"]  # `make run` runs on the embedded development key
    log = tmp_path / "make-run.log"
    with log.open("wb") as out:
        process = subprocess.Popen(make_run_server_command(port), cwd=ROOT, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    server = Server(port, process, log, env)
    try:
        wait_until_answering(server)
        status, _ = http_json("GET", server.http("/spaces"), key="")
        assert status == 401
    finally:
        server.stop()
    output = log.read_text()
    assert output.count("Stello starting") == 1, output
    assert output.count("Unauthorized: /spaces") == 1, output
    assert output.count('"GET /spaces"') == 1, output  # daphne's access log


@pytest.mark.servers
@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres  # the server shares the test database
def test_uvicorn_logs_never_print_a_key_sent_in_the_query_string(tmp_path) -> None:
    """No key is read from a query string, but a client may send one there: uvicorn's access
    log (HTTP) and error log (WebSocket) print the path with its query string, redacted."""
    tenant = committed_tenant("alice", "Alice's space")
    key = tenant["key"]
    secret = key.rsplit("_", 1)[1]
    port = free_port()
    log = tmp_path / "uvicorn.log"
    command = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port),
               "stello_project.asgi:application"]  # with its access log
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=server_env(), stdout=out,
                                   stderr=subprocess.STDOUT)
    server = Server(port, process, log, {})
    try:
        wait_until_answering(server)
        status, _ = http_json("GET", server.http(f"/spaces?api_key={key}"), key="")
        assert status == 401  # never read from there
        with pytest.raises(InvalidStatus) as refused:
            asyncio.run(_connect(server.ws(tenant["space_id"]) + f"?api_key={key}"))
        assert refused.value.response.status_code == 401
    finally:
        server.stop()
    output = log.read_text()
    assert output.count("[redacted]") >= 2, output
    assert secret not in output, output


async def _connect(url: str) -> None:
    async with websockets.connect(url, open_timeout=10):
        pass

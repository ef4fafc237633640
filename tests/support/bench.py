"""Running bench/run.py for a moment against two real server processes (tests of its phases)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.servers import server_env, server_processes

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 120  # seconds for the whole benchmark run (it takes a few)


@contextmanager
def slow_llm(logs: Path, delay: float) -> Iterator[str]:
    """bench/slow_llm.py on a free loopback port, answering after `delay` seconds: its base
    URL (`.../v1`) while the block runs."""
    ready = logs / "llm.port"
    llm = subprocess.Popen([sys.executable, "bench/slow_llm.py", "--port", "0", "--delay",
                            str(delay), "--ready-file", str(ready)], cwd=ROOT)
    try:
        for _ in range(200):
            if ready.exists() and ready.read_text().strip():
                break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{ready.read_text().strip()}/v1"
    finally:
        llm.terminate()
        llm.wait(10)


def llm_env(base_url: str) -> dict[str, str]:
    """The servers' settings for an OpenAI-compatible LLM at `base_url`, without retries."""
    return {"STELLO_LLM_PROVIDER": "openai", "STELLO_LLM_BASE_URL": base_url,
            "STELLO_LLM_API_KEY": "x", "STELLO_LLM_MAX_RETRIES": "0"}


def run_phase_on_two_processes(phase: str, key: str, logs: Path, *args: str,
                               **env: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """`phase` for 1.5 s with 2 clients on two processes sharing the test database and Redis
    (`args` added to bench/run.py's, `env` to the servers'); returns the whole report and the
    phase's part, once the run is known to have exited cleanly."""
    server = server_env(REDIS_URL=os.environ["REDIS_URL"],
                        STELLO_REDIS_PREFIX=f"stello-test-{uuid.uuid4().hex[:12]}",
                        STELLO_CONSOLIDATE_EVERY_N_TURNS="0",
                        DATABASE_POOL_MIN_SIZE="1", DATABASE_POOL_MAX_SIZE="4", **env)
    with server_processes([server, server], logs) as (a, b):
        run_env = {k: v for k, v in os.environ.items() if not k.startswith("STELLO_")}
        run_env["STELLO_API_KEY"] = key
        done = subprocess.run(
            [sys.executable, "bench/run.py", "--base-urls", f"{a.http('')},{b.http('')}",
             "--phases", phase, "--seconds", "1.5", "--warmup", "0.3",
             "--ws-connections", "2", *args],
            cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
        report = json.loads(done.stdout)
        assert done.returncode == 0, (report["phases"], done.stderr[-2000:], a.output(),
                                      b.output())
    return report, report["phases"][phase]

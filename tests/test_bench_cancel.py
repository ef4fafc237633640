"""The benchmark's `cancel` phase (bench/run.py), run briefly against two real server processes
sharing PostgreSQL and Redis, on the slow loopback LLM (bench/slow_llm.py): every turn is
cancelled from a connection to the other process while it waits on the LLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.support.servers import committed_tenant, server_env, server_processes

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT = 120  # seconds for the whole benchmark run (it takes a few)


@pytest.mark.servers
@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_the_cancel_phase_runs_clean_across_two_processes(tmp_path) -> None:
    tenant = committed_tenant("bench-cancel", "bench cancel")
    ready = tmp_path / "llm.port"
    llm = subprocess.Popen([sys.executable, "bench/slow_llm.py", "--port", "0", "--delay", "5",
                            "--ready-file", str(ready)], cwd=ROOT)
    try:
        for _ in range(200):
            if ready.exists() and ready.read_text().strip():
                break
            time.sleep(0.05)
        port = ready.read_text().strip()
        env = server_env(REDIS_URL=os.environ["REDIS_URL"],
                         STELLO_REDIS_PREFIX=f"stello-test-{uuid.uuid4().hex[:12]}",
                         STELLO_CONSOLIDATE_EVERY_N_TURNS="0",
                         STELLO_LLM_PROVIDER="openai",
                         STELLO_LLM_BASE_URL=f"http://127.0.0.1:{port}/v1",
                         STELLO_LLM_API_KEY="x", STELLO_LLM_MAX_RETRIES="0",
                         DATABASE_POOL_MIN_SIZE="1", DATABASE_POOL_MAX_SIZE="4")
        with server_processes([env, env], tmp_path) as (a, b):
            run_env = {k: v for k, v in os.environ.items() if not k.startswith("STELLO_")}
            run_env["STELLO_API_KEY"] = tenant["key"]
            done = subprocess.run(
                [sys.executable, "bench/run.py", "--base-urls", f"{a.http('')},{b.http('')}",
                 "--phases", "cancel", "--seconds", "1.5", "--warmup", "0.3",
                 "--ws-connections", "2"],
                cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    finally:
        llm.terminate()
        llm.wait(10)
    report = json.loads(done.stdout)
    phase = report["phases"]["cancel"]
    assert done.returncode == 0, (phase, done.stderr[-2000:], a.output(), b.output())
    assert report["failure"] is None and report["errors"] == 0
    # Every turn waits 5 s on the LLM: each one that ended inside 1.5 s was cancelled.
    assert phase["concurrency"] == 2 and phase["acrossProcesses"] is True and phase["ok"] >= 2
    assert phase["stoppedMs"]["max"] < 5000 and phase["latencyMs"]["max"] < 5000
    assert phase["targetMet"] is (phase["stoppedMs"]["p50"] <= 100)
    assert report["cleanup"]["notDeleted"] == [] and report["cleanup"]["spacesDeleted"] >= 1

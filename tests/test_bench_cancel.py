"""The benchmark's `cancel` phase (bench/run.py), run briefly against two real server processes
sharing PostgreSQL and Redis, on the slow loopback LLM (bench/slow_llm.py): every turn is
cancelled from a connection to the other process while it waits on the LLM."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.bench import run_phase_on_two_processes
from tests.support.servers import committed_tenant

ROOT = Path(__file__).resolve().parents[1]


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
        report, phase = run_phase_on_two_processes(
            "cancel", tenant["key"], tmp_path, STELLO_LLM_PROVIDER="openai",
            STELLO_LLM_BASE_URL=f"http://127.0.0.1:{port}/v1", STELLO_LLM_API_KEY="x",
            STELLO_LLM_MAX_RETRIES="0")
    finally:
        llm.terminate()
        llm.wait(10)
    assert report["failure"] is None and report["errors"] == 0
    # Every turn waits 5 s on the LLM: each one that ended inside 1.5 s was cancelled.
    assert phase["concurrency"] == 2 and phase["acrossProcesses"] is True and phase["ok"] >= 2
    assert phase["stoppedMs"]["max"] < 5000 and phase["latencyMs"]["max"] < 5000
    assert phase["targetMet"] is (phase["stoppedMs"]["p50"] <= 100)
    assert report["cleanup"]["notDeleted"] == [] and report["cleanup"]["spacesDeleted"] >= 1

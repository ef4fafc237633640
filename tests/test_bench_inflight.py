"""The benchmark's `inflight` phase (bench/run.py), one short run against two real server
processes on the slow loopback LLM: every turn in flight at once, the REST ones through
several HTTP clients, and the second tenant reading from a process of its own."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from spaces.apikeys import apikey_create
from tests.conftest import make_user
from tests.support.bench import run_phase_on_two_processes
from tests.support.servers import committed_tenant

ROOT = Path(__file__).resolve().parents[1]
TURNS = 60  # 30 REST turns: two of the phase's HTTP clients (25 turns each)


@pytest.mark.servers
@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_the_inflight_phase_runs_clean_with_the_other_tenant_in_its_own_process(
        tmp_path) -> None:
    tenant = committed_tenant("bench-inflight", "bench inflight")
    other_key = apikey_create(user=make_user("bench-inflight-other"), name="other")[1]
    ready = tmp_path / "llm.port"
    llm = subprocess.Popen([sys.executable, "bench/slow_llm.py", "--port", "0", "--delay", "1",
                            "--ready-file", str(ready)], cwd=ROOT)
    try:
        for _ in range(200):
            if ready.exists() and ready.read_text().strip():
                break
            time.sleep(0.05)
        port = ready.read_text().strip()
        report, phase = run_phase_on_two_processes(
            "inflight", tenant["key"], tmp_path, "--inflight", str(TURNS),
            "--other-api-key", other_key, "--slow-llm-url", f"http://127.0.0.1:{port}/v1",
            STELLO_LLM_PROVIDER="openai", STELLO_LLM_BASE_URL=f"http://127.0.0.1:{port}/v1",
            STELLO_LLM_API_KEY="x", STELLO_LLM_MAX_RETRIES="0")
    finally:
        llm.terminate()
        llm.wait(10)
    assert report["failure"] is None and report["errors"] == 0
    assert phase["ok"] == TURNS and phase["errors"] == 0 and phase["maxInFlight"] == TURNS
    assert phase["rest"] == phase["ws"] == TURNS // 2
    # every turn reached the LLM, all of them at once (each waits 1 s there)
    assert phase["llm"]["calls"] == TURNS and phase["llm"]["maxInFlight"] == TURNS
    # the other tenant's process read its tree all along, without an error
    other = phase["otherTenant"]
    assert other["reads"] >= 2 and other["errors"] == 0
    assert other["latencyMs"]["max"] < phase["wallSeconds"] * 1000
    assert report["cleanup"]["notDeleted"] == []

"""The benchmark's `cancel` phase (bench/run.py), run briefly against two real server processes
sharing PostgreSQL and Redis, on the slow loopback LLM (bench/slow_llm.py): every turn is
cancelled from a connection to the other process while it waits on the LLM."""

from __future__ import annotations

import pytest

from tests.support.bench import llm_env, run_phase_on_two_processes, slow_llm
from tests.support.servers import committed_tenant


@pytest.mark.servers
@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_the_cancel_phase_runs_clean_across_two_processes(tmp_path) -> None:
    tenant = committed_tenant("bench-cancel", "bench cancel")
    with slow_llm(tmp_path, delay=5) as llm:
        report, phase = run_phase_on_two_processes("cancel", tenant["key"], tmp_path,
                                                    **llm_env(llm))
    assert report["failure"] is None and report["errors"] == 0
    # Every turn waits 5 s on the LLM: each one that ended inside 1.5 s was cancelled.
    assert phase["concurrency"] == 2 and phase["acrossProcesses"] is True and phase["ok"] >= 2
    assert phase["stoppedMs"]["max"] < 5000 and phase["latencyMs"]["max"] < 5000
    assert phase["targetMet"] is (phase["stoppedMs"]["p50"] <= 100)
    assert report["cleanup"]["notDeleted"] == [] and report["cleanup"]["spacesDeleted"] >= 1

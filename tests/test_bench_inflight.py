"""The benchmark's `inflight` phase (bench/run.py), one short run against two real server
processes on the slow loopback LLM: every turn in flight at once, the REST ones through
several HTTP clients, and the second tenant reading from a process of its own."""

from __future__ import annotations

import pytest

from spaces.apikeys import apikey_create
from tests.conftest import make_user
from tests.support.bench import llm_env, run_phase_on_two_processes, slow_llm
from tests.support.servers import committed_tenant

TURNS = 60  # 30 REST turns: two of the phase's HTTP clients (25 turns each)


@pytest.mark.servers
@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_the_inflight_phase_runs_clean_with_the_other_tenant_in_its_own_process(
        tmp_path) -> None:
    tenant = committed_tenant("bench-inflight", "bench inflight")
    other_key = apikey_create(user=make_user("bench-inflight-other"), name="other")[1]
    with slow_llm(tmp_path, delay=1) as llm:
        report, phase = run_phase_on_two_processes(
            "inflight", tenant["key"], tmp_path, "--inflight", str(TURNS),
            "--other-api-key", other_key, "--slow-llm-url", llm, **llm_env(llm))
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

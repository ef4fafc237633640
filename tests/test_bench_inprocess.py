"""bench/inprocess.py: CPU per operation of the hot paths, in process, through the real ASGI
application (its figures, its round-trip counts, its profiles, and what it leaves behind)."""

from __future__ import annotations

import pstats
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async

from bench import inprocess
from sessions_app.runtime.pool import runtimes
from spaces import pgpool
from spaces.models import Space

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def no_background_memory(settings) -> None:
    settings.STELLO = {**settings.STELLO, "CONSOLIDATE_EVERY_N_TURNS": 0,
                       "CONSOLIDATE_ON_ARCHIVE": False, "INTEGRATE_AFTER_CONSOLIDATE": False}


async def test_every_phase_is_measured_and_the_spaces_phase_cleans_up(tmp_path: Path) -> None:
    user, key = await sync_to_async(inprocess.make_key)()
    try:
        report = await inprocess.run(inprocess.PHASES, 4, 2, tmp_path, key, warmup=1)
    finally:
        await runtimes.aclose_current()
    assert set(report) == {"tree", "spaces", "ws"}
    for figures in report.values():
        assert figures["ops"] == 4
        assert len(figures["runs"]) == 2
        assert figures["cpuUsPerOp"] > 0
        assert figures["wallUsPerOp"] > 0
    if pgpool.enabled():  # the counts tests/test_thread_hops.py holds the server to
        assert report["tree"]["roundTripsPerOp"] == 1
        assert report["ws"]["roundTripsPerOp"] == 3
    else:
        assert all(f["roundTripsPerOp"] == 0 for f in report.values())
    # A profile of each phase's last run, with the operation's own code in it.
    entry = {"tree": "spaces/viewsets.py", "spaces": "spaces/viewsets.py",
             "ws": "sessions_app/ws/consumer.py"}
    for name in inprocess.PHASES:
        stats = pstats.Stats(str(tmp_path / f"{name}.prof"))
        assert any(filename.endswith(entry[name]) for filename, _, _ in stats.stats)
    # The spaces the spaces phase made (2 runs x (1 warm-up + 4)) are gone; the tree's and
    # the stream's own two stay until the user goes.
    assert await Space.objects.filter(owner=user).acount() == 2


def test_the_command_line_refuses_unknown_phases_and_empty_runs() -> None:
    with pytest.raises(SystemExit):
        inprocess.main(["--phases", "tree,nope"])
    with pytest.raises(SystemExit):
        inprocess.main(["--ops", "0"])

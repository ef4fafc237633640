"""The periodic sweeps (approvals, retention) meet an unreachable database as every request
does: one warning line per round and a next round, never a traceback (a restart of the
database is not a bug of ours, and the server-process tests hold the output to that)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from sessions_app import approvals, retention
from spaces import pgpool


async def _unavailable(*_: object, **__: object) -> None:
    raise pgpool.DatabaseUnavailable("couldn't get a connection after 2.00 sec")


@pytest.mark.parametrize("sweep", ["approvals", "retention"])
async def test_a_sweep_meeting_an_unreachable_database_logs_one_line_and_goes_on(
        sweep, monkeypatch, settings, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="stello")
    rounds = 0

    async def unavailable(*args: object, **kwargs: object) -> None:
        nonlocal rounds
        rounds += 1
        await _unavailable()

    if sweep == "approvals":
        settings.STELLO = {**settings.STELLO, "APPROVAL_SWEEP_SECONDS": 0.01}
        monkeypatch.setattr(approvals, "resume_due", unavailable)
        task = asyncio.create_task(approvals.run_periodically(None))  # type: ignore[arg-type]
    else:
        monkeypatch.setattr(retention, "interval_minutes", lambda: 0.01 / 60)
        monkeypatch.setattr(retention, "sweep", unavailable)
        task = asyncio.create_task(retention.run_periodically(None))  # type: ignore[arg-type]
    for _ in range(200):
        if rounds >= 3:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert rounds >= 3  # it went on after the first failure
    warnings = [r for r in caplog.records if r.name.startswith("stello")]
    assert warnings and all(r.exc_info is None for r in warnings), warnings
    assert all("unavailable" in r.getMessage() for r in warnings)

"""ASGI lifespan: the application starts and shuts down cleanly under servers that send it."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.testing import ApplicationCommunicator

from sessions_app.runtime.pool import runtimes
from stello_project.asgi import application


@pytest.mark.django_db(transaction=True)
async def test_shutdown_closes_this_loops_runtime() -> None:
    lifespan = ApplicationCommunicator(application, {"type": "lifespan"})
    await lifespan.send_input({"type": "lifespan.startup"})
    assert await lifespan.receive_output(5) == {"type": "lifespan.startup.complete"}
    runtime = runtimes.current()  # built by some request meanwhile
    finished: list[str] = []

    async def job() -> None:
        await asyncio.sleep(0.05)
        finished.append("memory job")

    runtime.jobs.submit("a background job", job)

    await lifespan.send_input({"type": "lifespan.shutdown"})
    assert await lifespan.receive_output(10) == {"type": "lifespan.shutdown.complete"}
    assert finished == ["memory job"]  # background work finished before the shutdown completed
    assert runtimes.current() is not runtime  # this loop's runtime was closed and forgotten
    await runtimes.aclose_current()

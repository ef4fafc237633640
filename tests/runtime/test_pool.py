"""The agent pool: lazy, cached, de-duplicated, idle-evicting; and the Django-backed runtime."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async

from sessions_app.engine.errors import SpaceNotFound
from sessions_app.runtime.pool import AgentPool, runtimes
from spaces.services import space_create, space_delete, space_update
from tests.conftest import make_user


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def counting_factory():
    built: list[str] = []

    async def factory(space_id: str) -> object:
        built.append(space_id)
        await asyncio.sleep(0)
        return object()

    return factory, built


async def test_agents_are_built_lazily_and_cached_per_space() -> None:
    factory, built = counting_factory()
    pool = AgentPool(factory, idle_ttl=300)
    assert pool.size == 0
    first = await pool.get("a")
    assert await pool.get("a") is first and pool.size == 1
    assert await pool.get("b") is not first and pool.size == 2
    assert built == ["a", "b"]


async def test_concurrent_gets_build_one_agent() -> None:
    factory, built = counting_factory()
    pool = AgentPool(factory, idle_ttl=300)
    agents = await asyncio.gather(*(pool.get("a") for _ in range(10)))
    assert len({id(a) for a in agents}) == 1 and built == ["a"]


async def test_evict_and_dispose() -> None:
    factory, built = counting_factory()
    pool = AgentPool(factory, idle_ttl=300)
    await pool.get("a")
    await pool.get("b")
    pool.evict("a")
    assert pool.size == 1
    pool.dispose()
    assert pool.size == 0
    await pool.get("a")
    assert built == ["a", "b", "a"]


async def test_idle_agents_are_evicted_after_the_ttl() -> None:
    factory, built = counting_factory()
    clock = Clock()
    pool = AgentPool(factory, idle_ttl=10, clock=clock)
    await pool.get("idle")
    clock.now = 5
    await pool.get("busy")
    clock.now = 12
    await pool.get("busy")
    assert pool.size == 1  # "idle" went unused for 12 s > 10 s
    await pool.get("idle")
    assert built == ["idle", "busy", "idle"]


async def test_a_failed_build_is_not_cached() -> None:
    calls = 0

    async def factory(space_id: str) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise SpaceNotFound()
        return object()

    pool = AgentPool(factory, idle_ttl=300)
    with pytest.raises(SpaceNotFound):
        await pool.get("a")
    assert pool.size == 0
    assert await pool.get("a") is not None


@pytest.mark.django_db(transaction=True)
async def test_the_runtime_builds_agents_for_existing_spaces_only() -> None:
    try:
        runtime = runtimes.current()
        with pytest.raises(SpaceNotFound):
            await runtime.agent("00000000-0000-0000-0000-000000000000")
        user = await sync_to_async(make_user)("dora")
        space = await sync_to_async(space_create)(owner=user, label="S")
        agent = await runtime.agent(str(space.id))
        assert agent.space_id == str(space.id) and runtime.pool.size == 1
    finally:
        await runtimes.aclose_current()


@pytest.mark.django_db(transaction=True)
async def test_patch_and_delete_evict_the_space_from_the_pool() -> None:
    try:
        runtime = runtimes.current()
        user = await sync_to_async(make_user)("erin")
        space = await sync_to_async(space_create)(owner=user, label="S")
        first = await runtime.agent(str(space.id))
        await sync_to_async(space_update)(space=space, changes={"consolidate_prompt": "new"})
        assert runtime.pool.size == 0
        assert await runtime.agent(str(space.id)) is not first
        await sync_to_async(space_delete)(space=space)
        assert runtime.pool.size == 0
    finally:
        await runtimes.aclose_current()


class ClosingSource:
    def __init__(self) -> None:
        self.closed = 0

    async def tools(self) -> list:
        return []

    async def aclose(self) -> None:
        self.closed += 1


class AgentWithSource:
    def __init__(self) -> None:
        self.tool_source = ClosingSource()

    async def aclose(self) -> None:
        await self.tool_source.aclose()


async def test_evicting_an_agent_closes_its_outside_connections() -> None:
    agents: dict[str, AgentWithSource] = {}

    async def factory(space_id: str) -> AgentWithSource:
        agents[space_id] = AgentWithSource()
        return agents[space_id]

    pool = AgentPool(factory, idle_ttl=300)
    await pool.get("a")
    await pool.get("b")
    pool.evict("a")
    await pool.aclose()  # waits for the evicted agent's release too, then disposes of "b"
    assert agents["a"].tool_source.closed == 1
    assert agents["b"].tool_source.closed == 1
    assert pool.size == 0

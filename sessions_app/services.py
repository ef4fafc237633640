"""Write paths of sessions for sync callers (the admin), through the same engine calls as the
REST API, so they follow the same rules and take the same session lock."""

from __future__ import annotations

from asgiref.sync import async_to_sync

from .runtime.pool import runtimes


def session_slot_write(*, space_id: str, session_id: str, key: str, content: str | None,
                       own_loop: bool) -> None:
    """`SpaceAgent.write_slot`, from sync code. `own_loop`: the caller runs outside an ASGI
    server (WSGI, the test client), so the call gets an event loop of its own, whose runtime
    (pools, lock connections) is closed before returning; under ASGI the call runs on the
    server's loop and its runtime stays."""

    async def write() -> None:
        try:
            agent = await runtimes.current(one_call=own_loop).agent(space_id)
            await agent.write_slot(session_id, key, content)
        finally:
            if own_loop:
                await runtimes.aclose_current()

    async_to_sync(write)()

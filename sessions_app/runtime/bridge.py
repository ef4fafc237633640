"""Run engine coroutines from sync code (DRF views, management commands).

Under the ASGI server a sync view runs in a worker thread spawned from the server's event loop,
and `async_to_sync` hands the coroutine back to that loop, where the shared runtime lives.
Called from plain sync code (a WSGI-style test client, a shell), `async_to_sync` makes a
throwaway loop: the runtime built for it is closed (background work finished) before returning.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from asgiref.sync import SyncToAsync, async_to_sync

from .pool import Runtime, runtimes

T = TypeVar("T")


def run_with_runtime(operation: Callable[[Runtime], Awaitable[T]]) -> T:
    # asgiref leaves the loop of an earlier call in this thread-local: only a running one counts.
    server_loop = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
    on_server_loop = server_loop is not None and server_loop.is_running()

    async def run() -> T:
        try:
            return await operation(runtimes.current())
        finally:
            if not on_server_loop:
                await runtimes.aclose_current()

    return async_to_sync(run)()

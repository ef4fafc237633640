"""What our code relies on in asgiref beyond its documented API, pinned by behaviour, so an
upgrade of asgiref (pinned in requirements.txt) that changes it fails here first:

- `stello_project.asgi.ran_sync_code` reads `SyncToAsync.thread_sensitive_context` and
  `SyncToAsync.context_to_thread_executor` to tell whether a request ran sync code (and so has
  a worker thread whose database connections must be closed there). If asgiref renamed them,
  it would answer "yes" for every request: correct, but a thread hop per request again.
- `sessions_app.store.orm.unit_of_work` overrides `SyncToAsync.thread_handler`, as channels'
  `database_sync_to_async` does, to release stale connections in the worker thread around
  each call.
"""

from __future__ import annotations

import threading

from asgiref.sync import ThreadSensitiveContext, sync_to_async

from sessions_app.store import orm
from stello_project.asgi import ran_sync_code


async def test_ran_sync_code_sees_whether_the_request_context_got_a_worker_thread() -> None:
    async with ThreadSensitiveContext():
        assert ran_sync_code() is False
        await sync_to_async(lambda: None)()
        assert ran_sync_code() is True


async def test_a_unit_of_work_releases_stale_connections_around_the_call_in_its_thread(
    monkeypatch,
) -> None:
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(orm, "_release_stale_connections",
                        lambda: calls.append(("release", threading.get_ident())))

    @orm.unit_of_work
    def body() -> int:
        calls.append(("body", threading.get_ident()))
        return 7

    assert await body() == 7
    assert [name for name, _ in calls] == ["release", "body", "release"]
    threads = {thread for _, thread in calls}
    assert len(threads) == 1 and threading.get_ident() not in threads  # one worker thread

"""The ASGI application: HTTP through Django, WebSocket through Channels.

Serve it with `daphne stello_project.asgi:application` (or uvicorn, see the README).

HTTP goes through `StelloASGIHandler`, Django's ASGI handler with two per-request thread hops
removed. Django's handler sends `request_started` through `asend`, which runs its sync receivers
in a worker thread, and closes every response (`response.close()`, which sends
`request_finished`) in a worker thread too: two hops, and a thread started for each request.
Both exist so the receivers (`reset_queries`, `close_old_connections`, `close_caches`,
`reset_urlconf`) act on the thread that ran the request's sync code, where its database
connections live. So here:

- `request_started` is sent on the event loop. Django would run its receivers in the request's
  thread-sensitive worker thread, which does not exist yet at that point (a new one is made for
  each request), so they find no connection there; on the loop there is none either (Django
  refuses ORM calls on the loop). Same effect, no hop. Sending it synchronously means an async
  receiver of `request_started` would fail loudly; none exists.
- the response is closed in the request's worker thread only when the request had one, that is
  when some sync code ran for it (the ORM on SQLite, a cold path, the admin); then the
  connections it opened are closed there exactly as Django does. A request that stayed on the
  loop (the async hot paths on PostgreSQL) has no such thread and no connection to close: its
  response is closed on the loop.
"""

import asyncio
import logging
import os

import django
from asgiref.sync import SyncToAsync, sync_to_async
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.urls import set_script_prefix

from stello_project.env import configuration_errors_in_one_line

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stello_project.settings")
with configuration_errors_in_one_line():
    django.setup(set_prefix=False)  # before the consumers and views are imported


def ran_sync_code() -> bool:
    """Whether the current request's thread-sensitive context has a worker thread (asgiref
    creates one on the first `sync_to_async` call of the context). Unknown means yes."""
    context = SyncToAsync.thread_sensitive_context.get(None)
    executors = getattr(SyncToAsync, "context_to_thread_executor", None)
    return context is None or executors is None or context in executors


class StelloASGIHandler(ASGIHandler):
    """Django's ASGI handler without its per-request thread hops (see the module doc)."""

    async def handle(self, scope, receive, send):
        # Django's `ASGIHandler.handle`, with the two changes of the module doc marked.
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)  # changed: no hop
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            await self.aclose_response(error_response)
            return

        async def process_request(request, send):
            response = await self.run_get_response(request)
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass  # the client disconnected during send_response
            return response

        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(process_request(request, send)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    pass
                except AssertionError:
                    body_file.close()
                    raise
            else:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        try:
            response = tasks[1].result()
        except asyncio.CancelledError:
            await signals.request_finished.asend(sender=self.__class__)
        else:
            await self.aclose_response(response)  # changed: on the loop when no thread ran
        body_file.close()

    async def aclose_response(self, response) -> None:
        if ran_sync_code():
            await sync_to_async(response.close)()
        else:
            response.close()


django_asgi_app = StelloASGIHandler()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from sessions_app.runtime.lifespan import lifespan  # noqa: E402
from sessions_app.runtime.startup import log_startup  # noqa: E402
from sessions_app.ws.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": URLRouter(websocket_urlpatterns),
        "lifespan": lifespan,  # a clean shutdown under uvicorn (daphne sends no lifespan)
    }
)

with configuration_errors_in_one_line():
    log_startup(logging.getLogger("stello"))

__all__ = ["StelloASGIHandler", "application", "django_asgi_app"]

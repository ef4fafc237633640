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
  receiver of `request_started` would fail loudly; none exists. And while Django's own two
  receivers are its only ones, it is not sent at all: they would find nothing to do.
- the response is closed in the request's worker thread only when the request had one, that is
  when some sync code ran for it (the ORM on SQLite, a cold path, the admin); then the
  connections it opened are closed there exactly as Django does. A request that stayed on the
  loop (the async hot paths on PostgreSQL) has no such thread and no connection to close: its
  response is closed on the loop, and `request_finished` is sent only when it has receivers
  other than Django's own three, which have nothing to do there (no database connection on
  the loop; our cache backends' `close` does nothing; no request sets a urlconf).

It also reads request bodies itself (`read_limited_body`, the third change), so that every
body, with a Content-Length or chunked (`Transfer-Encoding: chunked`, which has none), is held
to STELLO_MAX_BODY_BYTES while it is read: a larger one is answered 413 without being stored
(the rest is read and thrown away, up to `DISCARD_BYTES`, so the client gets to read the
answer). A chunked body gets the Content-Length it turned out to have, because Django and DRF
read a request without one as empty. The body must arrive within
STELLO_HTTP_BODY_TIMEOUT_SECONDS, else 408 (a client that trickles its body must not hold the
connection and its buffer forever).

Fourth, the request runs in the handler's own task; only Django's disconnect listener gets a
task of its own, which cancels the handler when the client goes away (Django runs the request
in a second new task and waits for whichever ends first). Same outcome, two loop turns fewer per
request: on a loop busy with a burst of turns, every loop turn a request needs waits behind all
the work that is ready, so a quiet tenant's request needs as few as possible.

Last, under daphne the reason phrases Twisted lacks (e.g. `429 Too Many Requests`, which it
would print as `429 Unknown Status`) are filled in from the standard library's table.
"""

import asyncio
import gc
import io
import logging
import os
import sys
import tempfile
from http import HTTPStatus

import django
from asgiref.sync import SyncToAsync, sync_to_async
from django.conf import settings
from django.core import signals
from django.core.cache import close_caches
from django.core.cache.backends.base import BaseCache
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import reset_urlconf
from django.db import close_old_connections, reset_queries
from django.http import JsonResponse
from django.urls import set_script_prefix
from django.utils.module_loading import import_string

from stello_project.env import configuration_errors_in_one_line

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stello_project.settings")
with configuration_errors_in_one_line():
    django.setup(set_prefix=False)  # before the consumers and views are imported


def _receiver_key(receiver) -> tuple[int, int]:
    # How `Signal.connect` identifies a plain function connected for any sender.
    return (id(receiver), id(None))


# Django's own `request_started` receivers act on the calling thread's database connections;
# the event loop thread has none (Django refuses ORM calls there).
_LOOP_NOOP_STARTED_RECEIVERS = frozenset(map(_receiver_key, (reset_queries,
                                                             close_old_connections)))


def _cache_close_is_noop() -> bool:
    """Whether every configured cache backend keeps Django's no-op `close` (Redis and local
    memory do)."""
    return all(import_string(cache["BACKEND"]).close is BaseCache.close
               for cache in settings.CACHES.values())


# ... and its `request_finished` receivers, after a request that stayed on the loop: no database
# connection to close there, cache backends whose `close` is a no-op, and the urlconf, which
# Django sets per request in the request's own context.
_LOOP_NOOP_FINISHED_RECEIVERS = frozenset(map(_receiver_key, (
    close_old_connections, reset_urlconf, *((close_caches,) if _cache_close_is_noop() else ()))))


def send_request_started(scope) -> None:
    """`request_started`, sent on the event loop, unless its only receivers are Django's own,
    which would find nothing to do there (a walk over the connection handler per request)."""
    signal = signals.request_started
    if all(key in _LOOP_NOOP_STARTED_RECEIVERS for key, _, _ in signal.receivers):
        return
    signal.send(sender=StelloASGIHandler, scope=scope)


def ran_sync_code() -> bool:
    """Whether the current request's thread-sensitive context has a worker thread (asgiref
    creates one on the first `sync_to_async` call of the context). Unknown means yes."""
    context = SyncToAsync.thread_sensitive_context.get(None)
    executors = getattr(SyncToAsync, "context_to_thread_executor", None)
    return context is None or executors is None or context in executors


class StelloASGIHandler(ASGIHandler):
    """Django's ASGI handler without its per-request thread hops (see the module doc)."""

    async def handle(self, scope, receive, send):
        # Django's `ASGIHandler.handle`, with the changes of the module doc marked.
        try:
            body_file, scope = await self.read_limited_body(scope, receive)  # changed
        except RequestAborted:
            return
        except BodyRefused as refusal:
            await self.send_response(refusal.response(), send)
            return
        set_script_prefix(get_script_prefix(scope))
        send_request_started(scope)  # changed: on the loop, no hop
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

        # Changed: the request runs in this task, and only the disconnect listener in a task
        # of its own, which cancels this one when the client goes away (Django runs both in
        # new tasks and waits for the first to finish: two more loop turns per request, each
        # behind everything else ready, which is what a request waits for on a busy loop).
        handler = asyncio.current_task()
        stopped_by: Exception | None = None

        async def listen_for_disconnect():
            nonlocal stopped_by
            try:
                await self.listen_for_disconnect(receive)
            except (RequestAborted, AssertionError) as exc:  # gone, or a message out of turn
                stopped_by = exc
                handler.cancel()

        listener = asyncio.create_task(listen_for_disconnect())
        try:
            response = await process_request(request, send)
        except asyncio.CancelledError:
            if stopped_by is None:  # cancelled from outside (e.g. shutdown): not ours
                listener.cancel()
                body_file.close()
                raise
            handler.uncancel()
            if isinstance(stopped_by, AssertionError):
                body_file.close()
                raise stopped_by from None
            await signals.request_finished.asend(sender=self.__class__)
        else:
            listener.cancel()
            if stopped_by is not None:  # it landed in send_response, which ignores it
                handler.uncancel()
            await self.aclose_response(response)  # changed: on the loop when no thread ran
        body_file.close()

    async def read_limited_body(self, scope, receive):
        """(body file, scope): Django's `read_body` with the limit and the timeout of the module
        doc; the scope gains a `content-length` header when the request had none."""
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if scope.get("path", "").rstrip("/") == "/spaces/import":  # a whole space: own limit
            limit = settings.STELLO["IMPORT_MAX_BYTES"]
        declared = _content_length(scope)
        too_large = BodyRefused(413, f"Request body too large (limit {limit} bytes)",
                                "PAYLOAD_TOO_LARGE")
        # Django spools a body to a temporary file past FILE_UPLOAD_MAX_MEMORY_SIZE. A body
        # that may not grow past that anyway is kept in memory from the start (most requests
        # have none at all), which costs a tenth of a spooled file.
        spool_past = settings.FILE_UPLOAD_MAX_MEMORY_SIZE
        body_file = (io.BytesIO() if limit is not None and limit <= spool_past
                     else tempfile.SpooledTemporaryFile(max_size=spool_past, mode="w+b"))
        size = 0
        try:
            async with asyncio.timeout(settings.STELLO["HTTP_BODY_TIMEOUT_SECONDS"]):
                if limit is not None and declared is not None and declared > limit:
                    if declared <= limit + DISCARD_BYTES:
                        await _discard_body(receive, DISCARD_BYTES)
                    raise too_large
                more = True
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise RequestAborted()
                    chunk = message.get("body", b"")
                    more = message.get("more_body", False)
                    size += len(chunk)
                    if limit is not None and size > limit:
                        if more:
                            await _discard_body(receive, DISCARD_BYTES)
                        raise too_large
                    body_file.write(chunk)
        except TimeoutError:
            body_file.close()
            raise BodyRefused(408, "Request body not received in time", "REQUEST_TIMEOUT") from None
        except BaseException:
            body_file.close()
            raise
        body_file.seek(0)
        if declared is None and size:
            scope = {**scope, "headers": [*scope.get("headers", ()),
                                          (b"content-length", str(size).encode())]}
        return body_file, scope

    async def aclose_response(self, response) -> None:
        if ran_sync_code():
            await sync_to_async(response.close)()
        elif all(key in _LOOP_NOOP_FINISHED_RECEIVERS
                 for key, _, _ in signals.request_finished.receivers):
            # `HttpResponseBase.close` without the signal (see the module doc).
            for closer in response._resource_closers:
                try:
                    closer()
                except Exception:
                    pass
            response._resource_closers.clear()
            response.closed = True
        else:
            response.close()


class BodyRefused(Exception):
    """The request body is refused before Django sees the request (413, 408)."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code

    def response(self) -> JsonResponse:
        # Connection: close, since the rest of the body was not read.
        response = JsonResponse({"error": self.message, "code": self.code}, status=self.status,
                                headers={"Connection": "close"})
        response["Content-Length"] = str(len(response.content))
        return response


# A refused body is still read (and thrown away) up to this much, so that the client, which is
# still sending it, reads our 413 instead of a connection reset.
DISCARD_BYTES = 8 * 1024 * 1024


async def _discard_body(receive, budget: int) -> None:
    while budget > 0:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return
        budget -= len(message.get("body", b""))


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed length before we get here
    return None


def add_missing_reason_phrases() -> None:
    """Teach Twisted (daphne) the reason phrases it does not know, e.g. 429 Too Many Requests.
    Does nothing under other servers (they take the phrase from `http.HTTPStatus`)."""
    twisted_http = sys.modules.get("twisted.web.http")
    if twisted_http is not None:
        for status in HTTPStatus:
            twisted_http.RESPONSES.setdefault(status.value, status.phrase.encode())


add_missing_reason_phrases()
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

# Everything loaded so far (Django, the apps, the URL patterns, the libraries) lives as long as
# the process: moved out of the collector's sight, the cyclic garbage collector stops walking
# those objects over and over while requests run (it was about 7% of a request's instructions).
gc.freeze()

__all__ = ["StelloASGIHandler", "application", "django_asgi_app"]

"""Two middleware paths: the API straight to its async views, the admin through Django's chain.

`settings.MIDDLEWARE` lists Django's stock middleware (security, sessions, common, auth,
messages, clickjacking), so `manage.py check --deploy` sees and checks them, between two of ours:
`RequestPathMiddleware` before them and `ViewHandlerMiddleware`, last, after them.

Those stock middlewares are sync code: under ASGI, Django runs each of their hooks in a worker
thread, about ten thread hand-offs per request. The admin (and the static files it serves) goes
through them as Django built them; it is a cold path. Every other request (the REST API, the
schema and docs, the health checks) skips them: `RequestPathMiddleware` sends it straight to the
view handler that `ViewHandlerMiddleware` wraps, on the event loop, and applies on the way what
the stock chain would have done for it:

- a disallowed `Host` answers 400 (`request.get_host()` raises, as in CommonMiddleware);
- SecurityMiddleware's own hooks, called directly (they do no I/O, so they need no thread): the
  HTTPS redirect (`SECURE_SSL_REDIRECT`), HSTS, `X-Content-Type-Options`, `Referrer-Policy`,
  `Cross-Origin-Opener-Policy`;
- XFrameOptionsMiddleware's `X-Frame-Options`, and `Content-Length` (as CommonMiddleware).

No session, CSRF or auth middleware runs for them: the API authenticates with an API key in DRF
and keeps no cookies.
"""

from __future__ import annotations

import threading

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from corsheaders.middleware import CorsMiddleware
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, MiddlewareNotUsed
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.security import SecurityMiddleware

# Django builds the chain from the last middleware to the first, in one call: the view handler
# that `ViewHandlerMiddleware` wraps is handed to the `RequestPathMiddleware` built next in the
# same thread.
_built = threading.local()


class ViewHandlerMiddleware:
    """The last entry of MIDDLEWARE: passes every request on to the view handler it wraps (so
    the admin's requests reach their views) and hands that handler to RequestPathMiddleware."""

    async_capable = True
    sync_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)
        _built.view_handler = get_response

    def __call__(self, request):
        return self.get_response(request)  # a coroutine in async mode, awaited by Django


class RequestPathMiddleware:
    """Async under an ASGI server. It is sync-capable too, so that a sync handler (the test
    client, WSGI) calls it without bridging, and calls async views the way Django does."""

    async_capable = True
    sync_capable = True

    def __init__(self, get_response) -> None:
        view_handler = getattr(_built, "view_handler", None)
        if view_handler is None:
            raise ImproperlyConfigured(
                "stello_project.middleware.ViewHandlerMiddleware must be the last MIDDLEWARE")
        del _built.view_handler
        self.get_response = get_response  # the stock chain, then the view handler
        self.view_handler = view_handler
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)  # Django then awaits it (and converts its exceptions)
        # The console's page and staff sign-in need the session and auth middleware, as the admin.
        self.admin_prefixes = ("/admin/", "/console/", "/" + settings.STATIC_URL.lstrip("/"))
        # Instances only for their hooks; their own get_response is never called.
        self.security = SecurityMiddleware(view_handler)
        self.frame_options = XFrameOptionsMiddleware(view_handler)

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        if request.path_info.startswith(self.admin_prefixes):
            return self.get_response(request)
        response = self.start(request) or self.view_handler(request)
        return self.finish(request, response)

    async def __acall__(self, request):
        if request.path_info.startswith(self.admin_prefixes):
            return await self.get_response(request)
        response = self.start(request) or await self.view_handler(request)
        return self.finish(request, response)

    def start(self, request):
        request.get_host()  # DisallowedHost -> 400, as CommonMiddleware does
        return self.security.process_request(request)  # the HTTPS redirect, or None

    def finish(self, request, response):
        response = self.security.process_response(request, response)
        response = self.frame_options.process_response(request, response)
        if not response.streaming and "Content-Length" not in response.headers:
            response.headers["Content-Length"] = str(len(response.content))
        return response


class CorsMiddlewareWhenConfigured(CorsMiddleware):
    """django-cors-headers' middleware, used only when some origin is allowed: with none (the
    default) it would answer no request differently, so Django leaves it out of the chain."""

    def __init__(self, get_response) -> None:
        if not (settings.CORS_ALLOWED_ORIGINS
                or getattr(settings, "CORS_ALLOWED_ORIGIN_REGEXES", ())
                or getattr(settings, "CORS_ALLOW_ALL_ORIGINS", False)):
            raise MiddlewareNotUsed("no CORS origin is allowed")
        super().__init__(get_response)

"""Two middleware paths: the API straight to its async views, the admin through Django's chain.

`settings.MIDDLEWARE` holds one middleware, `RequestPathMiddleware` (async under ASGI). For the
admin (and the static files it serves in development) it runs Django's stock chain (security,
sessions, common, CSRF, auth, messages, clickjacking), built once around the same
`get_response`. Those middlewares are sync code, so the whole chain crosses to a worker thread
ONCE per admin request (marked sync-only, Django would otherwise hop for each of their hooks).
The admin's views are CSRF-protected by the admin site itself (`csrf_protect` on each view),
so the chain needs no `process_view` hook from the handler.

Every other request (the REST API, the schema and docs, the health checks) goes straight to its
view on the event loop, with what the stock chain did for it: a disallowed `Host` answers 400
(`request.get_host()` raises, as in CommonMiddleware), `Content-Length` is set (CommonMiddleware),
and the static headers of the security and clickjacking middlewares are added
(`X-Content-Type-Options`, `Referrer-Policy`, `Cross-Origin-Opener-Policy`, `X-Frame-Options`,
from the same settings). No session, CSRF or auth middleware runs: the API authenticates with
`X-API-Key` in DRF and keeps no cookies.
"""

from __future__ import annotations

from asgiref.sync import (
    async_to_sync,
    iscoroutinefunction,
    markcoroutinefunction,
    sync_to_async,
)
from django.conf import settings
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.core.handlers.exception import convert_exception_to_response
from django.middleware import clickjacking, common, csrf, security

# Django's stock chain, outermost first, as `MIDDLEWARE` would list it.
ADMIN_MIDDLEWARE = (
    security.SecurityMiddleware,
    sessions.SessionMiddleware,
    common.CommonMiddleware,
    csrf.CsrfViewMiddleware,
    auth.AuthenticationMiddleware,
    messages.MessageMiddleware,
    clickjacking.XFrameOptionsMiddleware,
)


def admin_chain(get_response, *, is_async: bool):
    """Django's stock chain around `get_response`. Its middlewares are sync code: around an
    async `get_response` the whole chain is one coroutine function (one hop into the chain, one
    back to the loop for the view: Django's own adaptation, done once instead of per hook)."""
    inner = async_to_sync(get_response) if is_async else get_response
    handler = convert_exception_to_response(inner)
    for cls in reversed(ADMIN_MIDDLEWARE):
        handler = convert_exception_to_response(cls(handler))
    return sync_to_async(handler, thread_sensitive=True) if is_async else handler


class RequestPathMiddleware:
    """Async under an ASGI server. It is sync-capable too, so that a sync handler (the test
    client, WSGI) calls it without bridging, and calls async views the way Django does."""

    async_capable = True
    sync_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)  # Django then awaits it (and converts its exceptions)
        self.admin_chain = admin_chain(get_response, is_async=self.is_async)
        self.admin_prefixes = ("/admin/", "/" + settings.STATIC_URL.lstrip("/"))
        self.static_headers = static_headers()

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        if request.path_info.startswith(self.admin_prefixes):
            return self.admin_chain(request)
        request.get_host()  # DisallowedHost -> 400, as CommonMiddleware does
        return self.finish(self.get_response(request))

    async def __acall__(self, request):
        if request.path_info.startswith(self.admin_prefixes):
            return await self.admin_chain(request)
        request.get_host()  # DisallowedHost -> 400, as CommonMiddleware does
        return self.finish(await self.get_response(request))

    def finish(self, response):
        headers = response.headers
        for name, value in self.static_headers:
            headers.setdefault(name, value)
        if not response.streaming and "Content-Length" not in headers:
            headers["Content-Length"] = str(len(response.content))
        return response


def static_headers() -> tuple[tuple[str, str], ...]:
    """The response headers SecurityMiddleware and XFrameOptionsMiddleware add to every
    response, from the same settings."""
    headers = []
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        headers.append(("X-Content-Type-Options", "nosniff"))
    if settings.SECURE_REFERRER_POLICY:
        policy = settings.SECURE_REFERRER_POLICY
        if not isinstance(policy, str):
            policy = ",".join(policy)
        headers.append(("Referrer-Policy", policy))
    if settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
        headers.append(("Cross-Origin-Opener-Policy", settings.SECURE_CROSS_ORIGIN_OPENER_POLICY))
    headers.append(("X-Frame-Options", getattr(settings, "X_FRAME_OPTIONS", "DENY").upper()))
    return tuple(headers)

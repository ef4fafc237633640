"""The async base of every REST viewset: adrf's viewsets, with the whole request on the loop.

adrf (async DRF) runs `initial()` (authentication, permissions, throttling) in `sync_to_async`,
converts async authenticators and throttles back with `async_to_sync`, and leaves the DRF
`Response` for Django's handler to render, which it does in another `sync_to_async`. Here every
step runs on the event loop instead:

- authentication awaits an authenticator's `aauthenticate(request)` when it has one (the
  `X-API-Key` authenticator does: a cache hit costs no I/O at all) and calls a sync
  `authenticate` directly otherwise;
- permissions and throttles are awaited when they are coroutines (`ahas_permission`,
  `aallow_request`) and called directly when they are plain CPU checks (`IsAuthenticated`);
- the handler is awaited; a sync one (OPTIONS, 405) is CPU-only and called directly;
- the response is rendered here (orjson) and handed to Django as a plain `HttpResponse`, which
  Django sends as it is (a DRF `Response` still has a `render` method, which Django's async
  handler would run in a worker thread).

A request that does not come from an ASGI server (the sync test client, or WSGI) runs its async
view on an event loop made for that one call; the loop-bound resources built for it (the async
PostgreSQL pool, and through `aclose_call_loop` overrides the session runtime) are closed
before the view returns, so nothing outlives its loop.
"""

from __future__ import annotations

import inspect
from typing import Any

from adrf.requests import AsyncRequest
from adrf.viewsets import ViewSet
from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter

from . import idempotency, pgpool
from .errors import InvalidIdempotencyKey
from .parsers import PayloadTooLarge
from .throttling import rate_limiter

# Ids are UUIDs, but any one path segment is routed: a malformed id answers 404 from the view
# (`Space not found`, `Session not found`), exactly like an unknown one.
ID_SEGMENT = "[^/]+"


class ApiRequest(AsyncRequest):
    """A DRF request that can authenticate on the event loop."""

    async def aauthenticate(self) -> None:
        """Like `Request._authenticate`, awaiting `aauthenticate` where an authenticator has it."""
        for authenticator in self.authenticators:
            try:
                aauthenticate = getattr(authenticator, "aauthenticate", None)
                if aauthenticate is not None:
                    user_auth = await aauthenticate(self)
                else:
                    user_auth = authenticator.authenticate(self)
            except exceptions.APIException:
                self._not_authenticated()
                raise
            if user_auth is not None:
                self._authenticator = authenticator
                self.user, self.auth = user_auth
                return
        self._not_authenticated()


class AsyncViewSet(ViewSet):
    """A DRF viewset whose actions are coroutines, served with no thread hop of its own."""

    # Every action of our viewsets is a coroutine. adrf finds that out by listing the class's
    # members on each request; saying it once is enough.
    view_is_async = True
    lookup_value_regex = ID_SEGMENT

    def initialize_request(self, request, *args: Any, **kwargs: Any) -> ApiRequest:
        return ApiRequest(
            request,
            parsers=self.get_parsers(),
            authenticators=self.get_authenticators(),
            negotiator=self.get_content_negotiator(),
            parser_context=self.get_parser_context(request),
        )

    async def async_dispatch(self, request, *args: Any, **kwargs: Any) -> HttpResponse:
        self.args = args
        self.kwargs = kwargs
        request = self.initialize_request(request, *args, **kwargs)
        self.request = request
        self.headers = self.default_response_headers
        try:
            try:
                await self.ainitial(request, *args, **kwargs)
                # A mutating request with an Idempotency-Key runs at most once; one without
                # costs this lookup and nothing else.
                # A method the route does not have answers 405, key or no key.
                if (idempotency.META_HEADER in request._request.META
                        and request.method in idempotency.MUTATING
                        and getattr(self, request.method.lower(), None) is not None):
                    return await self.aidempotent(request, *args, **kwargs)
                response = await self.ahandle(request, *args, **kwargs)
            except Exception as exc:
                response = self.handle_exception(exc)
            self.response = self.finalize_response(request, response, *args, **kwargs)
            return rendered(self.response)
        finally:
            if getattr(request._request, "scope", None) is None:
                await self.aclose_call_loop()

    async def ahandle(self, request: ApiRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        method = request.method.lower()
        handler = (getattr(self, method, None) if method in self.http_method_names
                   else None) or self.http_method_not_allowed
        response = handler(request, *args, **kwargs)
        if inspect.isawaitable(response):
            response = await response
        return response

    async def aidempotent(self, request: ApiRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        """The handler's answer, run at most once per user and key (`spaces.idempotency`): the
        stored answer is the rendered response, errors included, exactly as first sent."""

        async def run() -> idempotency.Answer:
            try:
                response = await self.ahandle(request, *args, **kwargs)
            except Exception as exc:
                response = self.handle_exception(exc)
            self.response = rendered(self.finalize_response(request, response, *args, **kwargs))
            return idempotency.Answer(self.response.status_code,
                                      self.response.get("Content-Type", "application/json"),
                                      self.response.content)

        try:
            try:
                key = idempotency.parse_key(request._request.META[idempotency.META_HEADER])
            except InvalidIdempotencyKey:
                await self.acheck_target(request, *args, **kwargs)  # 403/404 before the 400
                raise
            django_request = request._request
            try:
                body = django_request.body  # DRF's parser then reads the same bytes again
            except RequestDataTooBig:
                raise PayloadTooLarge() from None
            path = django_request.get_full_path()
            answer, replayed = await idempotency.once(idempotency.Request(
                request.user.id, key, request.method, path,
                idempotency.fingerprint(request.method, path, body)), run)
        except Exception as exc:
            self.response = self.finalize_response(request, self.handle_exception(exc),
                                                   *args, **kwargs)
            return rendered(self.response)
        if not replayed:
            return self.response
        response = HttpResponse(answer.body, status=answer.status,
                                content_type=answer.content_type)
        response[idempotency.REPLAYED_HEADER] = "true"
        self.response = self.finalize_response(request, response, *args, **kwargs)
        return self.response

    async def acheck_target(self, request: ApiRequest, *args: Any, **kwargs: Any) -> None:
        """Whether the caller may touch what the route names, for viewsets whose handlers
        check that themselves: a bad Idempotency-Key answers 400 only to the owner. (Routes
        under a space check it in `ainitial` already.)"""

    async def ainitial(self, request: ApiRequest, *args: Any, **kwargs: Any) -> None:
        """`APIView.initial`, with authentication, permissions and throttles on the loop."""
        self.format_kwarg = self.get_format_suffix(**kwargs)
        request.accepted_renderer, request.accepted_media_type = (
            self.perform_content_negotiation(request))
        request.version, request.versioning_scheme = self.determine_version(
            request, *args, **kwargs)
        await request.aauthenticate()
        await self.acheck_permissions(request)
        await self.acheck_throttles(request)

    async def acheck_permissions(self, request: ApiRequest) -> None:
        for permission in self.get_permissions():
            check = getattr(permission, "ahas_permission", None)
            allowed = (await check(request, self) if check is not None
                       else permission.has_permission(request, self))
            if not allowed:
                self.permission_denied(request, message=getattr(permission, "message", None),
                                       code=getattr(permission, "code", None))

    async def acheck_throttles(self, request: ApiRequest) -> None:
        waits = []
        for throttle in self.get_throttles():
            check = getattr(throttle, "aallow_request", None)
            allowed = (await check(request, self) if check is not None
                       else throttle.allow_request(request, self))
            if not allowed:
                waits.append(throttle.wait())
        if waits:
            self.throttled(request, max((w for w in waits if w is not None), default=None))

    async def aclose_call_loop(self) -> None:
        """Close what was built for the event loop of this one call (see the module doc)."""
        await idempotency.settled()
        await idempotency.key_locks.aclose_current()
        await pgpool.pools.aclose_current()
        await rate_limiter.aclose_current()


def rendered(response: HttpResponse) -> HttpResponse:
    """The response rendered now, as a plain HttpResponse that Django sends as it is."""
    if not isinstance(response, Response):
        return response
    response.render()
    plain = HttpResponse(response.content, status=response.status_code)
    plain.headers = response.headers  # Content-Type, Allow, Vary, WWW-Authenticate, Retry-After
    return plain


class OptionalSlashRouter(SimpleRouter):
    """DRF's SimpleRouter, answering every route with and without a trailing slash."""

    def __init__(self) -> None:
        super().__init__(trailing_slash=False)
        self.trailing_slash = "/?"

"""API-key authentication, for DRF views and (through the plain functions) the WebSocket consumer.

The key comes in the `X-API-Key` header or, as many HTTP clients and gateways prefer, as
`Authorization: Bearer <key>`; when both are sent, `X-API-Key` wins. Nothing reads a key from
the query string (so none ends up in an access log).

A successful lookup is cached in this process for STELLO["AUTH_CACHE_SECONDS"] (default 5 s,
0 disables; see `spaces.apikeys.AuthCache`), so most requests cost no auth query at all.
Revoking a key through `spaces.apikeys.apikey_revoke` takes effect at once in the revoking
process; every other server process stops accepting the key within that TTL.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed

from .apikeys import (
    Credentials,
    apikey_aauthenticate,
    apikey_atouch,
    apikey_authenticate,
    apikey_touch,
    auth_cache,
    hash_key,
    looks_like_key,
)
from .errors import Unauthenticated

HEADER = "X-API-Key"
META_KEY = "HTTP_X_API_KEY"
BEARER = "bearer"
MISSING = "Missing API key"
INVALID = "Invalid API key"


class ApiKeyError(Unauthenticated):
    """Authentication failed; `message` is MISSING or INVALID, fit to show the client."""


def key_from_headers(x_api_key: str | None, authorization: str | None) -> str | None:
    """The raw key of a request: the `X-API-Key` header, else an `Authorization: Bearer` one
    (the scheme is case-insensitive). Any other `Authorization` is no key at all."""
    if x_api_key is not None:
        return x_api_key
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    return credentials if scheme.lower() == BEARER else None


def request_key(request) -> str | None:
    return key_from_headers(request.META.get(META_KEY), request.META.get("HTTP_AUTHORIZATION"))


def _from_cache(raw: str | None) -> tuple[str, str, Credentials | None]:
    """(key, key hash, cached credentials or None); raises ApiKeyError for a missing or
    malformed key (no hashing, no query)."""
    key = (raw or "").strip()
    if not key:
        raise ApiKeyError(MISSING)
    if not looks_like_key(key):
        raise ApiKeyError(INVALID)
    key_hash = hash_key(key)
    return key, key_hash, auth_cache.get(key_hash)


def _lookup(key: str, key_hash: str) -> Credentials:
    """Cache miss: read the database (and record the use), then cache the result."""
    credentials = apikey_authenticate(key)
    if credentials is None:
        raise ApiKeyError(INVALID)
    auth_cache.put(key_hash, credentials)
    return credentials


def authenticate_credentials(raw: str | None) -> Credentials:
    """The (user, api key) for a raw key; raises ApiKeyError(MISSING | INVALID)."""
    key, key_hash, credentials = _from_cache(raw)
    if credentials is None:
        return _lookup(key, key_hash)
    apikey_touch(apikey=credentials[1])  # a query only about once a minute
    return credentials


async def aauthenticate_credentials(raw: str | None) -> Credentials:
    """Async twin of `authenticate_credentials`. A cache hit stays on the event loop (no thread
    hop unless the once-a-minute last-used UPDATE is due); a miss crosses to the ORM once."""
    key, key_hash, credentials = _from_cache(raw)
    if credentials is None:
        # One statement on PostgreSQL (lookup + the due last-used update), on the loop; one
        # hop to the ORM on the embedded SQLite default.
        credentials = await apikey_aauthenticate(key)
        if credentials is None:
            raise ApiKeyError(INVALID)
        auth_cache.put(key_hash, credentials)
        return credentials
    await apikey_atouch(apikey=credentials[1])
    return credentials


def authenticate_key(raw: str | None) -> AbstractBaseUser:
    """The user a raw key belongs to; raises ApiKeyError(MISSING | INVALID)."""
    return authenticate_credentials(raw)[0]


async def aauthenticate_key(raw: str | None) -> AbstractBaseUser:
    """Async twin of `authenticate_key` (see `aauthenticate_credentials`)."""
    return (await aauthenticate_credentials(raw))[0]


class ApiKeyAuthentication(BaseAuthentication):
    """DRF authentication by the `X-API-Key` header (or `Authorization: Bearer`): `request.user`
    is the key's owner and `request.auth` the ApiKey row. A missing/empty header and a bad key
    both answer 401. Async views await `aauthenticate`; sync DRF views (if any) call
    `authenticate`."""

    def authenticate(self, request) -> Credentials:
        try:
            return authenticate_credentials(request_key(request))
        except ApiKeyError as exc:
            raise AuthenticationFailed(exc.message) from None

    async def aauthenticate(self, request) -> Credentials:
        """Async twin of `authenticate`, used by the async viewsets (`spaces.viewsets`): a cached
        key is checked on the event loop with no I/O (see `aauthenticate_credentials`)."""
        try:
            return await aauthenticate_credentials(request_key(request))
        except ApiKeyError as exc:
            raise AuthenticationFailed(exc.message) from None

    def authenticate_header(self, request) -> str:
        # A value here makes DRF answer 401 (with WWW-Authenticate) instead of 403.
        return HEADER

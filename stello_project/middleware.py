"""Django's stock middleware, marked sync-only.

Under an ASGI server Django runs async-capable `MiddlewareMixin` middleware in async mode, and
each `process_request` / `process_response` then crosses to a worker thread and back: about a
dozen thread hops per request. Marked sync-only, the whole chain and our sync DRF views run in
ONE worker thread per request (see the README's Performance section for the measurement).
"""

from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.middleware import clickjacking, common, csrf, security


def _sync_only(cls: type) -> type:
    return type(cls.__name__, (cls,), {"async_capable": False, "__module__": __name__})


SecurityMiddleware = _sync_only(security.SecurityMiddleware)
SessionMiddleware = _sync_only(sessions.SessionMiddleware)
CommonMiddleware = _sync_only(common.CommonMiddleware)
CsrfViewMiddleware = _sync_only(csrf.CsrfViewMiddleware)
AuthenticationMiddleware = _sync_only(auth.AuthenticationMiddleware)
MessageMiddleware = _sync_only(messages.MessageMiddleware)
XFrameOptionsMiddleware = _sync_only(clickjacking.XFrameOptionsMiddleware)

"""WebSocket routes: `/spaces/<spaceId>/ws` (optional trailing slash, any query string).

The upgrade is authorised before the consumer is built (`Authenticated`). A malformed space id
is refused like an unknown space (404, as in REST); any other path is refused with 404 instead
of failing inside the router.
"""

from django.urls import re_path

from .consumer import Authenticated, SessionConsumer, not_found

websocket_urlpatterns = [
    re_path(r"^spaces/(?P<space_id>[^/]+)/ws/?$", Authenticated(SessionConsumer.as_asgi())),
    re_path(r"", not_found),
]

"""The ASGI application: HTTP through Django, WebSocket through Channels.

Serve it with `daphne stello_project.asgi:application`.
"""

import logging
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stello_project.settings")
django_asgi_app = get_asgi_application()  # sets Django up before the consumers are imported

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from sessions_app.runtime.startup import log_startup  # noqa: E402
from sessions_app.ws.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": URLRouter(websocket_urlpatterns),
    }
)

log_startup(logging.getLogger("stello"))

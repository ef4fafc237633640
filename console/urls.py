"""/console/ and the console's own static files.

The static files are served by the app whatever DEBUG says (as the API docs' are), so the
console works with no internet and no static-file server: a few small files, cached by the
browser."""

from pathlib import Path

from django.conf import settings
from django.urls import path, re_path
from django.views.static import serve

from . import views

STATIC_ROOT = Path(__file__).parent / "static" / "console"
STATIC_PREFIX = f"{settings.STATIC_URL.lstrip('/')}console/"

urlpatterns = [
    path("console/", views.console_page, name="console"),
    path("console/staff-key", views.staff_key, name="console-staff-key"),
    re_path(rf"^{STATIC_PREFIX}(?P<path>[A-Za-z0-9_.-]+)$", serve,
            {"document_root": STATIC_ROOT}),
]

from pathlib import Path

import drf_spectacular_sidecar
from django.conf import settings
from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.http import JsonResponse
from django.urls import include, path, re_path
from django.views.static import serve
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.permissions import AllowAny

from sessions_app.health import healthz, readyz

# Swagger UI's files for /api/docs/, served by the app itself whatever DEBUG says, so the docs
# work with no internet and no static-file server (a few files, cached by the browser).
SWAGGER_UI_APP = "drf_spectacular_sidecar"
SWAGGER_UI_PREFIX = f"{settings.STATIC_URL.lstrip('/')}{SWAGGER_UI_APP}/"
SWAGGER_UI_ROOT = Path(drf_spectacular_sidecar.__file__).parent / "static" / SWAGGER_UI_APP

urlpatterns = [
    # The API first: Django tries the patterns in order, and these are the hot paths. Below them
    # only the fallback (last) starts with `spaces`, so the order changes what is tried first,
    # not what matches. The few routes of `spaces/` and `spaces/<id>` go before the ~40 of the
    # sessions (none of which they can match), so `POST /spaces` is found after five tries.
    path("", include("sessions_app.api.data_urls")),  # before spaces.urls: `spaces/import` is no id
    path("", include("spaces.urls")),
    path("", include("sessions_app.api.urls")),
    re_path(rf"^{SWAGGER_UI_PREFIX}(?P<path>swagger-ui-dist/.+)$", serve,
            {"document_root": SWAGGER_UI_ROOT}),
    path("", include("console.urls")),  # /console/ and its static files, whatever DEBUG says
    *staticfiles_urlpatterns(),  # the admin's CSS/JS under `make run` (DEBUG only; empty otherwise)
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("admin/", admin.site.urls),
    # OpenAPI 3 schema and its browsable docs: public, no API key.
    path("api/schema/", SpectacularAPIView.as_view(
        authentication_classes=[], permission_classes=[AllowAny]), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(
        url_name="schema", authentication_classes=[], permission_classes=[AllowAny]),
        name="api-docs"),
    path("", include("spaces.fallback_urls")),  # last: JSON 404 (after auth) under /spaces
]


def json_not_found(request, exception=None):
    return JsonResponse({"error": "Not Found", "code": "NOT_FOUND"}, status=404)


def json_server_error(request):
    return JsonResponse({"error": "Internal Server Error", "code": "INTERNAL"}, status=500)


handler404 = json_not_found
handler500 = json_server_error

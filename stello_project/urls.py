from pathlib import Path

import drf_spectacular_sidecar
from django.conf import settings
from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.http import JsonResponse
from django.urls import path, re_path
from django.views.static import serve
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.permissions import AllowAny

import console.urls
import sessions_app.api.data_urls
import sessions_app.api.urls
import spaces.fallback_urls
import spaces.urls
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
    # The apps' patterns are spliced in rather than `include`d: each include that does not
    # match raises and catches a Resolver404 and copies every pattern it tried (for the debug
    # page), about a third of resolving a request (callgrind). Reversing is unchanged: no
    # app namespaces.
    *sessions_app.api.data_urls.urlpatterns,  # before spaces.urls: `spaces/import` is no id
    *spaces.urls.urlpatterns,
    *sessions_app.api.urls.urlpatterns,
    re_path(rf"^{SWAGGER_UI_PREFIX}(?P<path>swagger-ui-dist/.+)$", serve,
            {"document_root": SWAGGER_UI_ROOT}),
    *console.urls.urlpatterns,  # /console/ and its static files, whatever DEBUG says
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
    *spaces.fallback_urls.urlpatterns,  # last: JSON 404 (after auth) under /spaces
]


def json_not_found(request, exception=None):
    return JsonResponse({"error": "Not Found", "code": "NOT_FOUND"}, status=404)


def json_server_error(request):
    return JsonResponse({"error": "Internal Server Error", "code": "INTERNAL"}, status=500)


handler404 = json_not_found
handler500 = json_server_error

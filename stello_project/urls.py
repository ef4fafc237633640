from django.contrib import admin
from django.http import JsonResponse
from django.urls import include, path

from sessions_app.health import healthz, readyz

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("", include("spaces.urls")),
    path("", include("sessions_app.api.urls")),
    path("", include("spaces.fallback_urls")),  # last: JSON 404 (after auth) under /spaces
]


def json_not_found(request, exception=None):
    return JsonResponse({"error": "Not Found", "code": "NOT_FOUND"}, status=404)


def json_server_error(request):
    return JsonResponse({"error": "Internal Server Error", "code": "INTERNAL"}, status=500)


handler404 = json_not_found
handler500 = json_server_error

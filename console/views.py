"""The console's two server-side views: the page itself and the staff sign-in.

Everything else the console does goes through the public API with an API key, so it can do
nothing a key's owner could not do with curl. These views are cold paths: they run through
Django's stock middleware chain (sessions, auth), like the admin.
"""

from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect, ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_POST

from spaces.apikeys import apikey_create, apikey_revoke
from spaces.errors import Forbidden
from spaces.models import ApiKey

# The name of the keys the staff sign-in mints; one live key per staff user, the last sign-in's.
STAFF_KEY_NAME = "web console (staff sign-in)"


def _is_staff(request: HttpRequest) -> bool:
    user = getattr(request, "user", None)
    return bool(user and user.is_authenticated and user.is_active and user.is_staff)


@require_GET
@never_cache
@ensure_csrf_cookie
def console_page(request: HttpRequest) -> HttpResponse:
    staff = request.user.get_username() if _is_staff(request) else ""
    return render(request, "console/index.html", {"staff_username": staff})


@require_POST
@csrf_protect
def staff_key(request: HttpRequest) -> JsonResponse:
    """A staff member signed in to the admin gets an API key of their own for the console.

    The key is shown once, kept by the browser in sessionStorage only. The previous console key
    of the same user is revoked, so sign-ins do not pile up live keys (another tab signed in
    the same way is signed out)."""
    if not _is_staff(request):
        error = Forbidden("Staff sign-in required")
        return JsonResponse({"error": error.message, "code": error.code}, status=error.status)
    with transaction.atomic():
        for prefix in ApiKey.objects.filter(user=request.user, name=STAFF_KEY_NAME,
                                            revoked=False).values_list("prefix", flat=True):
            apikey_revoke(prefix=prefix)
        _, key = apikey_create(user=request.user, name=STAFF_KEY_NAME)
    return JsonResponse({"key": key, "username": request.user.get_username()})

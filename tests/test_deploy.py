"""Deploy safety and the browser-facing surface: `check --deploy`, the security middleware on
the API's fast path, CORS, and the API docs served with no internet.

`manage.py check --deploy` runs in a real process with the production environment of the
README. The middleware tests go through the test client (Django's sync handler) and through a
fresh ASGI handler (the async fast path the servers run), built after the settings change.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest
from asgiref.sync import AsyncToSync, SyncToAsync
from asgiref.testing import ApplicationCommunicator
from django.test import Client

from stello_project.asgi import StelloASGIHandler
from tests.test_startup import ROOT, clean_env

PRODUCTION = {
    "DEBUG": "0",
    "SECRET_KEY": "k7#Qz!pW2@vR9$eL4^tY6&uI8*oP0(aS3)dF5_gH1+jK-lZ=xC[vB]nM{",
    "ALLOWED_HOSTS": "stello.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://stello.example.com",
    "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto: https",
    "SECURE_SSL_REDIRECT": "1",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "1",
    "SECURE_HSTS_PRELOAD": "1",
    "SESSION_COOKIE_SECURE": "1",
    "CSRF_COOKIE_SECURE": "1",
}


def deploy_check(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=clean_env(**env), capture_output=True, text=True, timeout=120)


def test_check_deploy_with_the_production_settings_reports_nothing() -> None:
    result = deploy_check(**PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_sees_the_security_middleware() -> None:
    """With only a key set, the checks that need SecurityMiddleware in MIDDLEWARE (HSTS, the
    HTTPS redirect) report, and none says the security, clickjacking or CSRF middleware is
    missing: what runs for the admin is what the checks see."""
    result = deploy_check(SECRET_KEY=PRODUCTION["SECRET_KEY"])
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    for reported in ("security.W004", "security.W008", "security.W012"):
        assert reported in output, output
    for hidden in ("security.W001", "security.W002", "security.W003"):
        assert hidden not in output, output


@pytest.fixture
def https_settings(settings) -> None:
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True


SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def test_the_api_redirects_to_https_and_answers_with_hsts(https_settings) -> None:
    client = Client()
    redirect = client.get("/spaces")
    assert (redirect.status_code, redirect["Location"]) == (301, "https://testserver/spaces")
    answer = client.get("/spaces", secure=True)
    assert answer.status_code == 401
    assert {name: answer.get(name) for name in SECURITY_HEADERS} == SECURITY_HEADERS
    # Load balancers probe over plain HTTP.
    assert client.get("/healthz").status_code == 200


def http_scope(path: str, *, scheme: str = "http", method: str = "GET",
               headers: list[tuple[bytes, bytes]] = ()) -> dict:
    """An ASGI HTTP scope for `path` on host `testserver`."""
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "scheme": scheme, "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80 if scheme == "http" else 443),
            "headers": [(b"host", b"testserver"), *headers]}


async def asgi_get(app, path: str, *, scheme: str = "http", method: str = "GET",
                   headers: list[tuple[bytes, bytes]] = ()) -> tuple[int, dict[str, str]]:
    communicator = ApplicationCommunicator(
        app, http_scope(path, scheme=scheme, method=method, headers=headers))
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(10)
    await communicator.receive_output(10)  # the body
    await communicator.wait(10)
    return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}


@pytest.fixture
def hops(monkeypatch) -> Counter[str]:
    counted: Counter[str] = Counter()
    sync_call, async_call = SyncToAsync.__call__, AsyncToSync.__call__

    async def counted_sync_to_async(self, *args: Any, **kwargs: Any) -> Any:
        counted[getattr(self.func, "__qualname__", str(self.func))] += 1
        return await sync_call(self, *args, **kwargs)

    def counted_async_to_sync(self, *args: Any, **kwargs: Any) -> Any:
        counted[getattr(self.awaitable, "__qualname__", str(self.awaitable))] += 1
        return async_call(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", counted_sync_to_async)
    monkeypatch.setattr(AsyncToSync, "__call__", counted_async_to_sync)
    return counted


async def test_the_async_fast_path_applies_the_security_middleware_without_a_thread(
        https_settings, settings, hops) -> None:
    settings.CORS_ALLOWED_ORIGINS = ["https://app.example.com"]
    app = StelloASGIHandler()  # built with these settings
    origin = [(b"origin", b"https://app.example.com")]

    status, headers = await asgi_get(app, "/healthz", headers=origin)
    assert status == 200  # exempt from the redirect
    status, headers = await asgi_get(app, "/api/schema/", headers=origin)
    assert (status, headers["location"]) == (301, "https://testserver/api/schema/")
    status, headers = await asgi_get(app, "/healthz", scheme="https", headers=origin)
    assert status == 200
    assert {name: headers.get(name.lower()) for name in SECURITY_HEADERS} == SECURITY_HEADERS
    assert headers["access-control-allow-origin"] == "https://app.example.com"
    assert sum(hops.values()) == 0, hops


# --- CORS ---------------------------------------------------------------------------------------


@pytest.fixture
def cors(settings) -> str:
    settings.CORS_ALLOWED_ORIGINS = ["https://app.example.com"]
    return "https://app.example.com"


@pytest.mark.parametrize("path", ["/spaces", "/spaces/00000000-0000-0000-0000-000000000000"
                                  "/sessions/x/turn", "/api/schema/"])
def test_a_preflight_from_an_allowed_origin_may_send_the_key_headers(cors: str,
                                                                     path: str) -> None:
    response = Client().options(path, HTTP_ORIGIN=cors,
                                HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
                                HTTP_ACCESS_CONTROL_REQUEST_HEADERS="x-api-key, content-type")
    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == cors
    allowed = {h.strip() for h in response["Access-Control-Allow-Headers"].split(",")}
    assert {"x-api-key", "authorization", "content-type"} <= allowed
    assert "POST" in response["Access-Control-Allow-Methods"]
    assert "Access-Control-Allow-Credentials" not in response


@pytest.mark.django_db
def test_answers_carry_cors_headers_for_allowed_origins_only(cors: str) -> None:
    allowed = Client().get("/spaces", HTTP_ORIGIN=cors)
    assert allowed.status_code == 401
    assert allowed["Access-Control-Allow-Origin"] == cors
    assert "Retry-After" in allowed["Access-Control-Expose-Headers"]
    other = Client().get("/spaces", HTTP_ORIGIN="https://evil.example.com")
    assert "Access-Control-Allow-Origin" not in other
    admin = Client().get("/admin/login/", HTTP_ORIGIN=cors)
    assert admin.status_code == 200 and "Access-Control-Allow-Origin" not in admin


def test_no_origin_is_allowed_by_default() -> None:
    response = Client().options("/spaces", HTTP_ORIGIN="https://app.example.com",
                                HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET")
    assert "Access-Control-Allow-Origin" not in response


# --- API docs -------------------------------------------------------------------------------------


def test_the_api_docs_load_swagger_ui_from_this_server(settings) -> None:
    assert settings.DEBUG is False  # where Django's static-file view is off
    client = Client()
    page = client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(assets) >= 4, assets
    assert not [a for a in assets if "//" in a], assets  # nothing from another host
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert b"".join(response.streaming_content), asset
    outside = Client(raise_request_exception=False).get(
        "/static/drf_spectacular_sidecar/swagger-ui-dist/../../../settings.py")
    assert outside.status_code == 400  # SuspiciousFileOperation: nothing outside is served


# --- The admin keeps its CSRF protection (no CsrfViewMiddleware: see settings.MIDDLEWARE) -------


@pytest.mark.django_db
def test_the_admin_login_needs_its_csrf_token(django_user_model) -> None:
    django_user_model.objects.create_superuser("root", password="s3cret-pass")
    client = Client(enforce_csrf_checks=True)
    form = client.get("/admin/login/")
    assert form.status_code == 200
    token = client.cookies["csrftoken"].value
    credentials = {"username": "root", "password": "s3cret-pass"}
    assert client.post("/admin/login/", credentials).status_code == 403
    login = client.post("/admin/login/?next=/admin/",
                        {**credentials, "csrfmiddlewaretoken": token, "next": "/admin/"})
    assert (login.status_code, login["Location"]) == (302, "/admin/")
    assert client.get("/admin/").status_code == 200
    # A logged-in POST without the token is refused too (logout is a POST).
    assert client.post("/admin/logout/").status_code == 403
    assert client.get("/admin/").status_code == 200


@pytest.mark.django_db(transaction=True)
async def test_the_admin_goes_through_the_stock_middleware_under_asgi() -> None:
    app = StelloASGIHandler()
    status, headers = await asgi_get(app, "/admin/login/")
    assert status == 200
    assert headers["set-cookie"].startswith("csrftoken=")  # the login form's CSRF cookie
    assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"

"""The console's server side: the page, its static files (served without DEBUG, no internet
needed) and the staff sign-in that mints a console key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from console.views import STAFF_KEY_NAME
from spaces.models import ApiKey
from tests.conftest import HOT_PATH_DB, client_for

CONSOLE = Path(__file__).resolve().parents[2] / "console"


@pytest.fixture
def staff(db):
    return get_user_model().objects.create_user("root-staff", password="pw-staff-1",
                                                is_staff=True)


def staff_client(user, enforce_csrf: bool = True) -> Client:
    client = Client(enforce_csrf_checks=enforce_csrf)
    client.force_login(user)
    return client


@pytest.mark.django_db
def test_the_page_is_served_with_its_scripts_and_no_staff_form_for_strangers(client) -> None:
    response = client.get("/console/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="key-input"' in html and '<label for="key-input">API key</label>' in html
    assert 'src="/static/console/console.js"' in html and 'type="module"' in html
    assert 'id="staff-form"' not in html
    assert response.headers["Cache-Control"].startswith("max-age=0")


@pytest.mark.django_db
def test_the_static_files_are_served_without_debug_and_nothing_else(client, settings) -> None:
    settings.DEBUG = False
    for name, kind in [("console.js", "javascript"), ("starmap.js", "javascript"),
                       ("console.css", "css")]:
        response = client.get(f"/static/console/{name}")
        assert response.status_code == 200, name
        assert kind in response.headers["Content-Type"]
    assert client.get("/static/console/../views.py").status_code == 404
    assert client.get("/static/console/nope.js").status_code == 404


def test_nothing_is_loaded_from_the_internet() -> None:
    """Offline: no URL with a host in the page or its files (the SVG namespace is a name)."""
    found = []
    for path in [*CONSOLE.joinpath("static").rglob("*"), *CONSOLE.joinpath("templates").rglob("*")]:
        if path.is_file():
            for url in re.findall(r"(?:https?:)?//[\w.-]+\.\w+[^\s\"'`)]*", path.read_text()):
                if url != "http://www.w3.org/2000/svg":
                    found.append((path.name, url))
    assert found == []


@pytest.mark.django_db
def test_staff_see_the_staff_sign_in(staff) -> None:
    html = staff_client(staff).get("/console/").content.decode()
    assert 'id="staff-form"' in html and "Continue as root-staff" in html
    assert 'name="csrfmiddlewaretoken"' in html


@pytest.mark.django_db
def test_the_staff_key_is_refused_to_anyone_else(client, alice) -> None:
    for who in (client, staff_client(alice, enforce_csrf=False)):
        response = who.post("/console/staff-key")
        assert response.status_code == 403
        assert response.json() == {"error": "Staff sign-in required", "code": "FORBIDDEN"}
    assert client.get("/console/staff-key").status_code == 405
    assert not ApiKey.objects.filter(name=STAFF_KEY_NAME).exists()


@pytest.mark.django_db
def test_the_staff_key_needs_the_csrf_token(staff) -> None:
    response = staff_client(staff).post("/console/staff-key")
    assert response.status_code == 403
    assert not ApiKey.objects.filter(user=staff).exists()


@HOT_PATH_DB
def test_a_staff_sign_in_mints_a_working_key_and_revokes_the_previous_one(staff) -> None:
    client = staff_client(staff)
    client.get("/console/")  # sets the CSRF cookie, as the page does
    token = client.cookies["csrftoken"].value

    first = client.post("/console/staff-key", headers={"X-CSRFToken": token})
    assert first.status_code == 200
    assert first.json()["username"] == "root-staff"
    key = first.json()["key"]
    assert client_for(key).get("/spaces").status_code == 200

    second = client.post("/console/staff-key", headers={"X-CSRFToken": token}).json()["key"]
    assert second != key
    assert client_for(second).get("/spaces").status_code == 200
    assert client_for(key).get("/spaces").status_code == 401
    assert list(ApiKey.objects.filter(user=staff).values_list("revoked", flat=True)
                .order_by("created_at")) == [True, False]

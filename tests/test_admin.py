"""The admin, as a staff superuser uses it: spaces and keys are written through the services,
sessions are browsed with only their slots' content editable.

Personas: `admin_client` is a logged-in superuser (pytest-django, `force_login`); `alice` owns
the spaces and keys created here.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from sessions_app.models import Record, Session, SessionData
from spaces.apikeys import apikey_create, apikey_revoke, auth_cache, hash_key
from spaces.models import ApiKey, Space
from spaces.services import space_create
from tests.conftest import HOT_PATH_DB, client_for

pytestmark = HOT_PATH_DB

SPACE_ADD = "/admin/spaces/space/add/"
APIKEY_ADD = "/admin/spaces/apikey/add/"
APIKEY_LIST = "/admin/spaces/apikey/"
SPACE_LIST = "/admin/spaces/space/"
SESSION_LIST = "/admin/sessions_app/session/"
RECORD_LIST = "/admin/sessions_app/record/"


@pytest.fixture(autouse=True)
def empty_auth_cache() -> Iterator[None]:
    auth_cache.clear()
    yield
    auth_cache.clear()


def space_form(owner_id: int, **overrides: Any) -> dict[str, Any]:
    data = {
        "owner": owner_id,
        "label": "Travel",
        "system_prompt": "",
        "consolidate_prompt": "",
        "integrate_prompt": "",
        "config": "{}",
        "_save": "Save",
    }
    return {**data, **overrides}


def root_of(space: Space) -> Session:
    return Session.objects.get(space=space, role=Session.Role.MAIN)


def root_system_prompt(space: Space) -> str | None:
    slot = SessionData.objects.filter(session=root_of(space), key="system_prompt").first()
    return slot.content if slot else None


def change_form_post_data(response) -> dict[str, Any]:
    """The POST a browser would send back for an unchanged admin change page, inlines included."""
    data: dict[str, Any] = {"_save": "Save"}
    for field in response.context["adminform"].form:
        if field.value() is not None:
            data[field.html_name] = field.value()
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        for name, value in formset.management_form.initial.items():
            data[f"{formset.prefix}-{name}"] = value
        for form in formset.forms:
            for field in form:
                if field.value() is not None:
                    data[field.html_name] = field.value()
    return data


# --- Spaces -------------------------------------------------------------------------------------


def test_adding_a_space_in_the_admin_creates_its_root_session_with_the_system_prompt(
    admin_client: Client, alice
) -> None:
    response = admin_client.post(SPACE_ADD, space_form(alice.pk, system_prompt="Be brief."))

    assert response.status_code == 302
    space = Space.objects.get()
    assert (space.owner, space.label, space.system_prompt) == (alice, "Travel", "Be brief.")
    assert space.consolidate_prompt is None
    assert root_of(space).label == "Travel"
    assert root_system_prompt(space) == "Be brief."


def test_a_space_added_without_a_system_prompt_has_no_system_prompt_slot(
    admin_client: Client, alice
) -> None:
    admin_client.post(SPACE_ADD, space_form(alice.pk))

    space = Space.objects.get()
    assert space.system_prompt is None
    assert root_system_prompt(space) is None


def test_a_space_config_must_be_a_json_object(admin_client: Client, alice) -> None:
    response = admin_client.post(SPACE_ADD, space_form(alice.pk, config="[1, 2]"))

    assert response.status_code == 200
    assert "config must be a JSON object" in response.text
    assert not Space.objects.exists()


def test_editing_the_system_prompt_in_the_admin_updates_the_root_sessions_slot(
    admin_client: Client, alice
) -> None:
    space = space_create(owner=alice, label="Travel", system_prompt="old")

    response = admin_client.post(
        f"{SPACE_LIST}{space.pk}/change/", space_form(alice.pk, system_prompt="new")
    )

    assert response.status_code == 302
    space.refresh_from_db()
    assert space.system_prompt == "new"
    assert root_system_prompt(space) == "new"


def test_clearing_the_system_prompt_in_the_admin_removes_the_root_sessions_slot(
    admin_client: Client, alice
) -> None:
    space = space_create(owner=alice, label="Travel", system_prompt="old")

    admin_client.post(f"{SPACE_LIST}{space.pk}/change/", space_form(alice.pk))

    space.refresh_from_db()
    assert space.system_prompt is None
    assert root_system_prompt(space) is None


def test_the_space_change_page_shows_the_owner_read_only(admin_client: Client, alice) -> None:
    space = space_create(owner=alice, label="Travel")

    response = admin_client.get(f"{SPACE_LIST}{space.pk}/change/")

    assert response.status_code == 200
    assert "owner" not in response.context["adminform"].form.fields


def test_deleting_a_space_in_the_admin_deletes_its_sessions(admin_client: Client, alice) -> None:
    space = space_create(owner=alice, label="Travel")
    url = f"{SPACE_LIST}{space.pk}/delete/"

    confirmation = admin_client.get(url)
    response = admin_client.post(url, {"post": "yes"})

    assert confirmation.status_code == 200
    assert not confirmation.context["perms_lacking"]
    assert response.status_code == 302
    assert not Space.objects.exists()
    assert not Session.objects.exists()


def test_the_bulk_delete_action_deletes_every_selected_space(admin_client: Client, alice) -> None:
    spaces = [space_create(owner=alice, label=f"s{i}") for i in range(2)]

    response = admin_client.post(
        SPACE_LIST,
        {
            "action": "delete_selected",
            "post": "yes",
            "_selected_action": [str(s.pk) for s in spaces],
        },
    )

    assert response.status_code == 302
    assert not Space.objects.exists()
    assert not Session.objects.exists()


def test_the_space_list_can_be_searched_by_label(admin_client: Client, alice) -> None:
    space_create(owner=alice, label="Travel plans")
    space_create(owner=alice, label="Cooking")

    response = admin_client.get(SPACE_LIST, {"q": "travel"})

    assert response.status_code == 200
    assert [s.label for s in response.context["cl"].result_list] == ["Travel plans"]


# --- API keys -----------------------------------------------------------------------------------


def test_adding_a_key_in_the_admin_shows_it_once_and_stores_only_its_hash(
    admin_client: Client, alice
) -> None:
    response = admin_client.post(
        APIKEY_ADD, {"user": alice.pk, "name": "ci", "_save": "Save"}, follow=True
    )

    apikey = ApiKey.objects.get()
    messages = [str(m) for m in response.context["messages"]]
    shown = [word for m in messages for word in m.split() if word.startswith("stello_")]
    assert response.redirect_chain == [(APIKEY_LIST, 302)]
    assert (apikey.user, apikey.name) == (alice, "ci")
    assert len(shown) == 1
    assert apikey.key_hash == hash_key(shown[0])
    assert client_for(shown[0]).get("/spaces").status_code == 200

    later_pages = (
        admin_client.get(APIKEY_LIST).text
        + admin_client.get(f"{APIKEY_LIST}{apikey.pk}/change/").text
    )
    dump = io.StringIO()
    call_command("dumpdata", stdout=dump)
    for text in (later_pages, dump.getvalue()):
        assert shown[0] not in text
        assert shown[0].rsplit("_", 1)[1] not in text
    assert apikey.key_hash not in later_pages


def test_the_key_add_form_asks_only_for_user_and_name(admin_client: Client) -> None:
    response = admin_client.get(APIKEY_ADD)

    assert response.status_code == 200
    assert list(response.context["adminform"].form.fields) == ["user", "name"]


def test_the_key_change_page_lets_staff_rename_a_key_and_nothing_else(
    admin_client: Client, alice
) -> None:
    apikey, raw_key = apikey_create(user=alice, name="old")
    url = f"{APIKEY_LIST}{apikey.pk}/change/"

    page = admin_client.get(url)
    response = admin_client.post(url, {"name": "new", "revoked": "on", "_save": "Save"})

    assert list(page.context["adminform"].form.fields) == ["name"]
    assert apikey.key_hash not in page.text
    assert response.status_code == 302
    stored = ApiKey.objects.get()
    assert (stored.name, stored.revoked, stored.key_hash) == ("new", False, hash_key(raw_key))


def test_the_revoke_action_revokes_the_selected_keys_and_they_stop_working(
    admin_client: Client, alice
) -> None:
    (first, first_raw), (second, _), (kept, kept_raw) = (
        apikey_create(user=alice) for _ in range(3)
    )
    assert client_for(first_raw).get("/spaces").status_code == 200  # cached in this process

    response = admin_client.post(
        APIKEY_LIST,
        {
            "action": "revoke_selected",
            "_selected_action": [first.pk, second.pk],
        },
        follow=True,
    )

    assert response.status_code == 200
    assert "Revoked 2 API key(s)." in [str(m) for m in response.context["messages"]]
    assert list(ApiKey.objects.filter(revoked=True).order_by("pk")) == [first, second]
    assert client_for(first_raw).get("/spaces").status_code == 401
    assert client_for(kept_raw).get("/spaces").status_code == 200


def test_keys_cannot_be_deleted_from_the_admin(admin_client: Client, alice) -> None:
    apikey, _ = apikey_create(user=alice)

    response = admin_client.get(f"{APIKEY_LIST}{apikey.pk}/delete/")

    assert response.status_code == 403


def test_the_key_list_can_be_filtered_by_revoked(admin_client: Client, alice) -> None:
    live, _ = apikey_create(user=alice)
    dead, _ = apikey_create(user=alice)
    apikey_revoke(prefix=dead.prefix)

    response = admin_client.get(APIKEY_LIST, {"revoked__exact": "0"})

    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [live]


# --- Sessions -----------------------------------------------------------------------------------


@pytest.fixture
def travel(alice) -> Space:
    space = space_create(owner=alice, label="Travel", system_prompt="Be brief.")
    root = root_of(space)
    Record.objects.create(session=root, role="user", content="Where to?", timestamp=timezone.now())
    Record.objects.create(
        session=root,
        role="assistant",
        content="Lisbon.",
        tool_calls=[{"id": "c1", "name": "search"}],
        timestamp=timezone.now(),
    )
    Session.objects.filter(pk=root.pk).update(record_count=2)  # as the stores keep it
    return space


def test_the_session_change_page_renders_with_its_slots_tree_position_and_records_link(
    admin_client: Client, travel: Space
) -> None:
    root = root_of(travel)
    response = admin_client.get(f"{SESSION_LIST}{root.pk}/change/")

    assert response.status_code == 200
    inlines = {i.opts.model.__name__: i for i in response.context["inline_admin_formsets"]}
    assert set(inlines) == {"TopologyNode", "SessionData"}  # records: their own paged list
    assert "Be brief." in response.text
    assert "Where to?" not in response.text
    assert f'{RECORD_LIST}?session__id__exact={root.pk}">2 records</a>' in response.text
    assert not inlines["TopologyNode"].has_change_permission
    assert inlines["SessionData"].has_change_permission
    assert not inlines["SessionData"].has_add_permission


def test_the_session_role_is_read_only_in_the_admin(admin_client: Client, travel: Space) -> None:
    response = admin_client.get(f"{SESSION_LIST}{root_of(travel).pk}/change/")

    assert "role" not in response.context["adminform"].form.fields


def test_staff_may_edit_a_slots_content_and_nothing_else_changes(
    admin_client: Client, travel: Space
) -> None:
    root = root_of(travel)
    url = f"{SESSION_LIST}{root.pk}/change/"
    data = change_form_post_data(admin_client.get(url))
    slot_field = next(k for k, v in data.items() if k.endswith("-content") and v == "Be brief.")
    data[slot_field] = "Be thorough."
    data["role"] = "standard"  # ignored: read-only

    response = admin_client.post(url, data)

    assert response.status_code == 302
    assert root_system_prompt(travel) == "Be thorough."
    root.refresh_from_db()
    assert root.role == Session.Role.MAIN
    assert Record.objects.filter(session=root).count() == 2


def test_sessions_cannot_be_added_or_deleted_in_the_admin(
    admin_client: Client, travel: Space
) -> None:
    assert admin_client.get(f"{SESSION_LIST}add/").status_code == 403
    assert admin_client.get(f"{SESSION_LIST}{root_of(travel).pk}/delete/").status_code == 403


@pytest.mark.parametrize("query", ["travel", "id-fragment"])
def test_the_session_list_can_be_searched_by_label_or_id(
    admin_client: Client, travel: Space, query: str
) -> None:
    root = root_of(travel)
    space_create(owner=travel.owner, label="Cooking")
    term = str(root.pk)[:8] if query == "id-fragment" else query

    response = admin_client.get(SESSION_LIST, {"q": term})

    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [root]


def test_the_session_list_can_be_filtered_by_role_and_status(
    admin_client: Client, travel: Space
) -> None:
    response = admin_client.get(SESSION_LIST, {"role__exact": "main", "status__exact": "active"})

    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [root_of(travel)]


# --- Admin review fixes ---------------------------------------------------------------------------


def key_rows(response) -> dict[str, str]:
    """The key list's rows as HTML, by key prefix."""
    rows = response.text.split("<tr")[2:]  # [0] before the table, [1] the header
    return {key.prefix: row for row in rows for key in ApiKey.objects.all() if key.prefix in row}


def test_the_key_list_ticks_working_keys_and_crosses_revoked_ones(
    admin_client: Client, alice
) -> None:
    live, _ = apikey_create(user=alice)
    dead, _ = apikey_create(user=alice)
    apikey_revoke(prefix=dead.prefix)

    response = admin_client.get(APIKEY_LIST)

    assert response.status_code == 200
    assert ">Active<" in response.text
    rows = key_rows(response)
    assert 'alt="True"' in rows[live.prefix] and 'alt="False"' not in rows[live.prefix]
    assert 'alt="False"' in rows[dead.prefix] and 'alt="True"' not in rows[dead.prefix]


def test_view_site_points_to_a_page_that_exists(admin_client: Client) -> None:
    response = admin_client.get("/admin/")

    assert response.context["site_url"] == "/api/docs/"
    assert 'href="/api/docs/"' in response.text
    assert admin_client.get("/api/docs/").status_code == 200


def test_a_spaces_page_links_to_its_sessions_and_the_list_is_filtered_to_them(
    admin_client: Client, travel: Space
) -> None:
    other = space_create(owner=travel.owner, label="Cooking")
    link = f"{SESSION_LIST}?space__id__exact={travel.pk}"

    for page in (SPACE_LIST, f"{SPACE_LIST}{travel.pk}/change/"):
        assert f'href="{link}"' in admin_client.get(page).text, page
    response = admin_client.get(link)

    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [root_of(travel)]
    assert root_of(other) not in response.context["cl"].result_list
    filters = [spec.title for spec in response.context["cl"].filter_specs]
    assert "space" in filters


def test_the_session_list_can_be_searched_by_space_label(
    admin_client: Client, travel: Space
) -> None:
    space_create(owner=travel.owner, label="Cooking")
    response = admin_client.get(SESSION_LIST, {"q": "Cooking"})

    assert [s.space.label for s in response.context["cl"].result_list] == ["Cooking"]


def test_a_sessions_records_are_a_paged_read_only_list(admin_client: Client, travel: Space) -> None:
    root = root_of(travel)
    other = root_of(space_create(owner=travel.owner, label="Cooking"))
    now = timezone.now()
    Record.objects.bulk_create(Record(session=root, role="user", content=f"message {n}",
                                      timestamp=now) for n in range(250))
    Record.objects.create(session=other, role="user", content="elsewhere", timestamp=now)

    response = admin_client.get(RECORD_LIST, {"session__id__exact": str(root.pk)})

    assert response.status_code == 200
    page = response.context["cl"].result_list
    assert len(page) == 100
    assert {record.session_id for record in page} == {root.pk}
    assert [r.content for r in page][:2] == ["Where to?", "Lisbon."]  # oldest first
    record = page[0]
    assert admin_client.get(f"{RECORD_LIST}{record.pk}/change/").status_code == 200
    assert admin_client.get(f"{RECORD_LIST}add/").status_code == 403
    assert admin_client.get(f"{RECORD_LIST}{record.pk}/delete/").status_code == 403
    assert Record.objects.filter(session=root).count() == 252


@pytest.mark.postgres
def test_a_slot_edit_waits_for_the_sessions_lock_like_the_api(
    admin_client: Client, travel: Space, settings
) -> None:
    """Another process holds the session (a turn in flight): the edit is refused as busy, the
    slot keeps its content, and the page says why."""
    import psycopg

    from spaces.pgpool import conninfo

    settings.STELLO = {**settings.STELLO, "SESSION_LOCK_TIMEOUT_SECONDS": 0}
    root = root_of(travel)
    url = f"{SESSION_LIST}{root.pk}/change/"
    data = change_form_post_data(admin_client.get(url))
    slot_field = next(k for k, v in data.items() if k.endswith("-content") and v == "Be brief.")
    data[slot_field] = "Be thorough."

    with psycopg.connect(conninfo(), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (str(root.pk),))
        response = admin_client.post(url, data, follow=True)

    shown = [str(message) for message in response.context["messages"]]
    assert shown == ["system_prompt was not saved: session busy"]  # and no "changed successfully"
    assert response.request["PATH_INFO"] == url  # back on the form
    assert root_system_prompt(travel) == "Be brief."
    assert admin_client.post(url, data).status_code == 302  # once free, the edit goes through
    assert root_system_prompt(travel) == "Be thorough."

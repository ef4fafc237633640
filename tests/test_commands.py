"""createapikey / revokeapikey / listapikeys, as an operator uses them from a shell."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from spaces.apikeys import apikey_create, auth_cache
from spaces.models import ApiKey
from tests.conftest import HOT_PATH_DB, client_for

# The commands' keys authenticate REST requests, whose key lookup reads committed rows on
# PostgreSQL.
pytestmark = HOT_PATH_DB


@pytest.fixture(autouse=True)
def empty_auth_cache() -> Iterator[None]:
    auth_cache.clear()
    yield
    auth_cache.clear()


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def create_key(*args: str) -> str:
    """What `$(python manage.py createapikey ... | tail -n1)` captures."""
    return run("createapikey", *args).splitlines()[-1]


def test_the_last_line_of_createapikey_works_as_the_x_api_key_header() -> None:
    key = create_key("carol")

    response = client_for(key).get("/spaces")

    assert response.status_code == 200


def test_createapikey_prints_the_key_alone_on_its_last_line_after_a_human_line() -> None:
    lines = run("createapikey", "carol", "--name", "ci").splitlines()
    prefix = ApiKey.objects.get().prefix

    assert len(lines) >= 2
    assert lines[-1].startswith(f"stello_{prefix}_")
    assert " " not in lines[-1]
    assert prefix in lines[-2] and "ci" in lines[-2]


def test_createapikey_creates_a_passwordless_user_when_needed() -> None:
    output = run("createapikey", "carol", "--name", "ci")

    carol = get_user_model().objects.get(username="carol")
    assert "Created user carol" in output
    assert not carol.has_usable_password()
    assert list(carol.api_keys.values_list("name", flat=True)) == ["ci"]


def test_createapikey_reuses_an_existing_user(alice) -> None:
    first = create_key("alice")
    output = run("createapikey", "alice")

    assert "Created user" not in output
    assert get_user_model().objects.count() == 1
    assert alice.api_keys.count() == 2
    assert first != output.splitlines()[-1]


def test_revokeapikey_revokes_the_key_so_it_no_longer_authenticates() -> None:
    key = create_key("carol")
    assert client_for(key).get("/spaces").status_code == 200
    prefix = ApiKey.objects.get().prefix

    output = run("revokeapikey", prefix)
    response = client_for(key).get("/spaces")

    assert f"Revoked API key {prefix} of carol" in output
    assert ApiKey.objects.get().revoked is True
    assert response.status_code == 401
    assert response.json()["error"] == "Invalid API key"


def test_revokeapikey_says_so_when_the_key_was_already_revoked(alice) -> None:
    apikey, _ = apikey_create(user=alice)
    run("revokeapikey", apikey.prefix)

    assert "already revoked" in run("revokeapikey", apikey.prefix)


def test_revokeapikey_with_an_unknown_prefix_is_a_command_error() -> None:
    with pytest.raises(CommandError, match="No API key with prefix 'nosuchpf'"):
        run("revokeapikey", "nosuchpf")


def test_listapikeys_shows_every_key_with_owner_name_and_state_but_never_the_key(
    alice, bob
) -> None:
    alice_key, alice_raw = apikey_create(user=alice, name="laptop")
    bob_key, bob_raw = apikey_create(user=bob)
    run("revokeapikey", bob_key.prefix)

    lines = run("listapikeys").splitlines()

    assert lines[0].split() == ["PREFIX", "OWNER", "NAME", "CREATED", "LAST", "USED", "REVOKED"]
    alice_row, bob_row = lines[1].split(), lines[2].split()
    assert alice_row[:3] == [alice_key.prefix, "alice", "laptop"]
    assert alice_row[-3:] == ["UTC", "never", "no"]
    assert bob_row[:3] == [bob_key.prefix, "bob", "-"]
    assert bob_row[-1] == "yes"
    output = "\n".join(lines)
    for raw in (alice_raw, bob_raw):
        assert raw not in output
        assert raw.rsplit("_", 1)[1] not in output


def test_listapikeys_shows_when_a_key_was_last_used(alice, alice_client) -> None:
    alice_client.get("/spaces")

    row = run("listapikeys").splitlines()[1]

    assert "never" not in row


def test_listapikeys_with_a_username_shows_only_that_users_keys(alice, bob) -> None:
    alice_key, _ = apikey_create(user=alice)
    bob_key, _ = apikey_create(user=bob)

    output = run("listapikeys", "bob")

    assert bob_key.prefix in output
    assert alice_key.prefix not in output


def test_listapikeys_without_keys_says_so() -> None:
    assert run("listapikeys") == "No API keys.\n"


def test_listapikeys_for_an_unknown_user_is_a_command_error() -> None:
    with pytest.raises(CommandError, match="No user named 'nobody'"):
        run("listapikeys", "nobody")


def test_seedhistory_makes_a_child_session_with_that_many_messages(alice) -> None:
    from sessions_app.models import Record, Session
    from spaces.services import space_create

    space = space_create(owner=alice, label="Pages")
    out = io.StringIO()
    call_command("seedhistory", str(space.id), "--messages", "7", stdout=out)
    session = Session.objects.get(pk=out.getvalue().strip().splitlines()[-1])
    assert (session.space_id, session.role, session.record_count) == (space.id, "standard", 7)
    roles = list(Record.objects.filter(session=session).values_list("role", flat=True))
    assert roles == ["user", "assistant"] * 3 + ["user"]
    assert session.node.parent.session.role == "main"
    with pytest.raises(CommandError):
        call_command("seedhistory", "00000000-0000-0000-0000-000000000000", stdout=out)

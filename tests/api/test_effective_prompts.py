"""`GET .../consolidate-prompt?effective=true` and `.../integrate-prompt?effective=true`: the
prompt the next consolidation (integration) uses, and where it comes from: the session's slot
(for integration, the main session's), else the space's prompt, else the built-in default.

Personas (tests/conftest.py): alice owns `space` (tests/api/conftest.py) and its main session
`root_id`; `api` speaks to it as alice.
"""

from __future__ import annotations

import pytest

from sessions_app.engine.memory import default_consolidate_prompt, default_integrate_prompt
from tests.api.conftest import HOT_PATH_DB

pytestmark = HOT_PATH_DB


def effective(api, session_id: str, slot: str, value: str = "true"):
    return api.client.get(api.path(session_id, slot) + f"?effective={value}")


def test_without_any_prompt_the_default_is_in_force(api, root_id) -> None:
    child = api.child(root_id, "C")["id"]
    assert effective(api, child, "consolidate-prompt").json() == {
        "content": default_consolidate_prompt("English"), "source": "default"}
    assert effective(api, child, "integrate-prompt").json() == {
        "content": default_integrate_prompt("English"), "source": "default"}
    # the plain read still answers the session's own slot, in the contract's shape
    assert api.slot(child, "consolidate-prompt").json() == {"content": None}


def test_the_space_prompt_comes_before_the_default(api, space, root_id, alice_client) -> None:
    child = api.child(root_id, "C")["id"]
    response = alice_client.patch(f"/spaces/{space['id']}", {"consolidatePrompt": "Space way."},
                                  format="json")
    assert response.status_code == 200
    assert effective(api, child, "consolidate-prompt").json() == {
        "content": "Space way.", "source": "space"}


def test_the_session_prompt_comes_first_unless_it_is_blank(api, space, root_id,
                                                           alice_client) -> None:
    child = api.child(root_id, "C")["id"]
    alice_client.patch(f"/spaces/{space['id']}", {"consolidatePrompt": "Space way."},
                       format="json")
    assert api.put_slot(child, "consolidate-prompt", {"content": "Mine."}).status_code == 200
    assert effective(api, child, "consolidate-prompt").json() == {
        "content": "Mine.", "source": "session"}
    api.put_slot(child, "consolidate-prompt", {"content": "   "})
    assert effective(api, child, "consolidate-prompt").json()["source"] == "space"


def test_integration_uses_the_main_sessions_prompt_whoever_asks(api, root_id) -> None:
    child = api.child(root_id, "C")["id"]
    api.put_slot(child, "integrate-prompt", {"content": "ignored: not the main session"})
    api.put_slot(root_id, "integrate-prompt", {"content": "Main way."})
    for session_id in (root_id, child):
        assert effective(api, session_id, "integrate-prompt").json() == {
            "content": "Main way.", "source": "session"}


@pytest.mark.parametrize("value", ["false", "0"])
def test_effective_false_is_the_plain_read(api, root_id, value: str) -> None:
    assert effective(api, root_id, "consolidate-prompt", value).json() == {"content": None}


def test_a_bad_effective_value_is_a_400(api, root_id) -> None:
    response = effective(api, root_id, "consolidate-prompt", "maybe")
    assert (response.status_code, response.json()) == (
        400, {"error": "effective must be true or false", "code": "INVALID_INPUT"})


def test_an_unknown_session_is_404_with_effective_too(api) -> None:
    response = effective(api, "00000000-0000-0000-0000-000000000000", "integrate-prompt")
    assert response.status_code == 404
    assert response.json()["code"] == "SESSION_NOT_FOUND"

"""REST session-data slots: system prompt, consolidate/integrate prompts, memory and insight."""

from __future__ import annotations

import uuid

import pytest

from sessions_app.engine.llm.offline import OfflineLLM
from sessions_app.models import SessionData
from spaces.models import Space

from .conftest import (
    HOT_PATH_DB,
    SLOTS,
    SPACE_PROMPT,
    WRITABLE_SLOTS,
    SessionApi,
    create_space,
    root_of,
)

pytestmark = HOT_PATH_DB

UNKNOWN_IDS = [str(uuid.UUID(int=0)), "not-a-uuid"]


def slots_of(session_id: str) -> dict[str, str]:
    return dict(SessionData.objects.filter(session_id=session_id).values_list("key", "content"))


class TestReading:
    def test_the_root_system_prompt_is_the_space_prompt(self, api, root_id) -> None:
        response = api.slot(root_id, "system-prompt")
        assert response.status_code == 200
        assert response.json() == {"content": SPACE_PROMPT}

    def test_a_space_without_a_prompt_has_a_null_root_system_prompt(
        self, alice_client
    ) -> None:
        space = create_space(alice_client, label="Bare")
        api = SessionApi(alice_client, space["id"])
        assert api.slot(root_of(space["id"]), "system-prompt").json() == {"content": None}

    @pytest.mark.parametrize("name", ["consolidate-prompt", "integrate-prompt", "memory",
                                      "insight"])
    def test_unset_slots_read_as_null(self, api, root_id, name) -> None:
        response = api.slot(root_id, name)
        assert response.status_code == 200 and response.json() == {"content": None}

    @pytest.mark.parametrize("name", ["memory", "insight"])
    def test_memory_and_insight_show_what_the_memory_pipeline_stored(
        self, api, root_id, name
    ) -> None:
        child = api.child(root_id, "Child")
        SessionData.objects.create(session_id=child["id"], key=name, content=f"the {name}")
        assert api.slot(child["id"], name).json() == {"content": f"the {name}"}

    def test_consolidating_a_child_fills_its_memory(self, api, root_id) -> None:
        child = api.child(root_id, "Child")
        api.said(child["id"], "the sample size is 40")
        response = api.consolidate(child["id"])
        assert response.status_code == 200
        memory = api.slot(child["id"], "memory").json()["content"]
        assert memory is not None and "the sample size is 40" in memory
        assert response.json() == {"memory": memory}

    @pytest.mark.parametrize("name", SLOTS)
    @pytest.mark.parametrize("session_id", UNKNOWN_IDS)
    def test_slots_of_an_unknown_or_malformed_session_are_404(
        self, api, name, session_id
    ) -> None:
        response = api.slot(session_id, name)
        assert response.status_code == 404
        assert response.json()["error"] == "Session not found"


class TestWriting:
    @pytest.mark.parametrize("name", WRITABLE_SLOTS)
    def test_put_stores_the_content_and_returns_it(self, api, root_id, name) -> None:
        response = api.put_slot(root_id, name, {"content": f"new {name}"})
        assert response.status_code == 200
        assert response.json() == {"content": f"new {name}"}
        assert api.slot(root_id, name).json() == {"content": f"new {name}"}

    @pytest.mark.parametrize("name", WRITABLE_SLOTS)
    def test_put_replaces_an_earlier_value(self, api, root_id, name) -> None:
        api.put_slot(root_id, name, {"content": "first"})
        api.put_slot(root_id, name, {"content": "second"})
        assert api.slot(root_id, name).json() == {"content": "second"}
        key = name.replace("-", "_")
        assert SessionData.objects.filter(session_id=root_id, key=key).count() == 1

    @pytest.mark.parametrize("name", WRITABLE_SLOTS)
    def test_an_empty_string_is_a_valid_content(self, api, root_id, name) -> None:
        response = api.put_slot(root_id, name, {"content": ""})
        assert response.status_code == 200 and response.json() == {"content": ""}
        assert api.slot(root_id, name).json() == {"content": ""}

    def test_putting_the_root_system_prompt_does_not_change_the_space(
        self, api, root_id, space
    ) -> None:
        api.put_slot(root_id, "system-prompt", {"content": "Session-only prompt"})
        assert Space.objects.get(pk=space["id"]).system_prompt == SPACE_PROMPT
        assert api.client.get(f"/spaces/{space['id']}").json()["systemPrompt"] == SPACE_PROMPT
        assert api.slot(root_id, "system-prompt").json() == {"content": "Session-only prompt"}

    def test_a_childs_system_prompt_is_its_own(self, api, root_id) -> None:
        child = api.child(root_id, "Child")
        api.put_slot(child["id"], "system-prompt", {"content": "Child only"})
        assert api.slot(root_id, "system-prompt").json() == {"content": SPACE_PROMPT}

    def test_unknown_keys_next_to_content_are_ignored(self, api, root_id) -> None:
        response = api.put_slot(root_id, "consolidate-prompt", {"content": "c", "other": 1})
        assert response.status_code == 200 and response.json() == {"content": "c"}

    @pytest.mark.parametrize("name", WRITABLE_SLOTS)
    @pytest.mark.parametrize(
        ("body", "message"),
        [
            ({}, "content is required"),
            ({"text": "x"}, "content is required"),
            ({"content": None}, "content must be a string"),
            ({"content": 5}, "content must be a string"),
            ({"content": ["x"]}, "content must be a string"),
            ({"content": {"x": 1}}, "content must be a string"),
            (["x"], "Request body must be a JSON object"),
            ("x", "Request body must be a JSON object"),
        ],
    )
    def test_an_invalid_put_is_400_and_changes_nothing(
        self, api, root_id, name, body, message
    ) -> None:
        before = slots_of(root_id)
        response = api.put_slot(root_id, name, body)
        assert response.status_code == 400
        assert response.json()["error"] == message
        assert slots_of(root_id) == before

    def test_malformed_json_is_400(self, api, root_id) -> None:
        response = api.client.put(api.path(root_id, "system-prompt"), "{content:",
                                  content_type="application/json")
        assert response.status_code == 400
        assert response.json()["error"] == "Invalid JSON body"
        assert api.slot(root_id, "system-prompt").json() == {"content": SPACE_PROMPT}

    def test_an_operator_correction_of_a_childs_memory_replaces_it(self, api, root_id) -> None:
        child = api.child(root_id, "Child")
        SessionData.objects.create(session_id=child["id"], key="memory", content="wrong fact")
        response = api.put_slot(child["id"], "memory", {"content": "right fact"})
        assert response.status_code == 200 and response.json() == {"content": "right fact"}
        assert slots_of(child["id"])["memory"] == "right fact"

    def test_a_memory_slot_put_with_a_wrong_body_is_400_and_changes_nothing(
        self, api, root_id
    ) -> None:
        child = api.child(root_id, "Child")
        api.put_slot(child["id"], "insight", {"content": "keep"})
        response = api.put_slot(child["id"], "insight", {"content": 42})
        assert response.status_code == 400
        assert slots_of(child["id"])["insight"] == "keep"

    @pytest.mark.parametrize("name", WRITABLE_SLOTS)
    @pytest.mark.parametrize("session_id", UNKNOWN_IDS)
    def test_put_on_an_unknown_or_malformed_session_is_404_and_writes_nothing(
        self, api, name, session_id
    ) -> None:
        count = SessionData.objects.count()
        response = api.put_slot(session_id, name, {"content": "x"})
        assert response.status_code == 404
        assert response.json()["error"] == "Session not found"
        assert SessionData.objects.count() == count

    @pytest.mark.parametrize("name", WRITABLE_SLOTS)
    def test_an_archived_session_is_read_only_for_puts_and_still_readable(
        self, api, root_id, name
    ) -> None:
        child = api.child(root_id, "Archived")
        api.put_slot(child["id"], name, {"content": "before"})
        api.archive(child["id"])
        response = api.put_slot(child["id"], name, {"content": "edited"})
        assert response.status_code == 409
        assert response.json() == {
            "error": f'Session "{child["id"]}" is archived and cannot be modified',
            "code": "SESSION_ARCHIVED"}
        assert api.slot(child["id"], name).json() == {"content": "before"}


class TestConsolidate:
    def test_the_main_session_does_not_consolidate(self, api, root_id) -> None:
        response = api.consolidate(root_id)
        assert response.status_code == 400
        assert response.json()["error"] == (
            "the main session integrates; it does not consolidate")
        assert api.slot(root_id, "memory").json() == {"content": None}

    def test_an_archived_session_is_not_consolidated_on_demand(self, api, root_id) -> None:
        child = api.child(root_id, "Finished")
        api.archive(child["id"])
        response = api.consolidate(child["id"])
        assert response.status_code == 409
        assert response.json()["error"] == (
            f'Session "{child["id"]}" is archived and cannot be modified')

    @pytest.mark.parametrize("session_id", UNKNOWN_IDS)
    def test_consolidating_an_unknown_session_is_404(self, api, session_id) -> None:
        response = api.consolidate(session_id)
        assert response.status_code == 404
        assert response.json()["error"] == "Session not found"


class TestPromptsReachTheLLM:
    def test_a_put_system_prompt_is_used_by_the_next_turn(
        self, api, root_id, monkeypatch
    ) -> None:
        system_texts: list[str] = []
        respond = OfflineLLM._respond

        def recording(llm, messages, tools):
            system_texts.extend(m.content for m in messages if m.role == "system")
            return respond(llm, messages, tools)

        monkeypatch.setattr(OfflineLLM, "_respond", recording)
        api.put_slot(root_id, "system-prompt", {"content": "Answer in French."})
        api.said(root_id, "hello")
        assert "Answer in French." in system_texts
        assert SPACE_PROMPT not in system_texts

    def test_a_put_insight_reaches_the_childs_next_turn_once(
        self, api, root_id, monkeypatch
    ) -> None:
        system_texts: list[str] = []
        respond = OfflineLLM._respond

        def recording(llm, messages, tools):
            system_texts.append("\n".join(m.content for m in messages if m.role == "system"))
            return respond(llm, messages, tools)

        monkeypatch.setattr(OfflineLLM, "_respond", recording)
        child = api.child(root_id, "Child")
        api.put_slot(child["id"], "insight", {"content": "Check the 1998 census first."})
        api.said(child["id"], "hello")
        api.said(child["id"], "again")
        assert "Check the 1998 census first." in system_texts[0]
        assert "Check the 1998 census first." not in system_texts[1]  # consumed by the first


class TestQueryCounts:
    def test_reading_a_slot_costs_a_bounded_number_of_queries(
        self, api, root_id, django_assert_max_num_queries
    ) -> None:
        api.slot(root_id, "system-prompt")  # authentication is cached from here on
        with django_assert_max_num_queries(2):
            assert api.slot(root_id, "system-prompt").json() == {"content": SPACE_PROMPT}
        with django_assert_max_num_queries(3):  # a null slot: one more to tell it from a 404
            assert api.slot(root_id, "memory").json() == {"content": None}

    def test_writing_a_slot_costs_a_bounded_number_of_queries(
        self, api, root_id, django_assert_max_num_queries
    ) -> None:
        api.slot(root_id, "system-prompt")
        # Under the test's transaction the atomic blocks are savepoints, counted as queries.
        with django_assert_max_num_queries(10):
            assert api.put_slot(root_id, "integrate-prompt", {"content": "a"}).status_code == 200
        with django_assert_max_num_queries(8):
            assert api.put_slot(root_id, "integrate-prompt", {"content": "b"}).status_code == 200

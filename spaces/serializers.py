"""Serializers of the Space REST API.

Input serializers validate request bodies with the server's validation messages (`messages`,
worded as in `spaces.errors`; the first error becomes `{"error": message, "code":
"INVALID_INPUT"}`, status 400). Views call `run_validation` on one shared instance: it keeps no
per-call state, and the fields are built once instead of deep-copied for every request. Output
is built by `spaces.wire.space_json` (the one JSON shape, also used outside REST);
`SpaceSerializer` declares that shape for the OpenAPI schema.
"""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from .errors import empty, missing, wrong_type
from .signals import space_config_check

TIMESTAMP_HELP = "UTC with milliseconds, like `2026-11-23T11:24:14.471Z`."
BODY_NOT_OBJECT = "Request body must be a JSON object"


class StrictCharField(serializers.CharField):
    """A JSON string, kept as sent: no coercion of numbers, no whitespace trimming."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return data


def messages(key: str, expected: str = "a string") -> dict[str, str]:
    """DRF's error messages for the field `key`, worded like every other validation message of
    the server (`spaces.errors`): what is wrong, not just that something is."""
    wrong = wrong_type(key, expected).message
    return {"required": missing(key).message, "null": wrong, "invalid": wrong,
            "not_a_dict": wrong, "blank": empty(key).message}


class BodySerializer(serializers.Serializer):
    """A JSON object body; anything else answers `Request body must be a JSON object`."""

    default_error_messages = {"invalid": BODY_NOT_OBJECT, "null": BODY_NOT_OBJECT}


def prompt_field(key: str, source: str, what: str) -> StrictCharField:
    return StrictCharField(
        source=source, required=False, allow_null=True, allow_blank=True,
        error_messages=messages(key, "a string or null"),
        help_text=f"The space's {what}; `null` clears it.",
    )


class SpaceCreateSerializer(BodySerializer):
    """A new space. Unknown keys are ignored."""

    label = StrictCharField(error_messages=messages("label"), help_text="Non-empty.")
    systemPrompt = prompt_field("systemPrompt", "system_prompt",
                                "system prompt, also written to the main session")
    consolidatePrompt = prompt_field("consolidatePrompt", "consolidate_prompt",
                                     "consolidation prompt")
    integratePrompt = prompt_field("integratePrompt", "integrate_prompt", "integration prompt")
    config = serializers.DictField(required=False, error_messages=messages("config", "an object"),
                                   help_text="A JSON object. The keys `model`, `provider`, "
                                             "`temperature`, `maxOutputTokens`, `tools`, "
                                             "`skills`, `mcpServers` and `ifBusy` set the "
                                             "space's agent (checked when written); others "
                                             "are kept as given.")

    def validate_config(self, value: dict[str, Any]) -> dict[str, Any]:
        space_config_check.send(sender=type(self), config=value)  # raises InvalidInput
        return value


class SpaceUpdateSerializer(SpaceCreateSerializer):
    """Any of the creation keys; absent keys are left alone, a `null` prompt clears it."""

    label = StrictCharField(required=False, error_messages=messages("label"),
                            help_text="Non-empty when given.")


class SpaceSerializer(serializers.Serializer):
    """A space: one agent with one session tree, owned by one user."""

    id = serializers.UUIDField()
    userId = serializers.CharField(help_text="The owner's user id.")
    label = serializers.CharField()
    systemPrompt = serializers.CharField(allow_null=True)
    consolidatePrompt = serializers.CharField(allow_null=True)
    integratePrompt = serializers.CharField(allow_null=True)
    config = serializers.DictField(help_text="Free-form JSON object.")
    createdAt = serializers.DateTimeField(help_text=TIMESTAMP_HELP)
    updatedAt = serializers.DateTimeField(help_text=TIMESTAMP_HELP)


SPACE_CREATE = SpaceCreateSerializer()
SPACE_UPDATE = SpaceUpdateSerializer()

"""Serializers of the session REST API.

Input serializers (`TurnInputSerializer`, `ForkOptionsSerializer`, `SlotPutSerializer`) validate
request bodies with the server's validation messages (`spaces.serializers.messages`); views call
`run_validation` on one shared instance (no per-call state, fields built once). Responses are
built by `sessions_app.wire` and the engine's `to_json` methods (the same JSON the WebSocket
sends); the output serializers here declare those shapes for the OpenAPI schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from spaces.serializers import TIMESTAMP_HELP, BodySerializer, StrictCharField, messages

from ..accounting.serializers import TurnUsageSerializer
from ..engine.fork import parse_fork_options
from ..engine.types import ForkOptions

# What `str.strip()` removes (`str.isspace`), written with escapes every regex dialect reads.
PY_WHITESPACE = (r"\u0009-\u000d\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029"
                 r"\u202f\u205f\u3000")
NOT_BLANK_PATTERN = f"[^{PY_WHITESPACE}]"


# --- Sessions ----------------------------------------------------------------------------------

class SessionMetaSerializer(serializers.Serializer):
    """SessionMeta: one session's state (no tree fields)."""

    id = serializers.UUIDField()
    label = serializers.CharField()
    role = serializers.ChoiceField(choices=["main", "standard"],
                                   help_text="`main` is the tree's root, one per space.")
    status = serializers.ChoiceField(choices=["active", "archived"])
    scope = serializers.CharField(allow_null=True)
    tags = serializers.ListField(child=serializers.CharField(allow_blank=True))
    metadata = serializers.DictField()
    turnCount = serializers.IntegerField(min_value=0)
    createdAt = serializers.DateTimeField(help_text=TIMESTAMP_HELP)
    updatedAt = serializers.DateTimeField(help_text=TIMESTAMP_HELP)
    lastActiveAt = serializers.DateTimeField(help_text=TIMESTAMP_HELP)


class ForkChildSerializer(SessionMetaSerializer):
    """A new child: its topology node and its SessionMeta in one object."""

    parentId = serializers.UUIDField(
        allow_null=True, help_text="Where the child hangs in the tree: the main session with "
                                   "`STELLO_FORK_STRATEGY=flat`, its source with `tree`.")
    children = serializers.ListField(child=serializers.UUIDField(),
                                     help_text="Always empty for a new child.")
    refs = serializers.ListField(child=serializers.UUIDField(),
                                 help_text="Always empty for a new child.")
    depth = serializers.IntegerField(min_value=0)
    index = serializers.IntegerField(min_value=0, help_text="Position among its siblings.")
    sourceSessionId = serializers.UUIDField(
        allow_null=True, help_text="The session it was forked from.")


class ArchivedSessionSerializer(SessionMetaSerializer):
    """The archived (or unarchived) session's SessionMeta, plus its id again as `sessionId`."""

    sessionId = serializers.UUIDField()


@extend_schema_field({"type": "array", "items": {"$ref": "#/components/schemas/SessionTreeNode"}})
class _TreeChildrenField(serializers.ListField):
    """The tree node's children: SessionTreeNode, recursively."""


class SessionTreeNodeSerializer(serializers.Serializer):
    """One node of the session tree; siblings are in index order."""

    id = serializers.UUIDField()
    label = serializers.CharField()
    status = serializers.ChoiceField(choices=["active", "archived"])
    turnCount = serializers.IntegerField(min_value=0)
    children = _TreeChildrenField()
    sourceSessionId = serializers.CharField(
        required=False, help_text="Present on forked sessions: the session it was forked from.")


class ToolCallSerializer(serializers.Serializer):
    id = serializers.CharField()
    name = serializers.CharField()
    input = serializers.DictField(help_text="The parsed JSON arguments.")


class MessageSerializer(serializers.Serializer):
    """One L3 record, oldest first."""

    id = serializers.IntegerField(help_text="The record's id: what `fromMessage`, the message "
                                            "edits and the paging cursors refer to.")
    role = serializers.ChoiceField(choices=["system", "user", "assistant", "tool"])
    content = serializers.CharField(allow_blank=True)
    timestamp = serializers.DateTimeField(help_text=TIMESTAMP_HELP)
    metadata = serializers.DictField(allow_null=True)
    toolCalls = ToolCallSerializer(
        many=True, required=False, help_text="Present when the assistant called tools.")
    toolCallId = serializers.CharField(
        required=False, help_text="Present on tool results: the call they answer.")


# --- Turn, fork, memory ------------------------------------------------------------------------

class TurnInputSerializer(BodySerializer):
    input = StrictCharField(error_messages=messages("input"),
                            help_text="The user's message; non-empty.")
    ifBusy = serializers.ChoiceField(
        ["reject", "enqueue", "interrupt"], required=False,
        error_messages={k: "ifBusy must be one of reject, enqueue, interrupt"
                        for k in ("invalid_choice", "null", "invalid")},
        help_text="Our addition: `reject` (409 `SESSION_BUSY` at once), "
                                  "`enqueue` (wait; the default) or `interrupt` (cancel the "
                                  "running turn, then run) when the session runs a turn.")


class EngineTurnResultSerializer(serializers.Serializer):
    finalContent = serializers.CharField(
        allow_null=True, allow_blank=True, help_text="The assistant's last text, if any.")
    toolRoundCount = serializers.IntegerField(min_value=0)
    toolCallsExecuted = serializers.IntegerField(min_value=0)
    rawResponse = serializers.CharField(
        allow_blank=True, help_text="JSON text of the last LLM call (content, toolCalls, usage).")
    usage = TurnUsageSerializer(help_text="What every LLM call of the turn used (our addition).")


class TurnResponseSerializer(serializers.Serializer):
    turn = EngineTurnResultSerializer()
    turnId = serializers.CharField(help_text="Our addition: the turn's id "
                                             "(GET .../turns/{turnId}).")


def _optional_text(help_text: str) -> serializers.CharField:
    return serializers.CharField(required=False, allow_null=True, allow_blank=True,
                                 help_text=help_text)


class AgentConfigSerializer(serializers.Serializer):
    """Documents a session's agent settings (the rules are `engine.agent_config`'s)."""

    model = serializers.CharField(required=False, allow_null=True, min_length=1,
                                  max_length=200, help_text="The model name sent to the LLM.")
    provider = serializers.CharField(
        required=False, allow_null=True,
        help_text="A named LLM profile of the server (`STELLO_LLM_PROFILES`); another name "
                  "answers 400.")
    temperature = serializers.FloatField(required=False, allow_null=True, min_value=0,
                                         max_value=2)
    maxOutputTokens = serializers.IntegerField(required=False, allow_null=True, min_value=1,
                                               max_value=1_000_000)
    tools = serializers.ListField(child=serializers.CharField(min_length=1, max_length=200),
                                  required=False, allow_null=True, max_length=500,
                                  help_text="The tools the LLM may see (built-ins included).")
    skills = serializers.ListField(child=serializers.CharField(min_length=1, max_length=200),
                                   required=False, allow_null=True, max_length=500,
                                   help_text="The skills the LLM may see.")


class ForkOptionsSerializer(BodySerializer):
    """Fork options; unknown keys are ignored.

    The fields document the body; the rules are the engine's (`parse_fork_options`), shared
    with the WebSocket fork and the LLM's `stello_create_session` tool, so validation returns
    its `ForkOptions` and raises its messages."""

    def to_internal_value(self, data: Any) -> ForkOptions:
        if not isinstance(data, Mapping):
            self.fail("invalid")
        return parse_fork_options(dict(data))

    label = serializers.RegexField(NOT_BLANK_PATTERN,
                                   help_text="Must contain a non-whitespace character.")
    scope = _optional_text("Free-form scope of the child.")
    systemPrompt = _optional_text("The child's system prompt; absent or null inherits "
                                  "the source's.")
    prompt = _optional_text("An opening assistant message for the child.")
    context = serializers.ChoiceField(
        choices=["none", "inherit", "compress"], required=False, allow_null=True,
        help_text="`inherit` copies the source's history; `compress` gives the child the "
                  "memory model's summary of it in a `<parent_context>` block of its system "
                  "prompt; default `none`.")
    skills = serializers.ListField(
        child=serializers.CharField(allow_blank=True), required=False, allow_null=True,
        help_text="Skill whitelist of the child; absent or null keeps the source's.")
    fromMessage = serializers.IntegerField(
        min_value=1, required=False, allow_null=True,
        help_text="Branch from a message: the child gets the source's history up to and "
                  "including this message `id` (its tool-call group whole), and records it as "
                  "`metadata.sourceMessageId`. Implies `context: inherit`. A message of another "
                  "session or space answers 400.")
    config = AgentConfigSerializer(
        required=False, allow_null=True,
        help_text="The child's agent settings, over the source's (a standard source's) and "
                  "the space's; a null value goes back to the space's. Checked here, with the "
                  "field named (`config.temperature must be ...`).")


class ConsolidateResponseSerializer(serializers.Serializer):
    memory = serializers.CharField(
        allow_blank=True, allow_null=True,
        help_text="The session's new L2 memory; `null` when the session has no history yet "
                  "and was never consolidated (nothing to distil, no LLM call).")


class InsightSerializer(serializers.Serializer):
    sessionId = serializers.UUIDField()
    content = serializers.CharField(allow_blank=True)


class IntegrationResultSerializer(serializers.Serializer):
    synthesis = serializers.CharField(allow_blank=True,
                                      help_text="Stored as the main session's memory.")
    insights = InsightSerializer(many=True, help_text="One per active child that got one.")


class SlotContentSerializer(serializers.Serializer):
    content = serializers.CharField(allow_null=True, allow_blank=True,
                                    help_text="`null` when the slot was never written.")


class PromptSlotSerializer(SlotContentSerializer):
    """A memory prompt's slot; with `?effective=true`, the prompt in force and its source."""

    source = serializers.ChoiceField(
        choices=["session", "space", "default"], required=False,
        help_text="Only with `?effective=true`: the session's own prompt (the main session's "
                  "for integration), else the space's, else the built-in default.")


class SlotPutSerializer(BodySerializer):
    content = StrictCharField(allow_blank=True, help_text="A string (may be empty).",
                              error_messages=messages("content"))


TURN_INPUT = TurnInputSerializer()
FORK_OPTIONS = ForkOptionsSerializer()
SLOT_PUT = SlotPutSerializer()

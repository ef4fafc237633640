"""OpenAPI shapes of usage accounting (the turn result's `usage`, the usage reports)."""

from __future__ import annotations

from rest_framework import serializers


class UsageTotalsSerializer(serializers.Serializer):
    calls = serializers.IntegerField(min_value=0, help_text="LLM calls.")
    inputTokens = serializers.IntegerField(
        min_value=0, help_text="Input tokens as the provider reported them, cached ones included.")
    outputTokens = serializers.IntegerField(min_value=0)
    cachedTokens = serializers.IntegerField(
        min_value=0, help_text="Input tokens the provider served from its cache.")
    cost = serializers.FloatField(help_text="From the STELLO_PRICES table (USD by convention).")


class TurnUsageSerializer(UsageTotalsSerializer):
    """Every LLM call of the turn: its rounds and any history compression it needed."""


class UsageReportTotalsSerializer(UsageTotalsSerializer):
    durationMs = serializers.IntegerField(min_value=0, help_text="Time spent in LLM calls.")


class UsageGroupSerializer(UsageReportTotalsSerializer):
    key = serializers.CharField(
        allow_null=True,
        help_text="The group: a day (YYYY-MM-DD), a session id, a model name or an API key id "
                  "(null: work no key asked for, such as background memory work).")


# "from" is a Python keyword: the class is built from a dict of its fields.
UsageReportSerializer = type("UsageReportSerializer", (serializers.Serializer,), {
    "__doc__": "Usage over a range of days, in total and per group.",
    "from": serializers.DateField(help_text="First day counted (UTC)."),
    "to": serializers.DateField(help_text="Last day counted (UTC), included."),
    # A plain string: a nullable enum becomes a `oneOf` that null matches twice.
    "groupBy": serializers.CharField(allow_null=True,
                                     help_text="`day`, `session`, `model`, `key` or null."),
    "totals": UsageReportTotalsSerializer(),
    "groups": UsageGroupSerializer(many=True, help_text="Empty without `groupBy`."),
})

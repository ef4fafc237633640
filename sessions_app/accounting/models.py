"""Tables of usage accounting (imported by `sessions_app.models`, whose app they belong to).

`llm_calls` keeps one row per LLM call; `usage_daily` adds them up per day, user, space,
session, key and model in the same transaction that records the calls, so every read of usage
(the API, the admin, a quota check) sums a few rollup rows however many calls there were.
Space, session and key ids are plain columns, not foreign keys: what was spent stays on the
books when a space is deleted or a key revoked.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

NO_KEY = 0  # `api_key_id` of work no API key asked for (background memory work, the admin)


class LLMCall(models.Model):
    id = models.BigAutoField(primary_key=True)
    at = models.DateTimeField()
    # Indexed by the (user, at) index below, which leads with it: no index of its own.
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="+", db_index=False)
    api_key_id = models.BigIntegerField(default=NO_KEY)
    space_id = models.UUIDField()
    session_id = models.UUIDField(null=True, blank=True)
    turn_id = models.CharField(max_length=64, null=True, blank=True)
    kind = models.CharField(max_length=16)  # engine.usage.CALL_KINDS
    provider = models.CharField(max_length=32)
    model = models.CharField(max_length=200)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    duration_ms = models.BigIntegerField(default=0)
    cost_nanos = models.BigIntegerField(default=0)  # billionths of a dollar

    class Meta:
        db_table = "llm_calls"
        ordering = ["-at", "-id"]
        verbose_name = "LLM call"
        indexes = [models.Index(fields=["user", "at"], name="llm_calls_user_at"),
                   models.Index(fields=["space_id", "at"], name="llm_calls_space_at")]

    def __str__(self) -> str:
        return f"{self.kind} {self.model} {self.input_tokens}+{self.output_tokens}"


class UsageDaily(models.Model):
    id = models.BigAutoField(primary_key=True)
    day = models.DateField()  # UTC
    # Indexed by the (user, day) index below, which leads with it: no index of its own.
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="+", db_index=False)
    space_id = models.UUIDField()
    session_id = models.UUIDField()
    api_key_id = models.BigIntegerField(default=NO_KEY)
    provider = models.CharField(max_length=32)
    model = models.CharField(max_length=200)
    calls = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    duration_ms = models.BigIntegerField(default=0)
    cost_nanos = models.BigIntegerField(default=0)

    class Meta:
        db_table = "usage_daily"
        ordering = ["-day"]
        verbose_name = "daily usage"
        verbose_name_plural = "daily usage"
        constraints = [models.UniqueConstraint(
            fields=["day", "user", "space_id", "session_id", "api_key_id", "provider", "model"],
            name="usage_daily_one_row")]
        indexes = [models.Index(fields=["user", "day"], name="usage_daily_user_day"),
                   models.Index(fields=["space_id", "day"], name="usage_daily_space_day")]

    def __str__(self) -> str:
        return f"{self.day} {self.model}: {self.calls} calls"


class UsageQuota(models.Model):
    """A budget of a user (or of one of their keys) per day or month: a turn that would start
    over it is refused with 429 QUOTA_EXCEEDED until the period ends."""

    class Period(models.TextChoices):
        DAY = "day"
        MONTH = "month"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="usage_quotas")
    api_key = models.ForeignKey("spaces.ApiKey", on_delete=models.CASCADE, null=True,
                                blank=True, related_name="usage_quotas",
                                help_text="Only this key's usage counts; empty = all the user's.")
    period = models.CharField(max_length=8, choices=Period.choices, default=Period.DAY)
    max_tokens = models.BigIntegerField(null=True, blank=True,
                                        help_text="Input + output tokens; empty = no limit.")
    max_cost = models.DecimalField(max_digits=14, decimal_places=6, null=True, blank=True,
                                   help_text="In the price table's unit (USD); empty = no limit.")

    class Meta:
        db_table = "usage_quotas"
        ordering = ["user", "period"]
        constraints = [
            models.CheckConstraint(condition=models.Q(period__in=["day", "month"]),
                                   name="usage_quota_period_valid"),
            models.CheckConstraint(
                condition=models.Q(max_tokens__isnull=True) | models.Q(max_tokens__gte=0),
                name="usage_quota_tokens_not_negative"),
            models.CheckConstraint(
                condition=models.Q(max_cost__isnull=True) | models.Q(max_cost__gte=0),
                name="usage_quota_cost_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.period} quota of {self.user}"

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        if self.api_key_id is not None and self.api_key.user_id != self.user_id:
            raise ValidationError({"api_key": "The key must be one of this user's keys."})
        if self.max_tokens is None and self.max_cost is None:
            raise ValidationError("Set a token budget, a cost budget or both.")


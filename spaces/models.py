"""A Space is one agent = one session tree, owned by one user. API keys authenticate users."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class Space(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Indexed by `spaces_owner_created`, which leads with it: no index of its own.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="spaces",
        db_column="user_id", db_index=False,
    )
    label = models.TextField()
    system_prompt = models.TextField(null=True, blank=True)
    consolidate_prompt = models.TextField(null=True, blank=True)
    integrate_prompt = models.TextField(null=True, blank=True)
    config = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "spaces"
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["owner", "created_at"], name="spaces_owner_created")]
        constraints = [
            models.CheckConstraint(condition=~models.Q(label=""), name="space_label_not_empty"),
        ]

    def __str__(self) -> str:
        return f"{self.label} ({self.id})"


class ApiKey(models.Model):
    """An API key: only its SHA-256 hash is stored; the key itself is shown once, at creation."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys"
    )
    name = models.CharField(max_length=200, blank=True, default="")
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked = models.BooleanField(default=False)

    class Meta:
        db_table = "api_keys"
        ordering = ["created_at", "id"]
        verbose_name = "API key"

    def __str__(self) -> str:
        state = " (revoked)" if self.revoked else ""
        return f"{self.prefix}… {self.name or ''}{state}".strip()


class IdempotencyRecord(models.Model):
    """The stored answer to one mutating request sent with an `Idempotency-Key` (or a WebSocket
    frame with a `requestId`), per user, so a retry replays it instead of running again. See
    `spaces.idempotency`."""

    # Indexed by `idempotency_user_key`, which leads with it: no index of its own.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", db_index=False,
    )
    key = models.CharField(max_length=255)
    # SHA-256 (hex) of the method, path and body: the same key with another request is refused.
    fingerprint = models.CharField(max_length=64)
    method = models.CharField(max_length=16)
    path = models.TextField()
    status = models.PositiveSmallIntegerField()
    content_type = models.CharField(max_length=100, default="application/json")
    body = models.BinaryField()
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField()

    class Meta:
        db_table = "idempotency_records"
        constraints = [
            models.UniqueConstraint(fields=["user", "key"], name="idempotency_user_key"),
        ]
        indexes = [models.Index(fields=["expires_at"], name="idempotency_expires")]

    def __str__(self) -> str:
        return f"{self.method} {self.path} [{self.key}] -> {self.status}"

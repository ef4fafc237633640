"""The session tree of a space: sessions, topology, L3 records, data slots and core data.

Table and column names follow the original server's schema so operators' queries keep working.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import JSONField, Q, Value

from spaces.models import Space


class Session(models.Model):
    class Role(models.TextChoices):
        MAIN = "main"
        STANDARD = "standard"

    class Status(models.TextChoices):
        ACTIVE = "active"
        ARCHIVED = "archived"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    space = models.ForeignKey(Space, on_delete=models.CASCADE, related_name="sessions")
    label = models.TextField()
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.STANDARD)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    scope = models.TextField(null=True, blank=True)  # given at fork; its one home
    # A list of strings the owner sets (PATCH); db_default so the SQL store's inserts need not
    # name the column.
    tags = models.JSONField(default=list, blank=True, db_default=Value([], JSONField()))
    # `sourceSessionId` for clients of the original server (the topology holds it too).
    metadata = models.JSONField(default=dict, blank=True)
    turn_count = models.PositiveIntegerField(default=0)
    # How many records (L3) the session has: kept by the stores in the transaction that appends
    # them, so a process that caches a history can tell it is still whole without counting.
    record_count = models.PositiveIntegerField(default=0)
    # The id of the newest record the session's memory (L2) covers: consolidation sends only
    # the records after it, and writes its result only if no other one covered more meanwhile.
    memory_covered_up_to = models.BigIntegerField(default=0, db_default=0)  # SQL inserts too
    # The seq of the session's last logged event (`SessionEvent`), kept in the transaction
    # that writes the events so seqs stay gap-free per session.
    event_seq = models.BigIntegerField(default=0, db_default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    last_active_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "sessions"
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["space"], condition=Q(role="main"), name="one_main_session_per_space"
            ),
            models.CheckConstraint(condition=Q(role__in=["main", "standard"]),
                                   name="session_role_valid"),
            models.CheckConstraint(condition=Q(status__in=["active", "archived"]),
                                   name="session_status_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.label} ({self.role}, {self.status})"


class TopologyNode(models.Model):
    """Where a session sits in its space's tree (kept apart from the session's own data)."""

    session = models.OneToOneField(
        Session, on_delete=models.CASCADE, primary_key=True, related_name="node"
    )
    space = models.ForeignKey(Space, on_delete=models.CASCADE, related_name="nodes")
    parent = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="children"
    )
    source_session = models.ForeignKey(
        Session, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    depth = models.PositiveIntegerField(default=0)
    index = models.PositiveIntegerField(default=0)
    label = models.TextField()
    # At least the index of this node's next child: a fork counts it up in the same statement
    # (its row lock orders concurrent forks under one parent), see store/postgres.py.
    next_child_index = models.PositiveIntegerField(db_default=0)

    class Meta:
        db_table = "topology_nodes"
        constraints = [
            # Sibling positions are unique even under concurrent forks.
            models.UniqueConstraint(
                fields=["parent", "index"], condition=Q(parent__isnull=False),
                name="unique_sibling_index",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.label} (depth {self.depth}, index {self.index})"


class Record(models.Model):
    """One L3 message. The auto-increment id defines the order."""

    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"
        SYSTEM = "system"
        TOOL = "tool"

    id = models.BigAutoField(primary_key=True)
    # Indexed by `records_session_order`, which leads with it: no index of its own.
    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="records",
                                db_index=False)
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(default="", blank=True)
    tool_calls = models.JSONField(null=True, blank=True)
    tool_call_id = models.TextField(null=True, blank=True)
    timestamp = models.DateTimeField()
    # The turn that wrote the record (none for forked copies and older records).
    turn_id = models.UUIDField(null=True, blank=True, db_index=True)

    class Meta:
        db_table = "records"
        ordering = ["id"]
        indexes = [models.Index(fields=["session", "id"], name="records_session_order")]
        constraints = [
            models.CheckConstraint(condition=Q(role__in=["user", "assistant", "system", "tool"]),
                                   name="record_role_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:60]}"


class SessionData(models.Model):
    """A named text slot of a session: prompts, memory (L2 / synthesis), insight, config..."""

    class Key(models.TextChoices):
        SYSTEM_PROMPT = "system_prompt"
        MEMORY = "memory"
        INSIGHT = "insight"
        CONSOLIDATE_PROMPT = "consolidate_prompt"
        INTEGRATE_PROMPT = "integrate_prompt"
        SESSION_CONFIG = "session_config"
        COMPRESSION = "compression"

    # Indexed by `unique_session_slot`, which leads with it: no index of its own.
    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="data",
                                db_index=False)
    key = models.CharField(max_length=64, choices=Key.choices)
    content = models.TextField(default="", blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "session_data"
        verbose_name_plural = "session data"
        constraints = [
            models.UniqueConstraint(fields=["session", "key"], name="unique_session_slot"),
        ]

    def __str__(self) -> str:
        return self.key


class CoreData(models.Model):
    """Space-wide structured key/value data (L1), reported in the WebSocket bootstrap."""

    # Indexed by `unique_core_path`, which leads with it: no index of its own.
    space = models.ForeignKey(Space, on_delete=models.CASCADE, related_name="core_data",
                              db_index=False)
    path = models.TextField()
    value = models.JSONField(null=True, blank=True)

    class Meta:
        db_table = "core_data"
        verbose_name_plural = "core data"
        constraints = [
            models.UniqueConstraint(fields=["space", "path"], name="unique_core_path"),
        ]

    def __str__(self) -> str:
        return self.path



class MemoryJobError(models.Model):
    """Why a queued memory job last failed (the queue keeps its status and attempts, not the
    error). One row per job, rewritten on each failure; shown in the job admin."""

    job_id = models.BigIntegerField(primary_key=True)  # procrastinate_jobs.id
    attempt = models.PositiveIntegerField()  # which run failed (1 = the first)
    error = models.TextField()
    failed_at = models.DateTimeField()

    class Meta:
        db_table = "memory_job_errors"

    def __str__(self) -> str:
        return f"job {self.job_id}, attempt {self.attempt}: {self.error}"


class RetentionPolicy(models.Model):
    """How long a space keeps its sessions (see sessions_app/retention.py). A space without a
    row, or with both fields null, keeps everything."""

    space = models.OneToOneField(Space, on_delete=models.CASCADE, primary_key=True,
                                 related_name="retention")
    # Archive active child sessions nobody has used for this many days.
    archive_idle_days = models.PositiveIntegerField(null=True, blank=True)
    # Delete sessions archived this many days ago (with their records, data and node).
    delete_archived_days = models.PositiveIntegerField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "retention_policies"
        verbose_name_plural = "retention policies"

    def __str__(self) -> str:
        return f"archive after {self.archive_idle_days}, delete after {self.delete_archived_days}"


class Turn(models.Model):
    """One user turn as a resource: created by its first saved call, so a turn that saved
    nothing leaves no row unless it failed or was cancelled (then it is written with why)."""

    class Status(models.TextChoices):
        RUNNING = "running"
        WAITING = "waiting"  # paused until its tool calls are approved or denied
        COMPLETED = "completed"
        CANCELLED = "cancelled"
        FAILED = "failed"

    id = models.UUIDField(primary_key=True)
    # Indexed by `turns_session_order`, which leads with it: no index of its own.
    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="turns",
                                db_index=False)
    status = models.CharField(max_length=16, choices=Status.choices)
    input = models.TextField(default="", blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(null=True, blank=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        db_table = "turns"
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(fields=["session", "created_at"], name="turns_session_order"),
            # Every turn start asks for the session's running turns (left by a dead process).
            models.Index(fields=["session"], condition=Q(status="running"),
                         name="turns_running"),
            # ... and for one that waits for approval (the busy policy applies to it).
            models.Index(fields=["session"], condition=Q(status="waiting"),
                         name="turns_waiting"),
        ]

    def __str__(self) -> str:
        return f"turn {self.id} ({self.status})"


class SessionEvent(models.Model):
    """The session's event log: `seq` counts the session's events one by one. The deltas of
    one streamed round are kept as ONE entry numbered `seq`..`last_seq` (payload `chunks`),
    and the entries one write of a turn makes (its start, deltas, tool calls, end) as ONE row
    of type `log.packed` (payload `entries`), read back as the single events (`LogEvent`)."""

    id = models.BigAutoField(primary_key=True)
    # Indexed by `unique_session_event_seq`, which leads with it: no index of its own.
    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="events",
                                db_index=False)
    seq = models.BigIntegerField()
    last_seq = models.BigIntegerField()
    type = models.CharField(max_length=32)
    payload = models.JSONField(default=dict)
    created_at = models.DateTimeField()

    class Meta:
        db_table = "session_events"
        ordering = ["session", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["session", "seq"], name="unique_session_event_seq"),
        ]

    def __str__(self) -> str:
        return f"{self.type} #{self.seq}"


class ToolApproval(models.Model):
    """A tool call that waits for a human's decision: its turn is `waiting` until every
    approval of it is decided (or its deadline passes, which denies)."""

    class Decision(models.TextChoices):
        APPROVED = "approved"
        DENIED = "denied"

    id = models.BigAutoField(primary_key=True)
    # Indexed by `unique_turn_call`, which leads with it: no index of its own.
    turn = models.ForeignKey(Turn, on_delete=models.CASCADE, related_name="approvals",
                             db_index=False)
    call_id = models.TextField()  # as the LLM gave it (any length: no CharField limit to hit)
    name = models.TextField()
    arguments = models.JSONField(default=dict)
    decision = models.CharField(max_length=16, choices=Decision.choices, null=True, blank=True)
    reason = models.TextField(null=True, blank=True)
    deadline = models.DateTimeField()
    created_at = models.DateTimeField()
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "tool_approvals"
        ordering = ["turn", "id"]
        constraints = [
            models.UniqueConstraint(fields=["turn", "call_id"], name="unique_turn_call"),
        ]

    def __str__(self) -> str:
        return f"approval of {self.name} ({self.decision or 'pending'})"


# Usage accounting lives in its own module (its tables are this app's).
from .accounting.models import LLMCall, UsageDaily, UsageQuota  # noqa: E402, F401

"""Drop the single-column foreign-key indexes that a composite index already serves (one that
leads with the same column): every row written paid an index entry for nothing, and a turn
writes rows into four of these tables.

Only the index goes: the foreign-key constraints stay as they are. Django's own AlterField
would drop and re-add each constraint, which re-checks every row of the table (records grows
without bound) under a lock; so the state change is Django's and the database change is one
`DROP INDEX` per index (PostgreSQL and SQLite give them the same names).
tests/test_schema_indexes.py holds the schema to no redundant index."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

CASCADE = django.db.models.deletion.CASCADE

# (model, field, the field without its index, table, column, the index Django had made for it)
REDUNDANT = [
    ("llmcall", "user", models.ForeignKey(
        db_index=False, on_delete=CASCADE, related_name="+", to=settings.AUTH_USER_MODEL),
     "llm_calls", "user_id", "llm_calls_user_id_915bf921"),
    ("usagedaily", "user", models.ForeignKey(
        db_index=False, on_delete=CASCADE, related_name="+", to=settings.AUTH_USER_MODEL),
     "usage_daily", "user_id", "usage_daily_user_id_3a5e199e"),
    ("record", "session", models.ForeignKey(
        db_index=False, on_delete=CASCADE, related_name="records", to="sessions_app.session"),
     "records", "session_id", "records_session_id_7d32dbf0"),
    ("sessionevent", "session", models.ForeignKey(
        db_index=False, on_delete=CASCADE, related_name="events", to="sessions_app.session"),
     "session_events", "session_id", "session_events_session_id_16b69ca5"),
    ("turn", "session", models.ForeignKey(
        db_index=False, on_delete=CASCADE, related_name="turns", to="sessions_app.session"),
     "turns", "session_id", "turns_session_id_53e5d3cf"),
    ("sessiondata", "session", models.ForeignKey(
        db_index=False, on_delete=CASCADE, related_name="data", to="sessions_app.session"),
     "session_data", "session_id", "session_data_session_id_59c344d8"),
    ("coredata", "space", models.ForeignKey(
        db_index=False, on_delete=CASCADE, related_name="core_data", to="spaces.space"),
     "core_data", "space_id", "core_data_space_id_fa9027f7"),
    ("toolapproval", "turn", models.ForeignKey(
        db_index=False, on_delete=CASCADE, related_name="approvals", to="sessions_app.turn"),
     "tool_approvals", "turn_id", "tool_approvals_turn_id_ffd4ee85"),
]


class Migration(migrations.Migration):

    dependencies = [
        ("sessions_app", "0010_next_child_index"),
        ("spaces", "0002_idempotency_records"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AlterField(model_name=model, name=name, field=field)
                              for model, name, field, _, _, _ in REDUNDANT],
            database_operations=[migrations.RunSQL(
                sql=f'DROP INDEX IF EXISTS "{index}"',
                reverse_sql=f'CREATE INDEX IF NOT EXISTS "{index}" ON "{table}" ("{column}")')
                for _, _, _, table, column, index in REDUNDANT],
        ),
    ]

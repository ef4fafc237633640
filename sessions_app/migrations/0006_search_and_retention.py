"""Full-text search indexes (one per database shape) and per-space retention policies.

PostgreSQL: GIN expression indexes over `to_tsvector('simple', content)` of records and of the
memory/insight slots; the search queries use the very same expression, so the planner uses
them. SQLite: FTS5 tables over the same columns (external content, kept in step by triggers,
filled from the existing rows). Each half does nothing on the other database.
"""

from django.db import migrations, models

PG_FORWARD = [
    "CREATE INDEX IF NOT EXISTS records_content_fts ON records"
    " USING gin (to_tsvector('simple'::regconfig, content))",
    "CREATE INDEX IF NOT EXISTS session_data_content_fts ON session_data"
    " USING gin (to_tsvector('simple'::regconfig, content))"
    " WHERE key IN ('memory', 'insight')",
]
PG_BACKWARD = [
    "DROP INDEX IF EXISTS records_content_fts",
    "DROP INDEX IF EXISTS session_data_content_fts",
]


def _fts5(table: str, fts: str) -> list[str]:
    # `remove_diacritics 0`: like PostgreSQL's 'simple' configuration, "café" is not "cafe".
    return [
        f"CREATE VIRTUAL TABLE IF NOT EXISTS {fts} USING fts5(content, content='{table}',"
        f" content_rowid='id', tokenize='unicode61 remove_diacritics 0')",
        f"CREATE TRIGGER IF NOT EXISTS {fts}_ai AFTER INSERT ON {table} BEGIN"
        f" INSERT INTO {fts}(rowid, content) VALUES (new.id, new.content); END",
        f"CREATE TRIGGER IF NOT EXISTS {fts}_ad AFTER DELETE ON {table} BEGIN"
        f" INSERT INTO {fts}({fts}, rowid, content) VALUES ('delete', old.id, old.content); END",
        f"CREATE TRIGGER IF NOT EXISTS {fts}_au AFTER UPDATE OF content ON {table} BEGIN"
        f" INSERT INTO {fts}({fts}, rowid, content) VALUES ('delete', old.id, old.content);"
        f" INSERT INTO {fts}(rowid, content) VALUES (new.id, new.content); END",
        f"INSERT INTO {fts}({fts}) VALUES ('rebuild')",
    ]


SQLITE_FORWARD = _fts5("records", "records_fts") + _fts5("session_data", "session_data_fts")
SQLITE_BACKWARD = [
    f"DROP {kind} IF EXISTS {name}"
    for fts in ("records_fts", "session_data_fts")
    for kind, name in (("TRIGGER", f"{fts}_ai"), ("TRIGGER", f"{fts}_ad"),
                       ("TRIGGER", f"{fts}_au"), ("TABLE", fts))
]


def _run(statements_by_vendor):
    def run(apps, schema_editor):
        for sql in statements_by_vendor.get(schema_editor.connection.vendor, ()):
            schema_editor.execute(sql)
    return run


class Migration(migrations.Migration):
    dependencies = [
        ("sessions_app", "0005_session_tags"),
        ("spaces", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(
            _run({"postgresql": PG_FORWARD, "sqlite": SQLITE_FORWARD}),
            _run({"postgresql": PG_BACKWARD, "sqlite": SQLITE_BACKWARD}),
        ),
        migrations.CreateModel(
            name="RetentionPolicy",
            fields=[
                ("space", models.OneToOneField(
                    on_delete=models.deletion.CASCADE, primary_key=True, related_name="retention",
                    serialize=False, to="spaces.space")),
                ("archive_idle_days", models.PositiveIntegerField(blank=True, null=True)),
                ("delete_archived_days", models.PositiveIntegerField(blank=True, null=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
            ],
            options={"db_table": "retention_policies",
                     "verbose_name_plural": "retention policies"},
        ),
    ]

"""Drop the single-column foreign-key indexes that a composite index already serves (see
sessions_app's migration of the same name for why only the index goes, by `DROP INDEX`)."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

CASCADE = django.db.models.deletion.CASCADE

# (model, field, the field without its index, table, column, the index Django had made for it)
REDUNDANT = [
    ("space", "owner", models.ForeignKey(
        db_column="user_id", db_index=False, on_delete=CASCADE, related_name="spaces",
        to=settings.AUTH_USER_MODEL),
     "spaces", "user_id", "spaces_user_id_2e66fc2b"),
    ("idempotencyrecord", "user", models.ForeignKey(
        db_index=False, on_delete=CASCADE, related_name="+", to=settings.AUTH_USER_MODEL),
     "idempotency_records", "user_id", "idempotency_records_user_id_a1f45b27"),
]


class Migration(migrations.Migration):

    dependencies = [
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

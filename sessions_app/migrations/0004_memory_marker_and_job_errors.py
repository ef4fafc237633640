from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("sessions_app", "0003_hardening_cleanup")]

    operations = [
        # 0 for existing sessions: their next consolidation re-reads the whole history (over
        # the memory they have), then only what is new.
        migrations.AddField(
            model_name="session",
            name="memory_covered_up_to",
            field=models.BigIntegerField(default=0, db_default=0),
        ),
        migrations.CreateModel(
            name="MemoryJobError",
            fields=[
                ("job_id", models.BigIntegerField(primary_key=True, serialize=False)),
                ("attempt", models.PositiveIntegerField()),
                ("error", models.TextField()),
                ("failed_at", models.DateTimeField()),
            ],
            options={"db_table": "memory_job_errors"},
        ),
    ]

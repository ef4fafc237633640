"""Remove what was half there.

- A session's scope lived twice, in `sessions.scope` and in a `scope` slot: the column is kept
  (a slot's value fills a column left empty), the slots are deleted.
- `sessions.tags` and `records.metadata` were never written: dropped. The API keeps answering
  `"tags": []` and `"metadata": null`, the shapes clients know.
- `session_refs` (cross-branch references) had no way to be written: dropped. Forks answer
  `"refs": []` as before.
"""

from django.db import migrations, models
from django.db.models import OuterRef, Subquery


def scope_slots_into_the_column(apps, schema_editor) -> None:
    Session = apps.get_model("sessions_app", "Session")
    SessionData = apps.get_model("sessions_app", "SessionData")
    slots = SessionData.objects.filter(key="scope")
    Session.objects.filter(scope__isnull=True, data__key="scope").update(
        scope=Subquery(slots.filter(session_id=OuterRef("pk")).values("content")[:1])
    )
    slots.delete()


class Migration(migrations.Migration):

    dependencies = [
        ("sessions_app", "0002_session_record_count"),
    ]

    operations = [
        migrations.RunPython(scope_slots_into_the_column, migrations.RunPython.noop),
        migrations.RemoveField(
            model_name="record",
            name="metadata",
        ),
        migrations.RemoveField(
            model_name="session",
            name="tags",
        ),
        migrations.AlterField(
            model_name="sessiondata",
            name="key",
            field=models.CharField(
                choices=[
                    ("system_prompt", "System Prompt"),
                    ("memory", "Memory"),
                    ("insight", "Insight"),
                    ("consolidate_prompt", "Consolidate Prompt"),
                    ("integrate_prompt", "Integrate Prompt"),
                    ("session_config", "Session Config"),
                    ("compression", "Compression"),
                ],
                max_length=64,
            ),
        ),
        migrations.DeleteModel(
            name="SessionRef",
        ),
    ]

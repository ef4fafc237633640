from django.db import migrations, models
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce


def count_records(apps, schema_editor):
    Session = apps.get_model("sessions_app", "Session")
    Record = apps.get_model("sessions_app", "Record")
    counts = (
        Record.objects.filter(session=OuterRef("pk")).order_by()
        .values("session").annotate(n=Count("id")).values("n")
    )
    Session.objects.update(record_count=Coalesce(Subquery(counts), 0))


class Migration(migrations.Migration):
    dependencies = [("sessions_app", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="session",
            name="record_count",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.RunPython(count_records, migrations.RunPython.noop),
    ]

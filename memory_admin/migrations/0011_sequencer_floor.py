"""The sequencer's floor (models.Sequencer): where its scan of the events waiting starts."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("memory_admin", "0010_event_lock_index"),
    ]

    operations = [
        migrations.CreateModel(
            name="Sequencer",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("floor", models.BigIntegerField(default=0)),
            ],
        ),
    ]

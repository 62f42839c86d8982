from django.db import migrations


class Migration(migrations.Migration):
    """Joins two 0005s made side by side (conflict groups, consumer-group parking)."""

    dependencies = [
        ("memory_admin", "0005_conflict_group"),
        ("memory_admin", "0005_console_groups_parking"),
    ]

    operations = []

"""Merges 0005_idempotency_per_agent with the other 0005s (no operations)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("memory_admin", "0005_idempotency_per_agent"),
        ("memory_admin", "0006_merge_conflict_group_console_groups"),
    ]

    operations = []

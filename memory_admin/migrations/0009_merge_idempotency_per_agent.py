"""Merges 0005_idempotency_per_agent with the rest of the graph (no operations)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("memory_admin", "0005_idempotency_per_agent"),
        ("memory_admin", "0008_merge_0007_log_positions_0007_store_items"),
    ]

    operations = []

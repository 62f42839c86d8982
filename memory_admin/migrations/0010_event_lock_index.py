"""Lock events by lock and position (who held a lock as of an event), built without blocking
writers to the log: CREATE INDEX CONCURRENTLY runs outside a transaction."""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("memory_admin", "0009_merge_idempotency_per_agent"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="event",
            index=models.Index(
                condition=models.Q(
                    ("type__in", ("lock.acquired", "lock.released", "lock.expired", "lock.force_released"))
                ),
                fields=["ns", "subject", "position"],
                name="event_ns_lock_idx",
            ),
        ),
    ]

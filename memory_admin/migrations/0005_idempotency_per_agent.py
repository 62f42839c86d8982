"""Idempotency keys belong to the agent, not the token (API.md: Idempotency): a retry sent
with a rotated token still finds the first response."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("memory_admin", "0004_one_open_conflict_per_writer"),
    ]

    operations = [
        migrations.AddField(
            model_name="idempotency",
            name="agent",
            field=models.ForeignKey(
                null=True, on_delete=django.db.models.deletion.CASCADE, to="memory_admin.agent"
            ),
        ),
        # Two tokens of one agent may have used one key: the first stored response stays.
        migrations.RunSQL(
            """
            UPDATE memory_admin_idempotency i SET agent_id = t.agent_id
            FROM memory_admin_token t WHERE t.id = i.token_id;
            DELETE FROM memory_admin_idempotency i USING memory_admin_idempotency e
            WHERE e.agent_id = i.agent_id AND e.key = i.key AND e.id < i.id;
            SET CONSTRAINTS ALL IMMEDIATE;  -- the checks now, so the table may be altered after
            """,
            migrations.RunSQL.noop,
        ),
        migrations.RemoveConstraint(model_name="idempotency", name="idempotency_token_key_uniq"),
        migrations.RemoveField(model_name="idempotency", name="token"),
        migrations.AlterField(
            model_name="idempotency",
            name="agent",
            field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, to="memory_admin.agent"),
        ),
        migrations.AddConstraint(
            model_name="idempotency",
            constraint=models.UniqueConstraint(fields=("agent", "key"), name="idempotency_agent_key_uniq"),
        ),
    ]

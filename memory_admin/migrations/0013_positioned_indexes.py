"""The log's readers' indexes for positioned events only, and the versions without a foreign key
in Postgres (models.Event.Meta and models.RecordVersion.record say why)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('memory_admin', '0012_lean_log_indexes'),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name='event',
            name='event_ns_position_uniq',
        ),
        migrations.RemoveIndex(
            model_name='event',
            name='event_ns_type_idx',
        ),
        migrations.RemoveIndex(
            model_name='event',
            name='event_ns_agent_idx',
        ),
        migrations.RemoveIndex(
            model_name='event',
            name='event_ns_lock_idx',
        ),
        migrations.AlterField(
            model_name='recordversion',
            name='record',
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='versions', to='memory_admin.record'),
        ),
        migrations.AddIndex(
            model_name='event',
            index=models.Index(condition=models.Q(('position__isnull', False)), fields=['ns', 'type', 'position'], name='event_ns_type_idx'),
        ),
        migrations.AddIndex(
            model_name='event',
            index=models.Index(condition=models.Q(('position__isnull', False)), fields=['ns', 'agent_id', 'position'], name='event_ns_agent_idx'),
        ),
        migrations.AddIndex(
            model_name='event',
            index=models.Index(condition=models.Q(('type__in', ('lock.acquired', 'lock.released', 'lock.expired', 'lock.force_released')), ('position__isnull', False)), fields=['ns', 'subject', 'position'], name='event_ns_lock_idx'),
        ),
        migrations.AddConstraint(
            model_name='event',
            constraint=models.UniqueConstraint(condition=models.Q(('position__isnull', False)), fields=('ns', 'position'), name='event_ns_position_uniq'),
        ),
    ]

"""The log and the records without indexes their composite ones already give (each leads with the
foreign key), and the log without a foreign key in Postgres (models.Event.ns says why)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('memory_admin', '0011_sequencer_floor'),
    ]

    operations = [
        migrations.AlterField(
            model_name='event',
            name='ns',
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='events', to='memory_admin.namespace'),
        ),
        migrations.AlterField(
            model_name='record',
            name='ns',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='records', to='memory_admin.namespace'),
        ),
        migrations.AlterField(
            model_name='recordversion',
            name='record',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='versions', to='memory_admin.record'),
        ),
    ]

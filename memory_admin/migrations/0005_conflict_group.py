from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("memory_admin", "0004_one_open_conflict_per_writer"),
    ]

    operations = [
        migrations.AddField(
            model_name="conflict",
            name="group",
            field=models.CharField(blank=True, default="", max_length=40),
            preserve_default=False,
        ),
        migrations.AddIndex(
            model_name="conflict",
            index=models.Index(
                condition=models.Q(("group", ""), _negated=True),
                fields=["ns", "group"],
                name="conflict_group_idx",
            ),
        ),
    ]

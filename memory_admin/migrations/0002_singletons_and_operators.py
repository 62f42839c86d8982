from django.db import migrations


def create(apps, schema_editor):
    apps.get_model("memory_admin", "EventCounter").objects.get_or_create(pk=1, defaults={"last": 0})
    apps.get_model("memory_admin", "RelayCursor").objects.get_or_create(pk=1, defaults={"published": 0})
    # The permission rows are made after migrations; make this one now so the group can hold it.
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")
    ct, _ = ContentType.objects.get_or_create(app_label="memory_admin", model="namespace")
    operate, _ = Permission.objects.get_or_create(
        content_type=ct, codename="operate",
        defaults={"name": "Can act in the console: release locks, resolve conflicts, edit, manage tokens"},
    )
    group, _ = Group.objects.get_or_create(name="operators")
    group.permissions.add(operate)


class Migration(migrations.Migration):
    dependencies = [
        ("memory_admin", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [migrations.RunPython(create, migrations.RunPython.noop)]

import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from django.db import IntegrityError, transaction


class Command(BaseCommand):
    help = "Create the first operator account (a superuser in the 'operators' group) if it does not exist."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")

    def handle(self, *args, username: str, **options) -> None:
        User = get_user_model()
        # The data migration creates the group with its permission; get_or_create keeps this
        # command working on a database migrated before that migration existed.
        operators, _ = Group.objects.get_or_create(name="operators")
        user = User.objects.filter(username=username).first()
        password = None
        if user is None:
            password = secrets.token_urlsafe(12)
            try:
                with transaction.atomic():
                    user = User.objects.create_superuser(username=username, email="", password=password)
            except IntegrityError:  # a concurrent run created it first
                user, password = User.objects.get(username=username), None
        user.groups.add(operators)
        if password is None:
            self.stdout.write(
                f"Operator account {username!r} exists (password unchanged; "
                f"reset it with `manage.py changepassword {username}`)."
            )
        else:
            # Only the hash is stored: this line is the one chance to read the password.
            self.stdout.write(self.style.SUCCESS(f"Operator account: {username} / {password}"))

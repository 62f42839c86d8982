from django.core.management.base import BaseCommand, CommandError

from memory_admin.errors import DomainError
from memory_admin.models import Token
from memory_admin.services.tokens import digest, find_token, revoke_token


class Command(BaseCommand):
    help = "Revoke an agent token, given the token or any unique prefix of it (at least 6 characters)."

    def add_arguments(self, parser):
        parser.add_argument("token", help="the token, or a prefix of it such as the console shows")

    def handle(self, *args, token: str, **options):
        token = token.strip()
        try:
            # The whole token names exactly one; a prefix must name exactly one live token.
            found = Token.objects.filter(digest=digest(token)).first() or find_token(prefix=token)
            revoke_token(token=found)
        except DomainError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"revoked {found.prefix}… of {found.agent.name}")

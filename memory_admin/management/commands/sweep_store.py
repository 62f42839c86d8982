from django.core.management.base import BaseCommand

from memory_admin.services.store import sweep_expired_items


class Command(BaseCommand):
    help = (
        "Delete LangGraph store items whose TTL has passed (reads already hide them); their records "
        "get a tombstone version by the system. Run it from cron; prints how many went."
    )

    def add_arguments(self, parser):
        parser.add_argument("--limit", type=int, default=10_000, help="at most this many in one run")

    def handle(self, *args, limit: int, **options):
        swept = 0
        while swept < limit:
            batch = sweep_expired_items(limit=min(500, limit - swept))
            swept += batch
            if batch == 0:
                break
        self.stdout.write(str(swept))

import asyncio
import gc
import signal
import sys

from django.core.management.base import BaseCommand
from django.db import connection

from memory_admin.relay import Relay


class Command(BaseCommand):
    help = (
        "Publish the event log to Redis in commit order and sweep expirations (one active relay at a time)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--check", action="store_true", help="exit 0 if Postgres is reachable (healthcheck)"
        )
        parser.add_argument("--name", default="relay", help="name used in the log")

    def handle(self, *args, check: bool, name: str, **options):
        if check:
            try:
                connection.ensure_connection()
            except Exception as exc:  # a healthcheck reports, it does not crash
                self.stderr.write(f"postgres unreachable: {exc}")
                sys.exit(1)
            return
        # What is loaded by now lives as long as the process: out of the collector's sight, a full
        # collection scans only what the passes leave behind (as in the web process, config/asgi.py).
        gc.freeze()
        asyncio.run(self._run(name))

    async def _run(self, name: str) -> None:
        relay = Relay(name=name)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, relay.stopping.set)
        frozen = gc.get_freeze_count()
        self.stdout.write(f"{name}: loaded ({frozen} objects kept out of full collections)")
        self.stdout.write(f"{name}: waiting to become the active relay")
        await relay.run()
        self.stdout.write(f"{name}: stopped")

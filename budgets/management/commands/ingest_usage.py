import signal
import socket
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from budgets.ingestion import drain


class Command(BaseCommand):
    help = (
        "Drain the gateway usage stream into the ledger until stopped (Ctrl-C). Entries that cannot be "
        "stored are set aside as dead letters (see replay_dead_letters) and ingestion goes on."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--consumer", default=f"ingest-{socket.gethostname()}")
        parser.add_argument("--batch-size", type=int, default=5000)
        parser.add_argument("--once", action="store_true", help="drain what is there, then exit")

    def handle(self, *args: Any, consumer: str, batch_size: int, once: bool, **options: Any) -> None:
        stopping = False

        def stop(*_: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        totals = drain(consumer, batch_size, block_ms=None if once else 1000, once=once, stopping=lambda: stopping)
        self.stdout.write(f"Ingested {totals.inserted} usage events; {totals.dead_lettered} set aside as dead letters.")

import signal
import socket

from django.core.management.base import BaseCommand

from budgets.ingestion import ingest_batch


class Command(BaseCommand):
    help = "Drain the gateway usage stream into the ledger until stopped (Ctrl-C)."

    def add_arguments(self, parser):
        parser.add_argument("--consumer", default=f"ingest-{socket.gethostname()}")
        parser.add_argument("--batch-size", type=int, default=1000)
        parser.add_argument("--once", action="store_true", help="drain what is there, then exit")

    def handle(self, *args, consumer: str, batch_size: int, once: bool, **options):
        stopping = False

        def stop(*_):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        total = 0
        while not stopping:
            result = ingest_batch(consumer, batch_size, block_ms=None if once else 1000)
            total += result.inserted
            if once and result.read == 0:
                break
        self.stdout.write(f"Ingested {total} usage events.")

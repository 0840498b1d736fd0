from django.core.management.base import BaseCommand

from fleet import services


class Command(BaseCommand):
    help = (
        "Publish pending config changes (the first run writes the initial snapshot), refresh a stale "
        "snapshot, and re-sync Redis."
    )

    def add_arguments(self, parser):
        parser.add_argument("--full", action="store_true", help="recompile everything from the database")

    def handle(self, *args, full: bool, **options):
        if full:
            from audit.context import Actor

            revision = services.republish_all(actor=Actor.system("manage.py publish_config"), reason="--full")
        else:
            revision = services.publish_pending()
        # As compaction does: a snapshot signed too long ago (or before signing times existed, on
        # an upgrade) is re-signed now, so a worker starting with an empty disk accepts it at once.
        services.compact()
        newest = services.sync_to_redis()
        made = f"published revision {revision.number} ({revision.kind})" if revision else "nothing pending"
        self.stdout.write(f"{made}; Redis holds revision {newest}.")

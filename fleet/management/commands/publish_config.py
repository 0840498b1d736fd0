from django.core.management.base import BaseCommand

from fleet import services


class Command(BaseCommand):
    help = "Publish pending config changes (the first run writes the initial snapshot) and re-sync Redis."

    def add_arguments(self, parser):
        parser.add_argument("--full", action="store_true", help="recompile everything from the database")

    def handle(self, *args, full: bool, **options):
        if full:
            from audit.context import Actor

            revision = services.republish_all(actor=Actor.system("manage.py publish_config"), reason="--full")
        else:
            revision = services.publish_pending()
        newest = services.sync_to_redis()
        made = f"published revision {revision.number} ({revision.kind})" if revision else "nothing pending"
        self.stdout.write(f"{made}; Redis holds revision {newest}.")

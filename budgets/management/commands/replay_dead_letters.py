from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.context import Actor
from budgets import dead_letters
from budgets.replay import replay_dead_letters


class Command(BaseCommand):
    help = (
        "Store usage dead letters again through the ingestion path, after a fix: those that now store leave the "
        "dead-letter stream, the others stay with the new reason. Recorded in the platform audit log."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--all", action="store_true", dest="everything", help="every dead letter waiting now")
        which.add_argument("--id", action="append", dest="ids", metavar="ID", help="one dead letter (repeatable)")

    def handle(self, *args: Any, everything: bool, ids: list[str] | None, **options: Any) -> None:
        for letter_id in ids or []:
            if not dead_letters.is_stream_id(letter_id):
                raise CommandError(f"{letter_id!r} is not a dead letter id (e.g. 1712345678901-0).")
        missing = sorted(set(ids or []) - {letter.id for letter in dead_letters.find(ids or [])})
        if missing:
            raise CommandError(f"No dead letter with id {', '.join(missing)}: replayed or purged already?")
        actor = Actor.system("manage.py replay_dead_letters")
        result = replay_dead_letters(actor=actor, ids=None if everything else ids)
        self.stdout.write(
            f"Replayed {result.replayed}: {result.stored} now in the ledger ({result.inserted} new rows), "
            f"{result.still_refused} still refused and kept."
        )
        if result.still_refused:
            self.stdout.write("See the reasons on the dead-letter page (/usage/dead-letters/).")

from django.core.management.base import BaseCommand, CommandError

from audit.services import verify_chain
from orgs.models import Organization


class Command(BaseCommand):
    help = (
        "Verify an org's audit hash chain; exits non-zero at the first broken link or gap. Also says how "
        "many events after the newest signed checkpoint no signature covers yet."
    )

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="org slug")

    def handle(self, *args, org: str, **options):
        organization = Organization.objects.filter(slug=org).first()
        if organization is None:
            raise CommandError(f"No org with slug {org!r}.")
        result = verify_chain(organization)
        if result.ok:
            self.stdout.write(self.style.SUCCESS(f"OK: {result.checked} events verified for {org}."))
            if result.purge:
                self.stdout.write(f"{result.purge[0].upper()}{result.purge[1:]}.")
            self.stdout.write(result.coverage)
            return
        self.stdout.write(result.coverage)
        raise CommandError(
            f"BROKEN at sequence {result.first_bad_sequence}: {result.reason} "
            f"({result.checked} events verified before it)."
        )

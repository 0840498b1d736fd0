from django.core.management.base import BaseCommand, CommandError

from audit.integrity import PurgeRefused, purge_expired
from orgs.models import Organization


class Command(BaseCommand):
    help = "Remove an org's audit events older than its retention, after signing a purge checkpoint."

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="org slug")

    def handle(self, *args, org: str, **options):
        organization = Organization.objects.filter(slug=org).first()
        if organization is None:
            raise CommandError(f"No org with slug {org!r}.")
        try:
            result = purge_expired(organization)
        except PurgeRefused as error:
            raise CommandError(f"Refused: the events due for removal do not verify ({error}).") from None
        if result is None:
            self.stdout.write(f"Nothing older than {organization.audit_retention_days} days to purge for {org}.")
            return
        self.stdout.write(
            self.style.SUCCESS(
                f"Purged {result.purged_count} events up to sequence {result.purged_through} for {org}; "
                f"signed checkpoint {result.checkpoint.uuid}."
            )
        )

from datetime import timedelta

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from audit.context import Actor
from orgs.models import Organization
from orgs.roles import Role
from orgs.services import create_api_token


class Command(BaseCommand):
    help = "Create a management API token for one org and role; prints the token once."

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="org slug")
        parser.add_argument("--role", required=True, choices=Role.values)
        parser.add_argument("--name", default="created with manage.py")
        parser.add_argument("--expires-in-days", type=int, default=None)

    def handle(self, *args, org: str, role: str, name: str, expires_in_days: int | None, **options):
        organization = Organization.objects.filter(slug=org).first()
        if organization is None:
            raise CommandError(f"No org with slug {org!r}.")
        if expires_in_days is not None and expires_in_days <= 0:
            raise CommandError("--expires-in-days must be positive.")
        expires_at = timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None
        try:
            _token, plaintext = create_api_token(
                actor=Actor.system("manage.py create_api_token"),
                org=organization,
                name=name,
                role=role,
                expires_at=expires_at,
            )
        except ValidationError as error:
            raise CommandError("; ".join(error.messages)) from None
        self.stdout.write(plaintext)

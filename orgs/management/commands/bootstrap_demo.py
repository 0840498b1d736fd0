"""First-run set-up for `make run`: a demo org, its owner, and a management API token."""

import os
import secrets
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction

from audit.context import Actor
from orgs.models import Organization, User
from orgs.roles import Role
from orgs.services import create_api_token, create_org

DEMO_SLUG = "demo"
DEMO_OWNER_EMAIL = "owner@demo.gatehouse.local"


class Command(BaseCommand):
    help = "Create the demo org and owner on first run; write var/demo.env. Does nothing on later runs."

    def add_arguments(self, parser):
        parser.add_argument("--env-file", default=str(Path(settings.BASE_DIR) / "var" / "demo.env"))

    def handle(self, *args, env_file: str, **options):
        if Organization.objects.filter(slug=DEMO_SLUG).exists():
            self.stdout.write(f"Demo org exists; sign in as {DEMO_OWNER_EMAIL} (password printed on first run).")
            return
        password = secrets.token_urlsafe(12)
        system = Actor.system("bootstrap_demo")
        with transaction.atomic():
            owner = User.objects.filter(email=DEMO_OWNER_EMAIL).first()
            if owner is None:
                owner = User.objects.create_user(email=DEMO_OWNER_EMAIL, password=password, full_name="Demo Owner")
            else:
                owner.set_password(password)
                owner.save(update_fields=["password"])
            org = create_org(actor=system, name="Demo", slug=DEMO_SLUG, owner=owner, require_mfa=False)
            _token, plaintext = create_api_token(actor=system, org=org, name="make run admin token", role=Role.ADMIN)
        path = Path(env_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created with 0600 from the start: the token must never be readable by others, even briefly.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(f"GATEHOUSE_ADMIN_TOKEN={plaintext}\n")
        os.chmod(path, 0o600)
        self.stdout.write(self.style.SUCCESS("Created the demo org 'demo'."))
        self.stdout.write(f"  Sign in at {settings.SITE_URL}/accounts/login/")
        self.stdout.write(f"  email:    {DEMO_OWNER_EMAIL}")
        self.stdout.write(f"  password: {password}")
        self.stdout.write(f"  An admin API token for the demo org is in {path} (GATEHOUSE_ADMIN_TOKEN).")

"""First-run set-up for `make run`: a demo org, its owner, a management API token, and
routes to the provider simulator with a caller key, so the gateway answers at once."""

import os
import secrets
from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction

from audit.context import Actor
from keys.services import create_credential, issue_key
from orgs.models import Organization, User
from orgs.roles import Role
from orgs.services import add_team_member, create_api_token, create_org, create_team
from sla.services import create_deployment, create_route

DEMO_SLUG = "demo"
DEMO_OWNER_EMAIL = "owner@demo.gatehouse.local"
# alias -> (provider, upstream model, USD per 1M input tokens, per 1M output tokens)
DEMO_MODELS = {
    "gpt-4o": ("openai_compatible", "gpt-4o", "2.50", "10.00"),
    "gpt-4o-mini": ("openai_compatible", "gpt-4o-mini", "0.15", "0.60"),
    "text-embedding-3-small": ("openai_compatible", "text-embedding-3-small", "0.02", "0"),
    "claude-sonnet": ("anthropic", "claude-sonnet-4", "3.00", "15.00"),
    "gemini-flash": ("gemini", "gemini-2.5-flash", "0.30", "2.50"),
    "bedrock-claude": ("bedrock", "anthropic.claude-sonnet-4", "3.00", "15.00"),
}


class Command(BaseCommand):
    help = "Create the demo org and owner on first run; write var/demo.env. Does nothing on later runs."

    def add_arguments(self, parser):
        parser.add_argument("--env-file", default=str(Path(settings.BASE_DIR) / "var" / "demo.env"))
        parser.add_argument(
            "--simulator-url",
            default=os.environ.get("GATEHOUSE_SIMULATOR_URL", "http://127.0.0.1:8090"),
            help="the provider simulator the demo routes point at",
        )

    def handle(self, *args, env_file: str, simulator_url: str, **options):
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
            demo_key = self.seed_gateway(system, org, owner, simulator_url.rstrip("/"))
        path = Path(env_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created with 0600 from the start: the token must never be readable by others, even briefly.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(descriptor, 0o600)  # an existing file keeps its mode through O_CREAT: tighten it first
        with os.fdopen(descriptor, "w") as handle:
            handle.write(f"GATEHOUSE_ADMIN_TOKEN={plaintext}\n")
            handle.write(f"GATEHOUSE_DEMO_KEY={demo_key}\n")
        os.chmod(path, 0o600)
        self.stdout.write(self.style.SUCCESS("Created the demo org 'demo'."))
        self.stdout.write(f"  Sign in at {settings.SITE_URL}/accounts/login/")
        self.stdout.write(f"  email:    {DEMO_OWNER_EMAIL}")
        self.stdout.write(f"  password: {password}")
        self.stdout.write("  An admin API token (GATEHOUSE_ADMIN_TOKEN) and a caller key for the gateway")
        self.stdout.write(f"  (GATEHOUSE_DEMO_KEY) are in {path}.")

    @staticmethod
    def seed_gateway(system: Actor, org, owner, simulator_url: str) -> str:
        """A team, simulator-backed credentials, deployments and routes; returns a caller key."""
        team = create_team(actor=system, org=org, name="Demo team", description="Created by make run")
        add_team_member(actor=system, team=team, user=owner, team_admin=True)
        # One simulator-backed credential per wire format; the secrets only need the right shape.
        aws_secret = secrets.token_urlsafe(30).replace("-", "+").replace("_", "/")  # 40 characters, as AWS's
        aws_key_id = "AKIA" + secrets.token_hex(8).upper()
        connections = {
            "openai_compatible": ("OpenAI", {"base_url": f"{simulator_url}/v1"}, {"api_key": "sk-simulator-"}),
            "anthropic": ("Anthropic", {"base_url": simulator_url}, {"api_key": "sk-ant-simulator-"}),
            "gemini": ("Gemini API", {"base_url": simulator_url}, {"api_key": "AIza-simulator-"}),
            "bedrock": (
                "Bedrock",
                {"base_url": simulator_url, "region": "us-east-1", "access_key_id": aws_key_id},
                {"secret_access_key": aws_secret},
            ),
        }
        credentials = {}
        for provider, (label, fields, secret) in connections.items():
            if "api_key" in secret:
                secret = {"api_key": secret["api_key"] + secrets.token_hex(8)}
            credentials[provider] = create_credential(
                actor=system,
                org=org,
                name=f"Simulator ({label} wire format)",
                provider=provider,
                secrets=secret,
                **fields,
            )
        for alias, (provider, upstream_model, input_price, output_price) in DEMO_MODELS.items():
            deployment = create_deployment(
                actor=system,
                org=org,
                name=f"{alias} (simulator)",
                credential=credentials[provider],
                upstream_model=upstream_model,
                input_price_per_mtok=Decimal(input_price),
                output_price_per_mtok=Decimal(output_price),
            )
            create_route(actor=system, org=org, alias=alias, deployments=[deployment])
        _key, plaintext = issue_key(actor=system, team=team, name="make run demo key", user=owner)
        return plaintext

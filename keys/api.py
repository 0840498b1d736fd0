"""Caller keys and provider credentials over the API:
/api/v1/orgs/<org_slug>/keys/ and /api/v1/orgs/<org_slug>/credentials/.

One view per route, one method per operation, its serializers beside it. Every method checks
access first (orgs/access.py), validates input, and writes through keys/services.py. A key's
plaintext appears in exactly one response, the one that issues it; a provider secret in none.
"""

import json
from datetime import timedelta
from urllib.parse import urlsplit

from django.core.exceptions import PermissionDenied
from django.db.models import Prefetch, Q
from django.http import Http404
from django.utils import timezone
from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.response import Response

from controlplane.api import (
    BaseApi,
    ListApi,
    SearchQuery,
    ShownOnceOutput,
    StrictCharField,
    StrictIntegerField,
    StrictListField,
    StrictUUIDField,
    found,
    name_field,
    validated,
)
from orgs.access import (
    get_key_access,
    get_org_access,
    may_issue_key,
    may_manage_team_keys,
    require_key_rights,
    visible_keys,
)
from orgs.api import TeamReferenceOutput
from orgs.models import Team, User
from orgs.validators import validate_display_name

from . import services
from .models import CallerKey, Provider, ProviderCredential

MAX_TAGS = 20
MAX_MODELS = 100
MAX_TEAMS = 100
KEY_STATUSES = [("active", "Active"), ("revoked", "Revoked"), ("expired", "Expired")]


def keys_of(org):
    return CallerKey.objects.filter(org=org).select_related("team", "user").order_by("-created_at", "id")


def key_members_of(org):
    """People a key of `org` may name: its members, and former members who still hold keys."""
    return User.objects.filter(Q(memberships__org=org) | Q(caller_keys__org=org)).distinct()


# Caller keys -------------------------------------------------------------------------------


class UserReferenceOutput(serializers.Serializer):
    id = serializers.UUIDField(source="uuid")
    email = serializers.EmailField()


class KeyOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    prefix = serializers.CharField(help_text="The key's first characters, to recognise it.")
    team = TeamReferenceOutput()
    user = UserReferenceOutput(allow_null=True, help_text="Whose key it is; null for a service key.")
    status = serializers.ChoiceField(choices=KEY_STATUSES)
    allowed_models = serializers.ListField(
        child=serializers.CharField(), help_text="Route aliases the key may call; empty: whatever the team allows."
    )
    rpm_limit = serializers.IntegerField(allow_null=True, help_text="Requests per minute; null: unlimited.")
    tpm_limit = serializers.IntegerField(allow_null=True, help_text="Tokens per minute; null: unlimited.")
    tags = serializers.ListField(child=serializers.CharField())
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)
    rotated_from = serializers.UUIDField(
        source="rotated_from_id", allow_null=True, help_text="The key this one replaced by rotation."
    )


class KeyCreatedOutput(ShownOnceOutput):
    object_output = KeyOutput
    plaintext_field = "key"
    plaintext_help = "The key itself, for the OpenAI SDK. Shown once: store it now."


def tag_list(**kwargs) -> StrictListField:
    tag = StrictCharField(max_length=64, validators=[validate_display_name])
    return StrictListField(child=tag, max_length=MAX_TAGS, **kwargs)


def model_list(**kwargs) -> StrictListField:
    return StrictListField(child=StrictCharField(max_length=100), max_length=MAX_MODELS, **kwargs)


def limit_field(help_text: str) -> StrictIntegerField:
    return StrictIntegerField(
        required=False, allow_null=True, min_value=1, max_value=services.MAX_LIMIT, help_text=help_text
    )


class KeyCreateInput(serializers.Serializer):
    team = StrictUUIDField()
    name = name_field(100)
    user = StrictUUIDField(
        required=False,
        allow_null=True,
        help_text="User UUID of the key's holder, a member of the team; omit or null for a service key. "
        "Developers may issue keys only for themselves.",
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True, help_text="Default: never.")
    allowed_models = model_list(required=False, default=list, help_text="Route aliases; default: the team's.")
    rpm_limit = limit_field("Default: the team's limit.")
    tpm_limit = limit_field("Default: the team's limit.")
    tags = tag_list(required=False, default=list, help_text=f"At most {MAX_TAGS} tags of 64 characters.")


class KeyUpdateInput(serializers.Serializer):
    name = name_field(100)
    allowed_models = model_list()
    rpm_limit = limit_field("Null: the team's limit.")
    tpm_limit = limit_field("Null: the team's limit.")
    tags = tag_list()
    expires_at = serializers.DateTimeField(allow_null=True)


class KeyQuery(SearchQuery):
    team = serializers.UUIDField(required=False, help_text="Only this team's keys.")
    status = serializers.ChoiceField(choices=KEY_STATUSES, required=False)
    owner = serializers.UUIDField(required=False, help_text="Only keys of the person with this user UUID.")
    expiring_within_days = serializers.IntegerField(
        required=False, min_value=0, max_value=3650, help_text="Only active keys that expire within this many days."
    )


class KeyRotateInput(serializers.Serializer):
    grace_hours = StrictIntegerField(
        min_value=0,
        max_value=services.MAX_GRACE_HOURS,
        default=24,
        help_text="How long the old key keeps working; 0 ends it now.",
    )


class KeyBulkRevokeInput(serializers.Serializer):
    team = StrictUUIDField(required=False, help_text="Revoke this team's keys.")
    user = StrictUUIDField(required=False, help_text="Revoke this person's keys (with `team`: in that team only).")

    def validate(self, data):
        if not data.get("team") and not data.get("user"):
            raise serializers.ValidationError("Name a team, a person, or both.")
        return data


class KeyBulkRevokeOutput(serializers.Serializer):
    revoked = serializers.IntegerField(help_text="How many keys were revoked now.")


@extend_schema(tags=["keys"])
class KeyListApi(ListApi):
    @extend_schema(
        parameters=[KeyQuery],
        responses=KeyOutput(many=True),
        summary="List caller keys",
        description="Admins, finance and auditors see every key; others their own and their teams' as team admin.",
    )
    def get(self, request, org_slug):
        access = get_org_access(request, org_slug, "org.read")
        query = validated(KeyQuery, request.query_params)
        keys = visible_keys(request, access, keys_of(access.org))
        if query.get("q"):
            keys = keys.filter(Q(name__icontains=query["q"]) | Q(prefix__icontains=query["q"]))
        if query.get("team"):
            keys = keys.filter(team_id=query["team"])
        if query.get("status"):
            keys = keys.with_status(query["status"])
        if query.get("owner"):
            keys = keys.filter(user__uuid=query["owner"])
        if query.get("expiring_within_days") is not None:
            now = timezone.now()
            horizon = now + timedelta(days=query["expiring_within_days"])
            keys = keys.filter(revoked_at=None, expires_at__gt=now, expires_at__lte=horizon)
        return self.paginated_response(keys, KeyOutput)

    @extend_schema(
        request=KeyCreateInput,
        responses={201: KeyCreatedOutput},
        summary="Issue a caller key",
        description="The response carries the key in `key`, once; only its digest is stored. "
        "Models and limits may not exceed the team's.",
    )
    def post(self, request, org_slug):
        access = get_org_access(request, org_slug, "org.read")
        require_key_rights(request, access, own_keys_suffice=True)
        data = validated(KeyCreateInput, request.data)
        team = found(Team.objects.filter(org=access.org, pk=data["team"]))
        user = found(key_members_of(access.org).filter(uuid=data["user"])) if data.get("user") else None
        if not may_issue_key(request, access, team, user.pk if user else None):
            raise PermissionDenied("You may issue keys only for yourself, in teams you belong to.")
        if user is not None and not team.members.filter(pk=user.pk).exists():
            raise serializers.ValidationError({"user": ["This person is not a member of the team."]})
        key, plaintext = services.issue_key(
            actor=access.actor,
            team=team,
            name=data["name"],
            user=user,
            expires_at=data.get("expires_at"),
            allowed_models=data["allowed_models"],
            rpm_limit=data.get("rpm_limit"),
            tpm_limit=data.get("tpm_limit"),
            tags=data["tags"],
        )
        body = KeyCreatedOutput(keys_of(access.org).get(pk=key.pk), context={"plaintext": plaintext}).data
        return Response(body, status=status.HTTP_201_CREATED)


@extend_schema(tags=["keys"])
class KeyDetailApi(BaseApi):
    @extend_schema(responses=KeyOutput, summary="Get a caller key")
    def get(self, request, org_slug, key_id):
        _, key = get_key_access(request, org_slug, key_id, "read")
        return Response(KeyOutput(key).data)

    @extend_schema(
        request=KeyUpdateInput(partial=True),
        responses=KeyOutput,
        summary="Change a key's name, models, limits, tags or expiry",
    )
    def patch(self, request, org_slug, key_id):
        access, key = get_key_access(request, org_slug, key_id, "manage")
        changes = validated(KeyUpdateInput, request.data, partial=True)
        current = {
            "name": key.name,
            "allowed_models": list(key.allowed_models),
            "rpm_limit": key.rpm_limit,
            "tpm_limit": key.tpm_limit,
            "tags": list(key.tags),
            "expires_at": key.expires_at,
        }
        services.update_key(actor=access.actor, key=key, **{**current, **changes})
        return Response(KeyOutput(keys_of(access.org).get(pk=key.pk)).data)


@extend_schema(tags=["keys"])
class KeyRotateApi(BaseApi):
    @extend_schema(
        request=KeyRotateInput,
        responses={201: KeyCreatedOutput},
        summary="Rotate a key: issue its successor",
        description="The successor keeps the key's settings and is shown once in `key`; "
        "the old key keeps working for `grace_hours`.",
    )
    def post(self, request, org_slug, key_id):
        access, key = get_key_access(request, org_slug, key_id, "manage")
        data = validated(KeyRotateInput, request.data)
        successor, plaintext = services.rotate_key(actor=access.actor, key=key, grace_hours=data["grace_hours"])
        body = KeyCreatedOutput(keys_of(access.org).get(pk=successor.pk), context={"plaintext": plaintext}).data
        return Response(body, status=status.HTTP_201_CREATED)


@extend_schema(tags=["keys"])
class KeyRevokeApi(BaseApi):
    @extend_schema(request=None, responses=KeyOutput, summary="Revoke a key: it stops working at once")
    def post(self, request, org_slug, key_id):
        access, key = get_key_access(request, org_slug, key_id, "manage")
        services.revoke_key(actor=access.actor, key=key)
        return Response(KeyOutput(keys_of(access.org).get(pk=key.pk)).data)


@extend_schema(tags=["keys"])
class KeyBulkRevokeApi(BaseApi):
    @extend_schema(
        request=KeyBulkRevokeInput,
        responses=KeyBulkRevokeOutput,
        summary="Revoke every key of a team or a person",
        description="Admins may name anyone; team admins name their team (and optionally a person in it).",
    )
    def post(self, request, org_slug):
        access = get_org_access(request, org_slug, "org.read")
        require_key_rights(request, access, own_keys_suffice=False)
        data = validated(KeyBulkRevokeInput, request.data)
        team = found(Team.objects.filter(org=access.org, pk=data["team"])) if data.get("team") else None
        user = found(key_members_of(access.org).filter(uuid=data["user"])) if data.get("user") else None
        allowed = may_manage_team_keys(request, access, team) if team is not None else access.can("keys.manage")
        if not allowed:
            raise PermissionDenied(f"Your role ({access.role}) may not revoke these keys.")
        revoked = services.revoke_keys(actor=access.actor, org=access.org, team=team, user=user)
        return Response(KeyBulkRevokeOutput({"revoked": revoked}).data)


# Provider credentials ----------------------------------------------------------------------

SECRET_NAMES = sorted({name for names in services.SECRET_FIELDS.values() for name in names})
SECRETS_BY_PROVIDER = "; ".join(f"{provider}: {', '.join(names)}" for provider, names in services.SECRET_FIELDS.items())


@extend_schema_field(
    {
        "type": "object",
        "writeOnly": True,
        "properties": {
            name: (
                {
                    "oneOf": [{"type": "string"}, {"type": "object"}],
                    "writeOnly": True,
                    "description": "The Google service-account key file, as text or as the JSON object.",
                }
                if name == "service_account_json"
                else {"type": "string", "writeOnly": True}
            )
            for name in SECRET_NAMES
        },
        "additionalProperties": False,
        "description": 'The provider\'s secrets, e.g. {"api_key": "sk-..."}. Per provider: '
        f"{SECRETS_BY_PROVIDER}. Sealed at once; never returned.",
    }
)
class SecretsField(serializers.Field):
    """Write-only secrets. No error message repeats a value sent, nor a name other than a known one."""

    default_error_messages = {
        "not_an_object": 'Give the secrets as an object, e.g. {{"api_key": "..."}}.',
        "unknown": f"Unknown secret field; use: {', '.join(SECRET_NAMES)}.",
        "empty": "Give at least one secret.",
        "not_a_string": "{name}: give the secret as a string.",
        "blank": "{name}: the secret cannot be empty.",
        "too_long": "{name}: at most {max_length:,} characters.",
        "control": "{name}: control characters are not allowed.",
    }

    def __init__(self, **kwargs):
        kwargs["write_only"] = True
        super().__init__(**kwargs)

    def to_internal_value(self, data) -> dict[str, str]:
        if not isinstance(data, dict):
            self.fail("not_an_object")
        if any(name not in SECRET_NAMES for name in data):
            self.fail("unknown")
        if not data:
            self.fail("empty")
        cleaned = {}
        for name, value in data.items():
            if name in services.MULTILINE_SECRETS and isinstance(value, dict):
                value = json.dumps(value, indent=2)  # the key file sent as JSON rather than as text
            if not isinstance(value, str):
                self.fail("not_a_string", name=name)
            value = value.strip()
            if not value:
                self.fail("blank", name=name)
            if len(value) > services.MAX_SECRET_LENGTH:
                self.fail("too_long", name=name, max_length=services.MAX_SECRET_LENGTH)
            allowed = "\t\n\r" if name in services.MULTILINE_SECRETS else ""
            if any((ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF) and c not in allowed for c in value):
                self.fail("control", name=name)
            cleaned[name] = value
        return cleaned

    def to_representation(self, value):
        raise AssertionError("secrets are write-only")  # pragma: no cover


class SecretHintOutput(serializers.Serializer):
    last4 = serializers.CharField(
        help_text="The secret's last four characters; empty for short secrets and service-account key files."
    )
    fingerprint = serializers.CharField(help_text="The start of the secret's SHA-256, to compare copies.")
    client_email = serializers.CharField(required=False, help_text="Service-account key files only: the account.")
    private_key_id = serializers.CharField(
        required=False, help_text="Service-account key files only: the key's id (never the key)."
    )


class CredentialSummaryOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    provider = serializers.ChoiceField(choices=Provider.choices)


class CredentialOutput(CredentialSummaryOutput):
    base_url = serializers.CharField()
    azure_endpoint = serializers.CharField()
    azure_api_version = serializers.CharField()
    region = serializers.CharField(help_text="vertex_ai and bedrock: the location or AWS region; else empty.")
    project = serializers.CharField(help_text="vertex_ai: the Google Cloud project id; else empty.")
    access_key_id = serializers.CharField(help_text="bedrock: the AWS access key id (not secret); else empty.")
    role_arn = serializers.CharField(help_text="bedrock: the role the key assumes; empty: none.")
    teams = TeamReferenceOutput(many=True, help_text="Teams that may use it; empty: every team of the org.")
    secret_hints = serializers.DictField(child=SecretHintOutput(), help_text="Per secret field; never the secret.")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    last_tested_at = serializers.DateTimeField(allow_null=True)
    last_test_ok = serializers.BooleanField(allow_null=True)
    last_test_message = serializers.CharField(
        help_text="The last test's outcome classified from the provider's HTTP status, e.g. "
        '"Authentication failed (401): ..."; never the provider\'s own words.'
    )


class CredentialListItem(serializers.Serializer):
    """Schema only: a list row is the whole record or, without credentials.read, its summary."""


class CredentialListItemSchema(OpenApiSerializerExtension):
    target_class = CredentialListItem

    def map_serializer(self, auto_schema, direction):
        # anyOf, not oneOf: a whole record is also a valid summary, so it matches both.
        return {
            "anyOf": [
                auto_schema.resolve_serializer(CredentialOutput, direction).ref,
                auto_schema.resolve_serializer(CredentialSummaryOutput, direction).ref,
            ]
        }


CREDENTIAL_LIST_ITEM = CredentialListItem(many=True)


def validate_url_parts(value: str) -> None:
    """Refuse what urlsplit cannot take apart (a bad port, a broken IPv6 host): the service's
    check_upstream_url lets those out as ValueError."""
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 (reading it parses and range-checks the port)
    except ValueError:
        raise serializers.ValidationError("Enter a valid URL.") from None


def url_field(help_text: str) -> StrictCharField:
    # The service checks the URL (scheme, host, SSRF) and normalises it.
    return StrictCharField(
        max_length=500, required=False, allow_blank=True, validators=[validate_url_parts], help_text=help_text
    )


# A secret pasted into the wrong field must not come back in the error: these messages never
# repeat the input (DRF's defaults for choices and UUIDs do).
PROVIDER_ERRORS = {"invalid_choice": f"Choose one of: {', '.join(Provider.values)}."}


def provider_field(**kwargs) -> serializers.ChoiceField:
    return serializers.ChoiceField(choices=Provider.choices, error_messages=PROVIDER_ERRORS, **kwargs)


def team_id_list(**kwargs) -> StrictListField:
    team_id = StrictUUIDField(error_messages={"invalid": "Must be a valid UUID."})
    return StrictListField(child=team_id, max_length=MAX_TEAMS, **kwargs)


def cloud_field(name: str, help_text: str) -> StrictCharField:
    # The service checks the shape (and says what it should be, without repeating the input).
    max_length = ProviderCredential._meta.get_field(name).max_length
    return StrictCharField(max_length=max_length, required=False, allow_blank=True, help_text=help_text)


REGION_HELP = "Required for vertex_ai (e.g. us-central1, or global) and bedrock (e.g. us-east-1)."
PROJECT_HELP = "Required for vertex_ai: the Google Cloud project id."
ACCESS_KEY_ID_HELP = "Required for bedrock: the AWS access key id (AKIA... or ASIA...); its secret goes in secrets."
ROLE_ARN_HELP = "bedrock, optional: a role to assume with the key, arn:aws:iam::<account>:role/<name>."


class CredentialCreateInput(serializers.Serializer):
    name = name_field(100)
    provider = provider_field()
    base_url = url_field(
        "Required for openai_compatible; optional elsewhere (default: the provider's public API; for "
        "vertex_ai https://{region}-aiplatform.googleapis.com, for bedrock https://bedrock-runtime.{region}.amazonaws.com)."
    )
    azure_endpoint = url_field("Required for azure_openai.")
    azure_api_version = StrictCharField(max_length=32, required=False, allow_blank=True)
    region = cloud_field("region", REGION_HELP)
    project = cloud_field("project", PROJECT_HELP)
    access_key_id = cloud_field("access_key_id", ACCESS_KEY_ID_HELP)
    role_arn = cloud_field("role_arn", ROLE_ARN_HELP)
    teams = team_id_list(required=False, default=list, help_text="Team UUIDs that may use it; default: every team.")
    secrets = SecretsField()


DESTINATION_NEEDS_SECRETS = (
    "Changing it requires the credential's secret (secrets.api_key, .service_account_json or "
    ".secret_access_key) in the same request (the stored key is never sent to a new address)."
)


class CredentialUpdateInput(serializers.Serializer):
    name = name_field(100)
    provider = provider_field(help_text="Cannot change; given, it must match.")
    base_url = url_field(DESTINATION_NEEDS_SECRETS)
    azure_endpoint = url_field(DESTINATION_NEEDS_SECRETS)
    azure_api_version = StrictCharField(max_length=32, allow_blank=True)
    region = cloud_field("region", REGION_HELP)
    project = cloud_field("project", PROJECT_HELP)
    access_key_id = cloud_field(
        "access_key_id", ACCESS_KEY_ID_HELP + " Changing it requires secrets.secret_access_key."
    )
    role_arn = cloud_field("role_arn", ROLE_ARN_HELP)
    teams = team_id_list(help_text="Team UUIDs that may use it; empty: every team.")
    secrets = SecretsField(
        help_text="Secrets given here replace the stored ones. Required when base_url or azure_endpoint "
        "(or a bedrock access_key_id) changes."
    )

    def validate_provider(self, value: str) -> str:
        if value != self.context["credential"].provider:
            raise serializers.ValidationError("A credential's provider cannot change: register a new credential.")
        return value


class CredentialQuery(SearchQuery):
    provider = serializers.ChoiceField(choices=Provider.choices, required=False)


class CredentialTestOutput(serializers.Serializer):
    ok = serializers.BooleanField(source="last_test_ok")
    message = serializers.CharField(
        source="last_test_message", help_text="Classified from the HTTP status; never the provider's own words."
    )
    tested_at = serializers.DateTimeField(source="last_tested_at")


def team_references() -> Prefetch:
    return Prefetch("teams", queryset=Team.objects.only("id", "name").order_by("name", "id"))


def credentials_of(org):
    return ProviderCredential.objects.filter(org=org).prefetch_related(team_references()).order_by("name", "id")


def org_teams(org, ids) -> list[Team]:
    """The teams of `org` with these ids, or 404 when any is not one."""
    ids = set(ids)
    teams = list(Team.objects.filter(org=org, pk__in=ids))
    if len(teams) != len(ids):
        raise Http404("Not found.")
    return teams


@extend_schema(tags=["credentials"])
class CredentialListApi(ListApi):
    @extend_schema(
        parameters=[CredentialQuery],
        responses=CREDENTIAL_LIST_ITEM,
        summary="List provider credentials",
        description="Every member sees names and providers; with credentials.read, the whole record. Never a secret.",
    )
    def get(self, request, org_slug):
        access = get_org_access(request, org_slug, "org.read")
        query = validated(CredentialQuery, request.query_params)
        credentials = ProviderCredential.objects.filter(org=access.org).order_by("name", "id")
        if query.get("q"):
            credentials = credentials.filter(name__icontains=query["q"])
        if query.get("provider"):
            credentials = credentials.filter(provider=query["provider"])
        if not access.can("credentials.read"):
            return self.paginated_response(credentials.only("id", "name", "provider"), CredentialSummaryOutput)
        return self.paginated_response(credentials.prefetch_related(team_references()), CredentialOutput)

    @extend_schema(
        request=CredentialCreateInput,
        responses={201: CredentialOutput},
        summary="Register a provider credential",
        description="Secrets are sealed before they reach the database and are never returned.",
    )
    def post(self, request, org_slug):
        access = get_org_access(request, org_slug, "credentials.manage")
        data = validated(CredentialCreateInput, request.data)
        teams = org_teams(access.org, data["teams"])
        credential = services.create_credential(
            actor=access.actor,
            org=access.org,
            name=data["name"],
            provider=data["provider"],
            secrets=data["secrets"],
            base_url=data.get("base_url", ""),
            azure_endpoint=data.get("azure_endpoint", ""),
            azure_api_version=data.get("azure_api_version", ""),
            region=data.get("region", ""),
            project=data.get("project", ""),
            access_key_id=data.get("access_key_id", ""),
            role_arn=data.get("role_arn", ""),
            teams=teams,
        )
        body = CredentialOutput(credentials_of(access.org).get(pk=credential.pk)).data
        return Response(body, status=status.HTTP_201_CREATED)


@extend_schema(tags=["credentials"])
class CredentialDetailApi(BaseApi):
    @extend_schema(responses=CredentialOutput, summary="Get a provider credential")
    def get(self, request, org_slug, credential_id):
        access = get_org_access(request, org_slug, "credentials.read")
        return Response(CredentialOutput(found(credentials_of(access.org).filter(pk=credential_id))).data)

    @extend_schema(
        request=CredentialUpdateInput(partial=True),
        responses=CredentialOutput,
        summary="Change a credential's settings or replace its secrets",
        description="A change of where the credential connects (base_url, azure_endpoint) needs its secrets "
        'in the same request; without them the answer is 400 {"secrets": ["Enter the API key again to change '
        'where this credential connects."]} and nothing changes.',
    )
    def patch(self, request, org_slug, credential_id):
        access = get_org_access(request, org_slug, "credentials.manage")
        credential = found(credentials_of(access.org).filter(pk=credential_id))
        changes = validated(CredentialUpdateInput, request.data, partial=True, context={"credential": credential})
        teams = org_teams(access.org, changes["teams"]) if "teams" in changes else list(credential.teams.all())
        services.update_credential(
            actor=access.actor,
            credential=credential,
            name=changes.get("name", credential.name),
            base_url=changes.get("base_url", credential.base_url),
            azure_endpoint=changes.get("azure_endpoint", credential.azure_endpoint),
            azure_api_version=changes.get("azure_api_version", credential.azure_api_version),
            region=changes.get("region", credential.region),
            project=changes.get("project", credential.project),
            access_key_id=changes.get("access_key_id", credential.access_key_id),
            role_arn=changes.get("role_arn", credential.role_arn),
            teams=teams,
            secrets=changes.get("secrets"),
        )
        return Response(CredentialOutput(credentials_of(access.org).get(pk=credential.pk)).data)

    @extend_schema(request=None, responses={204: None}, summary="Delete a credential and its sealed secrets")
    def delete(self, request, org_slug, credential_id):
        access = get_org_access(request, org_slug, "credentials.manage")
        credential = found(ProviderCredential.objects.filter(org=access.org, pk=credential_id).select_related("org"))
        services.delete_credential(actor=access.actor, credential=credential)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(tags=["credentials"])
class CredentialTestApi(BaseApi):
    @extend_schema(
        request=None,
        responses=CredentialTestOutput,
        summary="Test a credential against its provider",
        description="Calls the provider's model list (no tokens spent; Vertex AI first trades the service-account "
        "key for a token at its token_uri; Bedrock, after assuming role_arn if set, lists asynchronous invocations "
        "on bedrock-runtime, SigV4-signed). The outcome is recorded on the "
        "credential and in the audit trail as a message classified from the HTTP status (e.g. "
        '"Authentication failed (401): ...", "Timed out: ...", "TLS error: ..."), never the provider\'s own words.',
    )
    def post(self, request, org_slug, credential_id):
        access = get_org_access(request, org_slug, "credentials.manage")
        credential = found(ProviderCredential.objects.filter(org=access.org, pk=credential_id))
        credential = services.run_credential_check(actor=access.actor, credential=credential)
        return Response(CredentialTestOutput(credential).data)

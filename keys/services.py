"""Caller keys and provider credentials: every change with its audit event in one transaction."""

import hashlib
import json
import re
import secrets
from datetime import datetime, timedelta

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from audit.context import Actor
from audit.services import REDACTED, changes, record_event
from fleet.changes import record_config_change
from orgs.models import Organization, Team, User
from orgs.tokens import digest

from . import crypto
from .key_ring import key_ring
from .models import CallerKey, Provider, ProviderCredential
from .upstream_urls import check_upstream_url

CALLER_KEY_PREFIX = "gh_"
MAX_LIMIT = 10_000_000  # requests or tokens per minute; anything above is a typo
MAX_GRACE_HOURS = 24 * 30
MAX_SECRET_LENGTH = 8192

# The secret fields each provider needs; everything else about a credential is configuration.
SECRET_FIELDS = {
    Provider.OPENAI: ("api_key",),
    Provider.ANTHROPIC: ("api_key",),
    Provider.AZURE_OPENAI: ("api_key",),
    Provider.OPENAI_COMPATIBLE: ("api_key",),
    Provider.GEMINI: ("api_key",),
    Provider.VERTEX_AI: ("service_account_json",),
    Provider.BEDROCK: ("secret_access_key",),
}
SECRET_LABELS = {
    "api_key": "API key",
    "service_account_json": "service-account key file",
    "secret_access_key": "secret access key",
}
# The settings each provider uses besides its secrets; the others stay empty.
CONNECTION_FIELDS = {
    Provider.OPENAI: ("base_url",),
    Provider.ANTHROPIC: ("base_url",),
    Provider.AZURE_OPENAI: ("azure_endpoint", "azure_api_version", "base_url"),
    Provider.OPENAI_COMPATIBLE: ("base_url",),
    Provider.GEMINI: ("base_url",),
    Provider.VERTEX_AI: ("project", "region", "base_url"),
    Provider.BEDROCK: ("access_key_id", "region", "role_arn", "base_url"),
}
# Of those, the ones a provider cannot do without (_clean_connection says so, field by field).
REQUIRED_FIELDS = {
    Provider.AZURE_OPENAI: ("azure_endpoint", "azure_api_version"),
    Provider.OPENAI_COMPATIBLE: ("base_url",),
    Provider.VERTEX_AI: ("project", "region"),
    Provider.BEDROCK: ("access_key_id", "region"),
}
CONNECTION_NAMES = ("base_url", "azure_endpoint", "azure_api_version", "region", "project", "access_key_id", "role_arn")
CLOUD_FIELDS = ("region", "project", "access_key_id", "role_arn")


def new_caller_key() -> tuple[str, str, str]:
    """(plaintext, display prefix, digest). The prefix is gh_ plus 8 characters."""
    plaintext = CALLER_KEY_PREFIX + secrets.token_urlsafe(32)
    return plaintext, plaintext[: len(CALLER_KEY_PREFIX) + 8], digest(plaintext)


# Caller keys ---------------------------------------------------------------------------------


def unknown_aliases(org_id, aliases: list[str]) -> list[str]:
    """The aliases no model route of the org answers to."""
    from sla.models import ModelRoute

    known = set(ModelRoute.objects.filter(org_id=org_id, alias__in=aliases).values_list("alias", flat=True))
    return sorted(set(aliases) - known)


def _check_limits_within_team(team: Team, allowed_models: list[str], rpm_limit, tpm_limit) -> None:
    """A key never reaches beyond its team's ceiling, whoever creates it."""
    errors: dict[str, list[str]] = {}
    for field, value in (("rpm_limit", rpm_limit), ("tpm_limit", tpm_limit)):
        if value is None:
            continue
        if not isinstance(value, int) or value < 1 or value > MAX_LIMIT:
            errors[field] = [f"Use a whole number from 1 to {MAX_LIMIT:,}."]
            continue
        ceiling = getattr(team, field)
        if ceiling is not None and value > ceiling:
            errors[field] = [f"The team allows at most {ceiling:,}."]
    unknown = unknown_aliases(team.org_id, allowed_models)
    if unknown:
        errors["allowed_models"] = [f"No route has the alias: {', '.join(unknown)}."]
    elif team.allowed_models:
        outside = sorted(set(allowed_models) - set(team.allowed_models))
        if outside:
            errors["allowed_models"] = [f"The team does not allow: {', '.join(outside)}."]
    if errors:
        raise ValidationError(errors)


def _effective_limits(team: Team, rpm_limit, tpm_limit) -> tuple[int | None, int | None]:
    """A key without its own limit inherits the team's, so it can never exceed it."""
    return (
        rpm_limit if rpm_limit is not None else team.rpm_limit,
        tpm_limit if tpm_limit is not None else team.tpm_limit,
    )


def _key_snapshot(key: CallerKey) -> dict:
    return {
        "name": key.name,
        "team": str(key.team_id),
        "user": str(key.user.uuid) if key.user_id and key.user else None,
        "allowed_models": list(key.allowed_models),
        "rpm_limit": key.rpm_limit,
        "tpm_limit": key.tpm_limit,
        "tags": list(key.tags),
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
    }


@transaction.atomic
def issue_key(
    *,
    actor: Actor,
    team: Team,
    name: str,
    user: User | None = None,
    expires_at: datetime | None = None,
    allowed_models: list[str] | None = None,
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    tags: list[str] | None = None,
    rotated_from: CallerKey | None = None,
) -> tuple[CallerKey, str]:
    """Issue a caller key for a team; returns it and its plaintext, shown once."""
    allowed_models = sorted(set(allowed_models or []))
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError({"expires_at": ["The expiry must be in the future."]})
    _check_limits_within_team(team, allowed_models, rpm_limit, tpm_limit)
    rpm_limit, tpm_limit = _effective_limits(team, rpm_limit, tpm_limit)
    plaintext, prefix, key_digest = new_caller_key()
    key = CallerKey.objects.create(
        org_id=team.org_id,
        team=team,
        user=user,
        name=name.strip(),
        prefix=prefix,
        digest=key_digest,
        allowed_models=allowed_models,
        rpm_limit=rpm_limit,
        tpm_limit=tpm_limit,
        tags=sorted(set(tags or [])),
        created_by_id=actor.user_id,
        expires_at=expires_at,
        rotated_from=rotated_from,
    )
    event = record_event(
        actor=actor,
        org=team.org,
        action="key.rotated" if rotated_from else "key.issued",
        target=key,
        target_type="caller_key",
        diff={**changes({}, _key_snapshot(key)), "prefix": {"after": prefix}}
        | ({"rotated_from": {"after": str(rotated_from.pk)}} if rotated_from else {}),
    )
    record_config_change("key", key.digest, cause=event)
    return key, plaintext


@transaction.atomic
def update_key(
    *,
    actor: Actor,
    key: CallerKey,
    name: str,
    allowed_models: list[str],
    rpm_limit: int | None,
    tpm_limit: int | None,
    tags: list[str],
    expires_at: datetime | None,
) -> CallerKey:
    """Change a key's name, models, limits, tags or expiry."""
    key = CallerKey.objects.select_for_update(of=("self",)).select_related("team", "user", "org").get(pk=key.pk)
    if key.status != "active":
        raise ValidationError({"key": [f"This key is {key.status}; it cannot be changed."]})
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError({"expires_at": ["The expiry must be in the future."]})
    allowed_models = sorted(set(allowed_models))
    _check_limits_within_team(key.team, allowed_models, rpm_limit, tpm_limit)
    rpm_limit, tpm_limit = _effective_limits(key.team, rpm_limit, tpm_limit)
    before = _key_snapshot(key)
    key.name, key.allowed_models, key.rpm_limit, key.tpm_limit = name.strip(), allowed_models, rpm_limit, tpm_limit
    key.tags, key.expires_at = sorted(set(tags)), expires_at
    diff = changes(before, _key_snapshot(key))
    if diff:
        key.save(update_fields=["name", "allowed_models", "rpm_limit", "tpm_limit", "tags", "expires_at"])
        event = record_event(
            actor=actor, org=key.org, action="key.updated", target=key, target_type="caller_key", diff=diff
        )
        record_config_change("key", key.digest, cause=event)
    return key


@transaction.atomic
def rotate_key(*, actor: Actor, key: CallerKey, grace_hours: float = 24) -> tuple[CallerKey, str]:
    """Issue a successor with the same settings; the old key works for `grace_hours` more."""
    key = CallerKey.objects.select_for_update(of=("self",)).select_related("team__org", "user").get(pk=key.pk)
    if key.status != "active":
        raise ValidationError({"key": [f"This key is {key.status}; only active keys can be rotated."]})
    if CallerKey.objects.filter(rotated_from=key).exists():
        raise ValidationError({"key": ["This key was already rotated."]})
    if not 0 <= grace_hours <= MAX_GRACE_HOURS:
        raise ValidationError({"grace_hours": [f"Use 0 to {MAX_GRACE_HOURS} hours."]})
    successor, plaintext = issue_key(
        actor=actor,
        team=key.team,
        name=key.name,
        user=key.user,
        expires_at=key.expires_at if key.expires_at and key.expires_at > timezone.now() else None,
        allowed_models=list(key.allowed_models),
        rpm_limit=key.rpm_limit,
        tpm_limit=key.tpm_limit,
        tags=list(key.tags),
        rotated_from=key,
    )
    grace_end = timezone.now() + timedelta(hours=grace_hours)
    if key.expires_at is None or grace_end < key.expires_at:
        key.expires_at = grace_end
        key.save(update_fields=["expires_at"])
        record_config_change("key", key.digest)
    return successor, plaintext


@transaction.atomic
def revoke_key(*, actor: Actor, key: CallerKey) -> CallerKey:
    """Revoke a key: it stops working at once."""
    key = CallerKey.objects.select_for_update(of=("self",)).select_related("org").get(pk=key.pk)
    if key.revoked_at:
        raise ValidationError({"key": ["This key is already revoked."]})
    key.revoked_at = timezone.now()
    key.save(update_fields=["revoked_at"])
    event = record_event(actor=actor, org=key.org, action="key.revoked", target=key, target_type="caller_key")
    record_config_change("key", key.digest, cause=event)
    return key


@transaction.atomic
def revoke_keys(*, actor: Actor, org: Organization, team: Team | None = None, user: User | None = None) -> int:
    """Bulk revoke: every unrevoked key of a team, or of a person, in the org."""
    if team is None and user is None:
        raise ValidationError({"non_field_errors": ["Choose a team or a person."]})
    keys = CallerKey.objects.select_for_update().filter(org=org, revoked_at=None)
    if team is not None:
        keys = keys.filter(team=team)
    if user is not None:
        keys = keys.filter(user=user)
    rows = keys.values_list("pk", "digest")
    if team is not None:
        return _revoke_all(actor, org, rows, team, "team", str(team.pk), {})
    return _revoke_all(actor, org, rows, user, "user", str(user.uuid), {})


def _revoke_all(actor: Actor, org: Organization, rows, target, target_type: str, target_id: str, diff: dict) -> int:
    """Revoke these (pk, digest) rows: one `key.bulk_revoked` audit event listing them, and one
    config change pushing them to the gateways (none when there is nothing to revoke)."""
    rows = list(rows)
    ids = [str(pk) for pk, _ in rows]
    revoked = CallerKey.objects.filter(pk__in=ids).update(revoked_at=timezone.now())
    event = record_event(
        actor=actor,
        org=org,
        action="key.bulk_revoked",
        target=target,
        target_type=target_type,
        target_id=target_id,
        diff={"revoked": {"after": revoked}, "keys": {"after": ids}, **diff},
    )
    if rows:
        record_config_change("key", *[key_digest for _, key_digest in rows], cause=event)
    return revoked


@transaction.atomic
def revoke_personal_keys(*, actor: Actor, org: Organization, user: User, reason: str, team: Team | None = None) -> int:
    """Revoke the keys a person holds in the org, or only in `team`, as they leave it. Team
    service keys (no holder) stay with their team, whoever issued them. One audit event lists
    the keys and one config change pushes them; nothing is written when there are none."""
    keys = CallerKey.objects.select_for_update().filter(org=org, user=user, revoked_at=None)
    if team is not None:
        keys = keys.filter(team=team)
    rows = list(keys.order_by("created_at", "id").values_list("pk", "digest"))
    if not rows:
        return 0
    return _revoke_all(actor, org, rows, user, "user", str(user.uuid), {"reason": {"after": reason}})


PLAYGROUND_TAG = "playground"
# Each page load mints one; more than this many alive at once is a script, not a person.
MAX_ACTIVE_PLAYGROUND_KEYS = 10


@transaction.atomic
def mint_playground_key(
    *, actor: Actor, team: Team, user: User, models: list[str], minutes: int = 15
) -> tuple[CallerKey, str]:
    """A short-lived key the playground holds in the browser: the person's own, in a team they
    may issue keys in, for `models` within the team's list, tagged `playground`."""
    from orgs.access import is_team_admin

    if actor.user_id != user.pk:
        raise ValidationError({"user": ["A playground key is minted by the person who will use it."]})
    if not 1 <= minutes <= 60:
        raise ValidationError({"minutes": ["Use 1 to 60 minutes."]})
    if not models:
        raise ValidationError({"allowed_models": ["Choose at least one model."]})
    in_team = team.members.filter(pk=user.pk).exists()
    if not (in_team or "keys.manage" in actor.capabilities or is_team_admin(user, team)):
        raise ValidationError({"team": ["You may use the playground only in teams you belong to."]})
    active = CallerKey.objects.active().filter(org_id=team.org_id, user=user, tags__contains=[PLAYGROUND_TAG])
    if active.count() >= MAX_ACTIVE_PLAYGROUND_KEYS:
        raise ValidationError(
            {"team": [f"You hold {MAX_ACTIVE_PLAYGROUND_KEYS} playground keys already; wait for one to expire."]}
        )
    expires_at = timezone.now() + timedelta(minutes=minutes)
    return issue_key(
        actor=actor,
        team=team,
        name=f"Playground (expires {expires_at:%H:%M} UTC)",
        user=user,
        expires_at=expires_at,
        allowed_models=models,
        tags=[PLAYGROUND_TAG],
    )


# Provider credentials ----------------------------------------------------------------------

GOOGLE_PROJECT_ID = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]")
GOOGLE_REGION = re.compile(r"[a-z]+-[a-z]+[0-9]{1,2}|global")
AWS_REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}")
AWS_ACCESS_KEY_ID = re.compile(r"(?:AKIA|ASIA)[A-Z0-9]{16}")
AWS_SECRET_ACCESS_KEY = re.compile(r"[A-Za-z0-9/+]{40}")
AWS_ROLE_ARN = re.compile(r"arn:aws(?:-cn|-us-gov)?:iam::[0-9]{12}:role/(?:[\w+=,.@-]+/)*[\w+=,.@-]{1,64}", re.ASCII)
EMAIL_ADDRESS = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
GOOGLE_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
# Secrets that are files rather than tokens keep their line breaks and tabs.
MULTILINE_SECRETS = {"service_account_json"}


def secret_hint(value: str, field: str = "api_key") -> dict:
    """What pages may show of a secret: its last four characters and a short fingerprint; for a
    service-account key file, which account and key it is (never a character of the private key)."""
    fingerprint = hashlib.sha256(value.encode()).hexdigest()[:12]
    if field == "service_account_json":
        account = service_account_fields(value)
        return {
            "last4": "",
            "fingerprint": fingerprint,
            "client_email": account["client_email"],
            "private_key_id": account["private_key_id"],
        }
    return {"last4": value[-4:] if len(value) >= 12 else "", "fingerprint": fingerprint}


def hint_text(hint: dict) -> str:
    """How a sealed secret appears in an audit diff: what its hint shows, nothing more."""
    if hint.get("private_key_id"):
        return f"{REDACTED} key {hint['private_key_id']} of {hint['client_email']}"
    return REDACTED + hint.get("last4", "")


def service_account_fields(text: str) -> dict[str, str]:
    """client_email, private_key_id, private_key and token_uri of a Google service-account key
    file, checked for shape (no network). Refusals say what is wrong, never a value of the file."""

    def refused(message: str) -> ValidationError:
        return ValidationError({"service_account_json": [message]})

    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise refused("Paste the key file as it was downloaded: this is not JSON.") from None
    if not isinstance(data, dict) or data.get("type") != "service_account":
        raise refused('This is not a service-account key file: its "type" must be "service_account".')
    wanted = ("client_email", "private_key_id", "private_key", "token_uri")
    missing = [name for name in wanted if not isinstance(data.get(name), str) or not data[name].strip()]
    if missing:
        raise refused(f"The key file lacks {', '.join(missing)}.")
    email, key_id = data["client_email"].strip(), data["private_key_id"].strip()
    if len(email) > 254 or not EMAIL_ADDRESS.fullmatch(email):
        raise refused("Its client_email is not an email address.")
    if not GOOGLE_KEY_ID.fullmatch(key_id):
        raise refused("Its private_key_id is not a key id (letters and digits).")
    try:
        key = serialization.load_pem_private_key(data["private_key"].encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise refused("Its private_key is not a PEM private key without a passphrase.") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise refused("Its private_key must be an RSA key, as Google issues them.")
    if key.key_size < 2048:
        raise refused("Its private_key is too short: Google's keys have at least 2048 bits.")
    return {
        "client_email": email,
        "private_key_id": key_id,
        "private_key": data["private_key"],
        "token_uri": data["token_uri"].strip(),
    }


def _check_secret(field: str, value: str) -> None:
    """Refuse a secret whose shape is wrong for its field; the message never repeats it."""
    if field == "secret_access_key" and not AWS_SECRET_ACCESS_KEY.fullmatch(value):
        if AWS_ACCESS_KEY_ID.fullmatch(value):
            message = "This is an access key id; the secret access key is the other, 40-character half."
        else:
            message = "This does not look like an AWS secret access key (40 letters, digits, / and +)."
        raise ValidationError({field: [message]})
    if field == "service_account_json":
        token_uri = service_account_fields(value)["token_uri"]
        try:
            check_upstream_url(token_uri, field=field, https_only=True)
        except ValidationError as error:
            raise ValidationError({field: [f"Its token_uri is refused: {' '.join(error.messages)}"]}) from None


def _has_control_characters(value: str, field: str) -> bool:
    allowed = "\t\n\r" if field in MULTILINE_SECRETS else ""
    return any((ord(c) < 32 or ord(c) == 127) and c not in allowed for c in value)


def _clean_secrets(provider: str, values: dict[str, str], *, required: bool) -> dict[str, str]:
    cleaned: dict[str, str] = {}
    errors: dict[str, list[str]] = {}
    for field in SECRET_FIELDS[provider]:
        value = (values.get(field) or "").strip()
        if not value:
            if required:
                errors[field] = ["This secret is required."]
            continue
        if len(value) > MAX_SECRET_LENGTH:
            errors[field] = [f"At most {MAX_SECRET_LENGTH:,} characters."]
        elif _has_control_characters(value, field):
            errors[field] = ["Control characters are not allowed."]
        else:
            try:
                _check_secret(field, value)
            except ValidationError as error:
                errors.update(error.message_dict)
            else:
                cleaned[field] = value
    unknown = sorted(set(values) - set(SECRET_FIELDS[provider]))
    if unknown:
        errors["secrets"] = [f"Unknown secret fields for {provider}: {', '.join(unknown)}."]
    if errors:
        raise ValidationError(errors)
    return cleaned


def _check_pattern(
    errors: dict[str, list[str]], field: str, value: str, pattern: re.Pattern, *, missing: str | None, wrong: str
) -> None:
    """Record an error for `field` when it is empty (if `missing` says it is required) or does
    not match `pattern`. Neither message repeats the value."""
    if not value:
        if missing:
            errors[field] = [missing]
    elif not pattern.fullmatch(value):
        errors[field] = [wrong]


def _clean_connection(provider: str, given: dict[str, str]) -> dict[str, str]:
    """Every connection setting, checked for the provider; those it does not use are emptied."""
    used = CONNECTION_FIELDS[provider]
    values = {name: (given.get(name) or "").strip() if name in used else "" for name in CONNECTION_NAMES}
    errors: dict[str, list[str]] = {}
    for field in ("base_url", "azure_endpoint"):
        if values[field]:
            try:
                values[field] = check_upstream_url(values[field], field=field)
            except ValidationError as error:
                errors.update(error.message_dict)
    if provider == Provider.OPENAI_COMPATIBLE and not values["base_url"]:
        errors["base_url"] = ["An OpenAI-compatible provider needs a base URL."]
    if provider == Provider.AZURE_OPENAI:
        if not values["azure_endpoint"]:
            errors["azure_endpoint"] = ["Azure OpenAI needs its endpoint."]
        if not values["azure_api_version"]:
            errors["azure_api_version"] = ["Azure OpenAI needs an API version, e.g. 2024-10-21."]
    if provider == Provider.VERTEX_AI:
        _check_pattern(
            errors,
            "project",
            values["project"],
            GOOGLE_PROJECT_ID,
            missing="Vertex AI needs the Google Cloud project id.",
            wrong="A project id has 6 to 30 lowercase letters, digits and hyphens, starting with a letter, "
            "e.g. my-project-123.",
        )
        _check_pattern(
            errors,
            "region",
            values["region"],
            GOOGLE_REGION,
            missing="Vertex AI needs a region, e.g. us-central1.",
            wrong="A Vertex AI region looks like us-central1 or europe-west4 (or global).",
        )
    if provider == Provider.BEDROCK:
        _check_pattern(
            errors,
            "access_key_id",
            values["access_key_id"],
            AWS_ACCESS_KEY_ID,
            missing="AWS Bedrock needs the access key id.",
            wrong="An access key id is AKIA or ASIA followed by 16 capital letters and digits.",
        )
        _check_pattern(
            errors,
            "region",
            values["region"],
            AWS_REGION,
            missing="AWS Bedrock needs a region, e.g. us-east-1.",
            wrong="An AWS region looks like us-east-1 or eu-central-1.",
        )
        _check_pattern(
            errors,
            "role_arn",
            values["role_arn"],
            AWS_ROLE_ARN,
            missing=None,
            wrong="A role ARN looks like arn:aws:iam::123456789012:role/name.",
        )
    for field in CLOUD_FIELDS:
        limit = ProviderCredential._meta.get_field(field).max_length
        if len(values[field]) > limit:
            errors[field] = [f"At most {limit} characters."]
    if errors:
        raise ValidationError(errors)
    return values


def _check_destination_secrets(credential: ProviderCredential, connection: dict[str, str], replacing: dict) -> None:
    """Refuse a change of where a credential connects unless its secrets are entered again:
    otherwise whoever may edit it could send the stored key to a host of their choosing. An AWS
    access key id and its secret belong together, so a new id needs its secret too."""
    moved = any(connection[field] != getattr(credential, field) for field in ("base_url", "azure_endpoint"))
    rekeyed = connection["access_key_id"] != credential.access_key_id
    if not (moved or rekeyed):
        return
    missing = [field for field in SECRET_FIELDS[credential.provider] if field not in replacing]
    if missing:
        names = " and ".join(SECRET_LABELS.get(field, field) for field in missing)
        why = "change where this credential connects" if moved else "change the access key id"
        raise ValidationError({"secrets": [f"Enter the {names} again to {why}."]}, code="secret_required")


def _seal_secrets(credential: ProviderCredential, values: dict[str, str]) -> None:
    """Seal `values` under a fresh data key (replacing a secret seals a new one)."""
    ring = key_ring()
    data_key = crypto.new_data_key()
    wrapped, version = crypto.wrap_data_key(ring, data_key, org_id=credential.org_id, credential_id=credential.pk)
    sealed = {
        field: crypto.seal_field(data_key, value, org_id=credential.org_id, credential_id=credential.pk, field=field)
        for field, value in values.items()
    }
    credential.wrapped_data_key, credential.kek_version = wrapped, version
    credential.sealed_secrets = sealed
    credential.secret_hints = {field: secret_hint(value, field) for field, value in values.items()}


def open_secret(credential: ProviderCredential, field: str | None = None) -> str:
    """A credential's secret in plaintext (by default its provider's one secret: the API key,
    the service-account key file or the AWS secret access key), for the request that tests it or
    the gateway compile. Raises crypto.DecryptionError; never returns an empty or sealed value."""
    field = field or SECRET_FIELDS[credential.provider][0]
    ring = key_ring()
    data_key = crypto.unwrap_data_key(
        ring, credential.wrapped_data_key, credential.kek_version, org_id=credential.org_id, credential_id=credential.pk
    )
    if field not in credential.sealed_secrets:
        raise crypto.DecryptionError(f"The credential has no sealed {field}.")
    return crypto.open_field(
        data_key, credential.sealed_secrets[field], org_id=credential.org_id, credential_id=credential.pk, field=field
    )


def _credential_snapshot(credential: ProviderCredential, team_ids: list[str]) -> dict:
    snapshot = {
        "name": credential.name,
        "provider": credential.provider,
        "base_url": credential.base_url,
        "azure_endpoint": credential.azure_endpoint,
        "azure_api_version": credential.azure_api_version,
        "teams": sorted(team_ids),
    }
    # Google and AWS settings (none of them secret) appear for the providers that use them.
    for field in CLOUD_FIELDS:
        if field in CONNECTION_FIELDS[credential.provider]:
            snapshot[field] = getattr(credential, field)
    return snapshot


def _check_teams(org: Organization, teams: list[Team]) -> None:
    if any(team.org_id != org.pk for team in teams):
        raise ValidationError({"teams": ["No such team."]})


def _cleaned_input(provider: str, secrets: dict[str, str], connection: dict[str, str], *, required: bool):
    """(secrets, connection settings), or one ValidationError with every field's problems."""
    errors: dict[str, list[str]] = {}
    values: dict[str, str] = {}
    cleaned: dict[str, str] = {}
    try:
        values = _clean_secrets(provider, secrets, required=required)
    except ValidationError as error:
        errors.update(error.message_dict)
    try:
        cleaned = _clean_connection(provider, connection)
    except ValidationError as error:
        errors.update(error.message_dict)
    if errors:
        raise ValidationError(errors)
    return values, cleaned


@transaction.atomic
def create_credential(
    *,
    actor: Actor,
    org: Organization,
    name: str,
    provider: str,
    secrets: dict[str, str],
    base_url: str = "",
    azure_endpoint: str = "",
    azure_api_version: str = "",
    region: str = "",
    project: str = "",
    access_key_id: str = "",
    role_arn: str = "",
    teams: list[Team] | None = None,
) -> ProviderCredential:
    """Register a provider credential; its secrets are sealed before they touch the database."""
    if provider not in Provider.values:
        raise ValidationError({"provider": [f"Unknown provider {provider!r}."]})
    name = name.strip()
    if ProviderCredential.objects.filter(org=org, name__iexact=name).exists():
        raise ValidationError({"name": ["A credential with this name already exists."]})
    given = {
        "base_url": base_url,
        "azure_endpoint": azure_endpoint,
        "azure_api_version": azure_api_version,
        "region": region,
        "project": project,
        "access_key_id": access_key_id,
        "role_arn": role_arn,
    }
    values, connection = _cleaned_input(provider, secrets, given, required=True)
    teams = teams or []
    _check_teams(org, teams)
    credential = ProviderCredential(org=org, name=name, provider=provider, created_by_id=actor.user_id, **connection)
    _seal_secrets(credential, values)
    credential.save(force_insert=True)
    credential.teams.set(teams)
    diff = changes({}, _credential_snapshot(credential, [str(t.pk) for t in teams]))
    for field in values:
        diff[field] = {"before": "", "after": hint_text(credential.secret_hints[field])}
    event = record_event(
        actor=actor,
        org=org,
        action="credential.created",
        target=credential,
        target_type="provider_credential",
        diff=diff,
    )
    record_config_change("credential", credential.pk, cause=event)
    return credential


@transaction.atomic
def update_credential(
    *,
    actor: Actor,
    credential: ProviderCredential,
    name: str,
    base_url: str = "",
    azure_endpoint: str = "",
    azure_api_version: str = "",
    region: str = "",
    project: str = "",
    access_key_id: str = "",
    role_arn: str = "",
    teams: list[Team] | None = None,
    secrets: dict[str, str] | None = None,
) -> ProviderCredential:
    """Change a credential's settings; secrets given here replace the old ones (sealed anew).
    A new base URL or Azure endpoint (or AWS access key id) needs the secrets given again."""
    credential = ProviderCredential.objects.select_for_update().select_related("org").get(pk=credential.pk)
    name = name.strip()
    if (
        ProviderCredential.objects.filter(org_id=credential.org_id, name__iexact=name)
        .exclude(pk=credential.pk)
        .exists()
    ):
        raise ValidationError({"name": ["A credential with this name already exists."]})
    given = {
        "base_url": base_url,
        "azure_endpoint": azure_endpoint,
        "azure_api_version": azure_api_version,
        "region": region,
        "project": project,
        "access_key_id": access_key_id,
        "role_arn": role_arn,
    }
    replacing, connection = _cleaned_input(credential.provider, secrets or {}, given, required=False)
    _check_destination_secrets(credential, connection, replacing)
    teams = teams or []
    _check_teams(credential.org, teams)
    before = _credential_snapshot(credential, [str(pk) for pk in credential.teams.values_list("pk", flat=True)])
    credential.name = name
    for field, value in connection.items():
        setattr(credential, field, value)
    diff = changes(before, _credential_snapshot(credential, [str(t.pk) for t in teams]))
    if replacing:
        kept = {field: open_secret(credential, field) for field in credential.sealed_secrets if field not in replacing}
        old_hints = {field: hint_text(hint) for field, hint in credential.secret_hints.items()}
        _seal_secrets(credential, {**kept, **replacing})
        for field in replacing:
            diff[field] = {"before": old_hints.get(field, ""), "after": hint_text(credential.secret_hints[field])}
    if diff:
        credential.updated_at = timezone.now()
        credential.save()
        credential.teams.set(teams)
        action = "credential.secret_replaced" if replacing else "credential.updated"
        event = record_event(
            actor=actor,
            org=credential.org,
            action=action,
            target=credential,
            target_type="provider_credential",
            diff=diff,
        )
        record_config_change("credential", credential.pk, cause=event)
    return credential


@transaction.atomic
def delete_credential(*, actor: Actor, credential: ProviderCredential) -> None:
    """Remove a credential and its sealed secrets; refused while deployments use it."""
    if credential.deployments.exists():
        names = ", ".join(credential.deployments.values_list("name", flat=True)[:5])
        raise ValidationError({"credential": [f"Deployments use this credential: {names}. Remove them first."]})
    event = record_event(
        actor=actor,
        org=credential.org,
        action="credential.deleted",
        target=credential,
        target_type="provider_credential",
        diff={"name": {"before": credential.name}, "provider": {"before": credential.provider}},
    )
    record_config_change("credential", credential.pk, cause=event)
    credential.delete()


def rewrap_credential(credential_id, *, from_version: int) -> bool:
    """Re-wrap one credential's data key under the newest ring version without touching its
    sealed secrets. Compare-and-set on the version, so a crashed or concurrent run is harmless.
    Returns whether this call moved the row."""
    ring = key_ring()
    target = ring.current_version
    credential = ProviderCredential.objects.filter(pk=credential_id, kek_version=from_version).first()
    if credential is None or from_version == target:
        return False
    data_key = crypto.unwrap_data_key(
        ring, credential.wrapped_data_key, from_version, org_id=credential.org_id, credential_id=credential.pk
    )
    wrapped, version = crypto.wrap_data_key(ring, data_key, org_id=credential.org_id, credential_id=credential.pk)
    with transaction.atomic():
        moved = ProviderCredential.objects.filter(pk=credential_id, kek_version=from_version).update(
            wrapped_data_key=wrapped, kek_version=version
        )
        if moved:
            record_event(
                actor=Actor.system("rotate_kek"),
                org=credential.org,
                action="credential.kek_rotated",
                target=credential,
                target_type="provider_credential",
                diff={"kek_version": {"before": from_version, "after": version}},
            )
    return bool(moved)


def run_credential_check(*, actor: Actor, credential: ProviderCredential) -> ProviderCredential:
    """Call the provider with the credential and record the outcome: its status and a message
    classified from it, never the provider's own words. The provider call (up to 5 s) happens
    before the transaction, so it holds no row lock."""
    from .provider_check import check_credential

    current = ProviderCredential.objects.select_related("org").get(pk=credential.pk)
    result = check_credential(current, open_secret(current))
    with transaction.atomic():
        credential = ProviderCredential.objects.select_for_update().select_related("org").get(pk=credential.pk)
        credential.last_tested_at = timezone.now()
        credential.last_test_ok, credential.last_test_message = result.ok, result.message
        credential.save(update_fields=["last_tested_at", "last_test_ok", "last_test_message"])
        record_event(
            actor=actor,
            org=credential.org,
            action="credential.tested",
            target=credential,
            target_type="provider_credential",
            diff={"ok": {"after": result.ok}, "status": {"after": result.status}, "message": {"after": result.message}},
        )
    return credential

import uuid

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q
from django.utils import timezone


class CallerKeyQuerySet(models.QuerySet):
    def active(self):
        now = timezone.now()
        return self.filter(revoked_at=None).filter(Q(expires_at=None) | Q(expires_at__gt=now))

    def with_status(self, status: str):
        now = timezone.now()
        if status == "active":
            return self.active()
        if status == "revoked":
            return self.exclude(revoked_at=None)
        if status == "expired":
            return self.filter(revoked_at=None, expires_at__lte=now)
        return self


class CallerKey(models.Model):
    """A key developers put in their OpenAI SDK. Only its SHA-256 and a display prefix are kept."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey("orgs.Organization", on_delete=models.CASCADE, related_name="caller_keys")
    # Deleting a team is refused while it has active keys (orgs.services.delete_team).
    team = models.ForeignKey("orgs.Team", on_delete=models.CASCADE, related_name="caller_keys")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="caller_keys"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, db_index=True)
    digest = models.CharField(max_length=64, unique=True)
    # Empty means "whatever the team allows".
    allowed_models = ArrayField(models.CharField(max_length=100), default=list, blank=True)
    rpm_limit = models.PositiveIntegerField(null=True, blank=True)
    tpm_limit = models.PositiveIntegerField(null=True, blank=True)
    tags = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    rotated_from = models.OneToOneField(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="successor"
    )

    objects = CallerKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["org", "-created_at"], name="callerkey_org_newest"),
            models.Index(fields=["org", "team"], name="callerkey_org_team"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def status(self) -> str:
        if self.revoked_at:
            return "revoked"
        if self.expires_at and self.expires_at <= timezone.now():
            return "expired"
        return "active"


class Provider(models.TextChoices):
    OPENAI = "openai", "OpenAI"
    ANTHROPIC = "anthropic", "Anthropic"
    AZURE_OPENAI = "azure_openai", "Azure OpenAI"
    OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible"
    GEMINI = "gemini", "Gemini API"
    VERTEX_AI = "vertex_ai", "Vertex AI"
    BEDROCK = "bedrock", "AWS Bedrock"


class ProviderCredential(models.Model):
    """Bring-your-own provider credentials, sealed with envelope encryption (keys/crypto.py)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey("orgs.Organization", on_delete=models.CASCADE, related_name="provider_credentials")
    name = models.CharField(max_length=100)
    provider = models.CharField(max_length=32, choices=Provider.choices)
    base_url = models.URLField(max_length=500, blank=True)
    azure_endpoint = models.URLField(max_length=500, blank=True)
    azure_api_version = models.CharField(max_length=32, blank=True)
    # Google and AWS: where the credential is used, and (AWS) which key signs. None is secret.
    region = models.CharField(max_length=32, blank=True, default="")  # Vertex AI location or AWS region
    project = models.CharField(max_length=30, blank=True, default="")  # Vertex AI project id
    access_key_id = models.CharField(max_length=20, blank=True, default="")  # AWS; names the key, not secret
    role_arn = models.CharField(max_length=2048, blank=True, default="")  # AWS role the key assumes, if any
    # Empty means every team of the org may use it.
    teams = models.ManyToManyField("orgs.Team", blank=True, related_name="provider_credentials")
    wrapped_data_key = models.BinaryField()
    kek_version = models.PositiveIntegerField()
    sealed_secrets = models.JSONField(default=dict)  # field name -> base64 sealed value
    secret_hints = models.JSONField(default=dict)  # field name -> {"last4": ..., "fingerprint": ...}
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    last_tested_at = models.DateTimeField(null=True, blank=True)
    last_test_ok = models.BooleanField(null=True)
    last_test_message = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["org", "name"], name="credential_name_unique_in_org")]
        indexes = [models.Index(fields=["kek_version"], name="credential_kek_version")]

    def __str__(self) -> str:
        return self.name


class KeyRingCheck(models.Model):
    """A known value sealed under each key-ring version, opened at start-up to fail closed
    when the configured key is not the one the database was written with."""

    version = models.PositiveIntegerField(primary_key=True)
    sealed = models.BinaryField()
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"key-ring version {self.version}"

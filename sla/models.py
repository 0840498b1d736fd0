import uuid
from decimal import Decimal

from django.contrib.postgres.fields import ArrayField
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone


def default_retry_on() -> list[str]:
    return ["timeout", "429", "5xx"]


class Deployment(models.Model):
    """A provider credential plus the upstream model name and its prices."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey("orgs.Organization", on_delete=models.CASCADE, related_name="deployments")
    name = models.CharField(max_length=100)
    credential = models.ForeignKey("keys.ProviderCredential", on_delete=models.PROTECT, related_name="deployments")
    upstream_model = models.CharField(max_length=200)
    # USD per one million tokens.
    input_price_per_mtok = models.DecimalField(
        max_digits=12, decimal_places=6, default=Decimal(0), validators=[MinValueValidator(Decimal(0))]
    )
    output_price_per_mtok = models.DecimalField(
        max_digits=12, decimal_places=6, default=Decimal(0), validators=[MinValueValidator(Decimal(0))]
    )
    # The most output tokens one answer can have: the worst case a budget reserves when a
    # request sets no max_tokens.
    max_output_tokens = models.PositiveIntegerField(default=16_384)
    region = models.CharField(max_length=32, default="global")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["org", "name"], name="deployment_name_unique_in_org")]

    def __str__(self) -> str:
        return self.name


class ModelRoute(models.Model):
    """A model alias callers use, served by deployments in priority order."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey("orgs.Organization", on_delete=models.CASCADE, related_name="model_routes")
    alias = models.CharField(max_length=100)
    description = models.CharField(max_length=300, blank=True)
    deployments = models.ManyToManyField(Deployment, through="RouteTarget", related_name="routes")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["alias"]
        constraints = [models.UniqueConstraint(fields=["org", "alias"], name="route_alias_unique_in_org")]

    def __str__(self) -> str:
        return self.alias


class RouteTarget(models.Model):
    route = models.ForeignKey(ModelRoute, on_delete=models.CASCADE, related_name="targets")
    deployment = models.ForeignKey(Deployment, on_delete=models.PROTECT, related_name="targets")
    priority = models.PositiveSmallIntegerField()
    weight = models.PositiveSmallIntegerField(default=1)  # for the weighted strategy

    class Meta:
        ordering = ["priority"]
        constraints = [
            models.UniqueConstraint(fields=["route", "deployment"], name="route_target_once"),
            models.UniqueConstraint(fields=["route", "priority"], name="route_target_priority_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.route_id} #{self.priority}"


REGIONS = [
    ("us-east", "US East"),
    ("us-west", "US West"),
    ("eu-west", "EU West"),
    ("eu-central", "EU Central"),
    ("ap-southeast", "Asia Pacific Southeast"),
    ("ap-northeast", "Asia Pacific Northeast"),
    ("global", "Global / unspecified"),
]


class SlaPolicy(models.Model):
    """What the gateway does when providers slow down or fail, and the targets it is held to.
    The org's default policy has no team; a team's policy overrides it for the team's keys."""

    class Strategy(models.TextChoices):
        PRIORITY = "priority", "Priority fallback"
        WEIGHTED = "weighted", "Weighted"
        LATENCY = "latency", "Lowest observed latency"
        COST = "cost", "Lowest cost"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey("orgs.Organization", on_delete=models.CASCADE, related_name="sla_policies")
    team = models.OneToOneField("orgs.Team", on_delete=models.CASCADE, null=True, blank=True, related_name="sla_policy")
    name = models.CharField(max_length=100)
    strategy = models.CharField(max_length=10, choices=Strategy.choices, default=Strategy.PRIORITY)
    # alias -> strategy, for routes that should not follow the policy's default strategy
    route_strategies = models.JSONField(default=dict, blank=True)
    connect_timeout_ms = models.PositiveIntegerField(default=5_000)
    first_token_timeout_ms = models.PositiveIntegerField(default=30_000)
    total_timeout_ms = models.PositiveIntegerField(default=120_000)
    max_retries = models.PositiveSmallIntegerField(default=2)
    retry_on = ArrayField(models.CharField(max_length=8), default=default_retry_on, blank=True)
    backoff_base_ms = models.PositiveIntegerField(default=100)
    backoff_max_ms = models.PositiveIntegerField(default=2_000)
    breaker_failure_rate = models.PositiveSmallIntegerField(default=50)  # percent
    breaker_window_seconds = models.PositiveIntegerField(default=60)
    breaker_min_requests = models.PositiveSmallIntegerField(default=10)
    breaker_cooldown_seconds = models.PositiveIntegerField(default=30)
    allowed_providers = ArrayField(models.CharField(max_length=32), default=list, blank=True)
    allowed_regions = ArrayField(models.CharField(max_length=32), default=list, blank=True)
    slo_availability = models.DecimalField(max_digits=6, decimal_places=3, default=Decimal("99.900"))
    slo_p95_latency_ms = models.PositiveIntegerField(default=10_000)
    slo_p95_ttft_ms = models.PositiveIntegerField(default=2_000)
    slo_window_days = models.PositiveSmallIntegerField(default=30)
    alert_emails = ArrayField(models.EmailField(), default=list, blank=True)
    alert_webhooks = ArrayField(models.URLField(max_length=500), default=list, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["org"], condition=models.Q(team__isnull=True), name="one_default_policy_per_org"
            )
        ]

    def __str__(self) -> str:
        return self.name

import uuid
from decimal import Decimal

from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone


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

    class Meta:
        ordering = ["priority"]
        constraints = [
            models.UniqueConstraint(fields=["route", "deployment"], name="route_target_once"),
            models.UniqueConstraint(fields=["route", "priority"], name="route_target_priority_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.route_id} #{self.priority}"

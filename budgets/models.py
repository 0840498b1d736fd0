import uuid

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.utils import timezone


def default_thresholds() -> list[int]:
    return [50, 80, 100]


class UsageRecord(models.Model):
    """One gateway request, ingested from the usage stream. The request id, which the gateway
    gives every request itself, makes ingestion idempotent: a redelivered event inserts nothing.
    The caller's own X-Request-Id, which callers may reuse, is kept beside it."""

    request_id = models.CharField(max_length=64, primary_key=True)
    client_request_id = models.CharField(max_length=64, blank=True, default="")
    org = models.ForeignKey("orgs.Organization", on_delete=models.CASCADE, related_name="+")
    team_id = models.UUIDField()
    key_id = models.UUIDField()
    alias = models.CharField(max_length=200)
    deployment_id = models.UUIDField(null=True, blank=True)
    endpoint = models.CharField(max_length=32)
    input_tokens = models.PositiveIntegerField()
    output_tokens = models.PositiveIntegerField()
    cost = models.DecimalField(max_digits=18, decimal_places=6)  # USD
    latency_ms = models.FloatField()
    ttft_ms = models.FloatField()
    status = models.PositiveSmallIntegerField()
    error_code = models.CharField(max_length=64, blank=True)
    stream = models.BooleanField(default=False)
    node_id = models.CharField(max_length=128, blank=True)
    # Every upstream attempt: [{"deployment_id", "provider", "status", "error_code", "latency_ms"}],
    # those after the first with "reason" ("retry" or "fallback") and "after" (the previous
    # attempt's failure: "timeout", "429" or "5xx"); gateway/usage.py UsageEvent. Rows from
    # before issue 15 have no provider, reason or after.
    attempts = models.JSONField(default=list, blank=True)
    occurred_at = models.DateTimeField()
    client_ip = models.GenericIPAddressField(null=True, blank=True)  # null: unknown, or not an address
    # db_default too: an ingestion process older than this column still inserts rows.
    user_agent = models.CharField(max_length=200, blank=True, default="", db_default="")

    class Meta:
        indexes = [
            models.Index(fields=["org", "-occurred_at"], name="usage_org_newest"),
            models.Index(fields=["key_id", "-occurred_at"], name="usage_key_newest"),
            # The request log's filters (requestlog/), each newest first within the org.
            models.Index(fields=["org", "team_id", "-occurred_at"], name="usage_org_team_newest"),
            models.Index(fields=["org", "alias", "-occurred_at"], name="usage_org_alias_newest"),
            models.Index(fields=["org", "status", "-occurred_at"], name="usage_org_status_newest"),
            models.Index(fields=["org", "deployment_id", "-occurred_at"], name="usage_org_deployment_newest"),
            models.Index(  # errors are rare: only their rows, so an error-code filter never scans the window
                fields=["org", "error_code", "-occurred_at"],
                name="usage_org_error_newest",
                condition=~models.Q(error_code=""),
            ),
            models.Index(
                fields=["org", "client_request_id"],
                name="usage_org_client_request_id",
                condition=~models.Q(client_request_id=""),
            ),
        ]

    def __str__(self) -> str:
        return self.request_id


class UsageHourly(models.Model):
    """Hourly rollup per org, team, key, alias and deployment, kept in step with the ledger."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey("orgs.Organization", on_delete=models.CASCADE, related_name="+")
    hour = models.DateTimeField()
    team_id = models.UUIDField()
    key_id = models.UUIDField()
    alias = models.CharField(max_length=200)
    deployment_id = models.UUIDField(null=True, blank=True)
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost = models.DecimalField(max_digits=18, decimal_places=6, default=0)
    latency_ms_sum = models.FloatField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["org", "hour", "team_id", "key_id", "alias", "deployment_id"],
                name="usage_hourly_one_row",
                nulls_distinct=False,
            )
        ]
        indexes = [models.Index(fields=["org", "hour"], name="usage_hourly_org_hour")]

    def __str__(self) -> str:
        return f"{self.org_id} {self.hour:%Y-%m-%d %H}:00"


class Budget(models.Model):
    """A spend cap (hard) or watch (soft) on an org, a team or a key, per calendar period in UTC."""

    class Scope(models.TextChoices):
        ORG = "org", "Organization"
        TEAM = "team", "Team"
        KEY = "key", "Caller key"

    class Period(models.TextChoices):
        DAILY = "daily", "Daily"
        WEEKLY = "weekly", "Weekly (Monday to Sunday)"
        MONTHLY = "monthly", "Monthly"
        TOTAL = "total", "Total (never resets)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey("orgs.Organization", on_delete=models.CASCADE, related_name="budgets")
    name = models.CharField(max_length=100)
    scope = models.CharField(max_length=8, choices=Scope.choices)
    team = models.ForeignKey("orgs.Team", on_delete=models.CASCADE, null=True, blank=True, related_name="budgets")
    key = models.ForeignKey("keys.CallerKey", on_delete=models.CASCADE, null=True, blank=True, related_name="budgets")
    amount = models.DecimalField(max_digits=14, decimal_places=2)  # USD
    period = models.CharField(max_length=8, choices=Period.choices)
    hard = models.BooleanField(default=True, help_text="Refuse requests that would cross it (else alert only).")
    thresholds = ArrayField(models.PositiveSmallIntegerField(), default=default_thresholds)
    emails = ArrayField(models.EmailField(), default=list, blank=True)
    webhooks = ArrayField(models.URLField(max_length=500), default=list, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(scope="org", team__isnull=True, key__isnull=True)
                    | models.Q(scope="team", team__isnull=False, key__isnull=True)
                    | models.Q(scope="key", team__isnull=True, key__isnull=False)
                ),
                name="budget_scope_matches_target",
            ),
            models.CheckConstraint(condition=models.Q(amount__gt=0), name="budget_amount_positive"),
        ]

    def __str__(self) -> str:
        return self.name


class Price(models.Model):
    """A deployment's price from a date on. Past spend keeps the price it was charged at."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey("orgs.Organization", on_delete=models.CASCADE, related_name="prices")
    deployment = models.ForeignKey("sla.Deployment", on_delete=models.CASCADE, related_name="prices")
    input_per_mtok = models.DecimalField(max_digits=12, decimal_places=6)
    output_per_mtok = models.DecimalField(max_digits=12, decimal_places=6)
    cached_input_per_mtok = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    effective_from = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["deployment_id", "-effective_from"]
        constraints = [models.UniqueConstraint(fields=["deployment", "effective_from"], name="price_once_per_moment")]

    def __str__(self) -> str:
        return f"{self.deployment_id} from {self.effective_from:%Y-%m-%d}"


class BudgetAlert(models.Model):
    """A threshold crossed in one period: recorded once (the unique constraint), then delivered."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="alerts")
    period_start = models.DateTimeField()
    threshold = models.PositiveSmallIntegerField()
    spend = models.DecimalField(max_digits=18, decimal_places=6)
    fired_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-fired_at"]
        constraints = [
            models.UniqueConstraint(fields=["budget", "period_start", "threshold"], name="alert_once_per_period")
        ]

    def __str__(self) -> str:
        return f"{self.budget_id} {self.threshold}%"


class AlertDelivery(models.Model):
    """One attempt to deliver an alert by email or webhook, for the budget page's log."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    alert = models.ForeignKey(BudgetAlert, on_delete=models.CASCADE, related_name="deliveries")
    channel = models.CharField(max_length=8)  # email, webhook
    target = models.CharField(max_length=500)
    attempt = models.PositiveSmallIntegerField(default=1)
    ok = models.BooleanField(default=False)
    detail = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.channel} to {self.target}"

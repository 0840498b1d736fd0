import uuid

from django.db import models


class UsageRecord(models.Model):
    """One gateway request, ingested from the usage stream. The request id makes ingestion
    idempotent: a redelivered event inserts nothing."""

    request_id = models.CharField(max_length=64, primary_key=True)
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
    occurred_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["org", "-occurred_at"], name="usage_org_newest"),
            models.Index(fields=["key_id", "-occurred_at"], name="usage_key_newest"),
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

from django.db import models
from django.utils import timezone


class PendingConfigChange(models.Model):
    """An entity the gateway uses changed; the next publish compiles its current state.

    Written by service functions in their own transaction, so a change and the promise to
    publish it commit together. The publisher claims rows with DELETE ... RETURNING in the
    transaction that creates the revision, so each change lands in exactly one revision."""

    entity_type = models.CharField(max_length=16)
    entity_id = models.CharField(max_length=64)
    cause = models.BigIntegerField(null=True, blank=True)  # the audit event's id
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.entity_type} {self.entity_id}"


class ConfigRevision(models.Model):
    """One published config revision, numbered by a PostgreSQL sequence (the primary key)."""

    class Kind(models.TextChoices):
        DELTA = "delta", "Delta"
        FULL = "full", "Full snapshot"

    number = models.BigAutoField(primary_key=True)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    sha256 = models.CharField(max_length=64)
    size = models.PositiveIntegerField()
    cause = models.ForeignKey(
        "audit.AuditEvent", null=True, blank=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    summary = models.CharField(max_length=300, blank=True)
    # The signed envelope exactly as Redis holds it, so Redis can be rebuilt from here.
    envelope = models.BinaryField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-number"]

    def __str__(self) -> str:
        return f"revision {self.number} ({self.kind})"


class ConfigSnapshot(models.Model):
    """A signed full snapshot of what revision `number` holds, written by compaction.

    Compaction adds no revision: a worker already running `number` has nothing to load, while
    a worker starting (or Redis being rebuilt) begins here instead of replaying every delta."""

    number = models.BigIntegerField(primary_key=True)  # the ConfigRevision whose content this is
    sha256 = models.CharField(max_length=64)
    size = models.PositiveIntegerField()
    envelope = models.BinaryField()
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"snapshot of revision {self.number}"

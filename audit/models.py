import uuid

from django.db import models
from django.utils import timezone

GENESIS_HASH = "0" * 64


class AuditEvent(models.Model):
    """One state change. Append-only (a database trigger refuses UPDATE and DELETE) and
    hash-chained per org: `hash` covers the event's canonical encoding and `prev_hash`."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    # No database-level foreign key: events outlive what they point at, and must never be
    # touched by a cascade. A null org is the platform chain (e.g. failed sign-ins of unknown emails).
    org = models.ForeignKey(
        "orgs.Organization", null=True, blank=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    sequence = models.BigIntegerField()
    action = models.CharField(max_length=64)
    actor_type = models.CharField(max_length=16)  # user, token, system
    actor_id = models.CharField(max_length=64, blank=True)
    actor_label = models.CharField(max_length=254, blank=True)
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    target_label = models.CharField(max_length=254, blank=True)
    diff = models.JSONField(default=dict, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["org", "sequence"], name="audit_sequence_unique_per_org"),
            models.UniqueConstraint(
                fields=["sequence"], condition=models.Q(org__isnull=True), name="audit_sequence_unique_platform"
            ),
        ]
        indexes = [
            models.Index(fields=["org", "-sequence"], name="audit_org_newest"),
            models.Index(fields=["org", "action"], name="audit_org_action"),
        ]
        ordering = ["-sequence"]

    def __str__(self) -> str:
        return f"#{self.sequence} {self.action}"


class AuditChainHead(models.Model):
    """The newest sequence and hash of one chain, locked while an event is appended."""

    chain = models.CharField(max_length=64, primary_key=True)  # org id, or "platform"
    sequence = models.BigIntegerField(default=0)
    hash = models.CharField(max_length=64, default=GENESIS_HASH)

    def __str__(self) -> str:
        return f"{self.chain} at {self.sequence}"

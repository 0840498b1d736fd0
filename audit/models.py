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
            # Search filters that match rarely must not scan the whole trail.
            models.Index(fields=["org", "target_type", "target_id", "-sequence"], name="audit_org_target"),
            models.Index(fields=["org", "actor_id", "-sequence"], name="audit_org_actor"),
            models.Index(fields=["org", "created_at"], name="audit_org_created"),
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


class AuditCheckpoint(models.Model):
    """A signed statement that an org's chain reached (sequence, hash) at a time. A `purge`
    checkpoint also records the events removed under retention: up to and including `sequence`
    (`hash` is the last removed event's), `purged_count` of them, so verification can start after.

    A periodic checkpoint also holds the first 16 bytes of the hash of every event it covers,
    `first_sequence` through `sequence`, under a signature of their own (`hashes_signature`), so
    verification can name the event that was rewritten (audit/integrity.py explains)."""

    PERIODIC, PURGE = "periodic", "purge"
    KINDS = [(PERIODIC, "Periodic"), (PURGE, "Purge")]

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    org = models.ForeignKey("orgs.Organization", on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")
    sequence = models.BigIntegerField()
    hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=16, choices=KINDS)
    purged_through_sequence = models.BigIntegerField(null=True, blank=True)
    purged_count = models.BigIntegerField(default=0)
    signature = models.CharField(max_length=128)  # base64 Ed25519 over audit.integrity.checkpoint_payload
    first_sequence = models.BigIntegerField(null=True, blank=True)
    event_hashes = models.BinaryField(default=b"", blank=True)
    hashes_signature = models.CharField(max_length=128, blank=True)  # over audit.integrity.hashes_payload

    class Meta:
        indexes = [models.Index(fields=["org", "-sequence"], name="audit_checkpoint_org_newest")]
        ordering = ["-sequence", "-created_at"]

    def __str__(self) -> str:
        return f"{self.kind} checkpoint at #{self.sequence}"


class AuditExport(models.Model):
    """An export of one org's audit trail run as a Celery job, written to a file under
    var/exports/. The job holds it by `run_id`, so a second delivery of the task does nothing."""

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting"
        RUNNING = "running", "Running"
        DONE = "done", "Ready"
        FAILED = "failed", "Failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey("orgs.Organization", on_delete=models.CASCADE, related_name="+")
    requested_by = models.ForeignKey("orgs.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    requested_by_label = models.CharField(max_length=254, blank=True)
    format = models.CharField(max_length=8)
    filters = models.JSONField(default=dict, blank=True)
    # The export covers events up to this sequence: those before its own audit event.
    through_sequence = models.BigIntegerField(default=0)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    rows_done = models.BigIntegerField(default=0)
    rows_total = models.BigIntegerField(default=0)
    run_id = models.UUIDField(null=True, blank=True)
    file_path = models.CharField(max_length=255, blank=True)  # relative to the exports directory
    sha256 = models.CharField(max_length=64, blank=True)
    size = models.BigIntegerField(default=0)
    error = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["org", "-created_at"], name="audit_export_org_newest")]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.format} export {self.id}"

    @property
    def percent_done(self) -> int:
        if self.status == self.Status.DONE:
            return 100
        return min(100, self.rows_done * 100 // self.rows_total) if self.rows_total else 0

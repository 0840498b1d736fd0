"""Content capture: an org's keys, and the captured prompts and answers.

The settings live on the org and its teams (orgs.models: capture_enabled, capture_max_bytes,
capture_retention_days, capture_redact_patterns, Team.capture), since the gateway config is
compiled from those models (fleet/compile.py).
"""

from django.db import models


class CaptureKeys(models.Model):
    """An org's capture keys, made when it first turns capture on.

    Gateways seal content to `public_key` (X25519, gateway/capture.py); its private half opens
    it on the control plane. Stored content is sealed under the org's `data key` (AES-256-GCM).
    Both secrets are wrapped by the key ring (keys/crypto.py) under `kek_version`."""

    org = models.OneToOneField("orgs.Organization", on_delete=models.CASCADE, primary_key=True, related_name="+")
    public_key = models.BinaryField()
    wrapped_private_key = models.BinaryField()
    wrapped_data_key = models.BinaryField()
    kek_version = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"capture keys of {self.org_id}"


class CapturedContent(models.Model):
    """One request's prompt and answer, redacted and sealed. The table is partitioned by day
    of `occurred_at` (migration 0001, capture/partitions.py), so retention drops whole days:
    Django does not manage it. The primary key is (request_id, occurred_at), as PostgreSQL
    asks of a partitioned table; the gateway's request id alone is unique in practice."""

    request_id = models.CharField(max_length=64, primary_key=True)
    # No foreign key in the database (migration 0001): a deleted org's rows are unreadable at once
    # (its keys go with it) and removed with their days.
    org = models.ForeignKey("orgs.Organization", on_delete=models.DO_NOTHING, related_name="+", db_constraint=False)
    occurred_at = models.DateTimeField()
    sealed = models.BinaryField()  # nonce | AES-256-GCM of gateway/capture.py's plaintext layout
    prompt_bytes = models.PositiveIntegerField()  # as stored, after redaction and the cut
    answer_bytes = models.PositiveIntegerField()
    prompt_cut = models.BooleanField()
    answer_cut = models.BooleanField()
    redactions = models.PositiveIntegerField()  # how many matches were replaced

    class Meta:
        managed = False
        db_table = "capture_capturedcontent"

    def __str__(self) -> str:
        return self.request_id

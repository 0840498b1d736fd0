"""Signing checkpoints and purging expired events, run by Celery beat (and a checkpoint also on
an org's every GATEHOUSE_AUDIT_CHECKPOINT_EVERY_EVENTS-th event). All are harmless when they run
twice: an unmoved chain gets no new checkpoint, and a purged range is not purged again."""

from celery import shared_task
from django.db import InterfaceError, OperationalError

from . import integrity

DATABASE_ERRORS = (OperationalError, InterfaceError)


@shared_task(
    name="audit.sign_checkpoints",
    ignore_result=True,
    autoretry_for=DATABASE_ERRORS,
    retry_backoff=True,
    retry_backoff_max=300,
    max_retries=5,
)
def sign_checkpoints() -> None:
    """Sign each org's chain head that moved since its last checkpoint."""
    integrity.sign_all_checkpoints()


@shared_task(
    name="audit.sign_org_checkpoint",
    ignore_result=True,
    autoretry_for=DATABASE_ERRORS,
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=5,
)
def sign_org_checkpoint(org_id: str) -> None:
    """Sign one org's chain head now: recording its every Nth event asks for this."""
    integrity.sign_org_checkpoint(org_id)


@shared_task(
    name="audit.purge_expired",
    ignore_result=True,
    autoretry_for=DATABASE_ERRORS,
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=5,
)
def purge_expired() -> None:
    """Remove every org's events older than its retention, each after a signed purge checkpoint."""
    integrity.purge_all_expired()

"""The retention purge of captured content, run by Celery beat; harmless when run twice."""

from celery import shared_task
from django.db import InterfaceError, OperationalError

from . import services

DATABASE_ERRORS = (OperationalError, InterfaceError)


@shared_task(
    name="capture.purge_expired",
    ignore_result=True,
    autoretry_for=DATABASE_ERRORS,
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=5,
)
def purge_expired() -> None:
    """Drop captured content past its org's retention (capture/services.py purge_expired)."""
    services.purge_expired()

import redis
from celery import shared_task
from django.db import OperationalError

from . import services

TRANSIENT = (redis.ConnectionError, redis.TimeoutError, OperationalError)


@shared_task(
    name="fleet.publish_config",
    ignore_result=True,
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    retry_backoff_max=30,
    max_retries=20,
)
def publish_config() -> None:
    """Publish every pending config change as one revision (bursts coalesce)."""
    services.publish_pending()


@shared_task(
    name="fleet.compact_config", ignore_result=True, autoretry_for=TRANSIENT, retry_backoff=True, max_retries=5
)
def compact_config() -> None:
    """Periodic: a snapshot of the newest revision when deltas followed the last one, or the
    same one re-signed when it is GATEHOUSE_SNAPSHOT_REFRESH_SECONDS old, so starting workers
    find a fresh one (workers holding it load nothing); also re-syncs Redis and forgets
    workers silent for a day."""
    services.compact()
    services.forget_silent_nodes()

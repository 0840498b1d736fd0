"""Gauges of the pipeline behind the gateway, read when /metrics is scraped.

Celery queue lengths, how far config publishing and usage ingestion are behind, and dead
letters: a few Redis reads (two round trips) and publish_state()'s PostgreSQL queries, so a
scrape costs the same whatever the traffic. Nothing is kept between scrapes, so every gunicorn
worker answers the same. A dependency that cannot be read is reported as
`gatehouse_dependency_up{name=...} 0` and the gauges that need it are left out; the scrape
itself still succeeds.

Ingestion lag: Redis 6.2 (the embedded one) has no `lag` in XINFO GROUPS, so the lag is given
as time: the age of the oldest usage event not yet acknowledged by ingestion, either delivered
and pending (XPENDING) or not delivered yet (the first entry after the group's last delivered
id). Entry ids are the time Redis received the event, in milliseconds. Where Redis (7+) reports
the number of undelivered entries, it is exported too.
"""

import logging
import time
from collections.abc import Iterator
from typing import Any

import redis
from django.conf import settings
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from budgets import dead_letters
from budgets.ingestion import GROUP
from fleet.redis_client import redis_keys
from fleet.selectors import publish_state
from gateway.redis_url import sync_client

log = logging.getLogger("controlplane.metrics")
# kombu's Redis transport keeps a queue's messages of priority 3, 6 and 9 in lists of their own.
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
UNACKED_KEY = "unacked"  # kombu: messages a worker took and has not acknowledged (acks_late)
_failing: set[str] = set()  # dependencies whose failure was logged: once per outage, per process


def queue_names() -> list[str]:
    # GATEHOUSE_PUBLISH_QUEUE: config publishing's own queue; "publish" is its production name.
    names = [settings.CELERY_TASK_DEFAULT_QUEUE, getattr(settings, "GATEHOUSE_PUBLISH_QUEUE", "publish")]
    return list(dict.fromkeys(names))


def _entry_seconds(entry_id: bytes | str | None) -> float | None:
    try:
        text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        return int(str(text).split("-", 1)[0]) / 1000
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None


def _noted(name: str, error: Exception | None) -> bool:
    """Log a dependency's failure when it starts and its recovery when it ends; True when up."""
    if error is None:
        if name in _failing:
            _failing.discard(name)
            log.info("metrics: %s answers again", name)
        return True
    if name not in _failing:
        _failing.add(name)
        log.warning("metrics: %s cannot be read, its gauges are left out: %s", name, error)
    return False


class PipelineCollector:
    """A prometheus_client collector: every family on every scrape, samples for what answered."""

    def describe(self) -> list[Metric]:
        return []  # computed at scrape time; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("gatehouse_dependency_up", "1 when /metrics could read it, else 0", labels=["name"])
        redis_families, redis_error = self._from_redis()
        database_families, database_error = self._from_database()
        up.add_metric(["redis"], 1 if _noted("redis", redis_error) else 0)
        up.add_metric(["postgresql"], 1 if _noted("postgresql", database_error) else 0)
        yield up
        yield from redis_families
        yield from database_families

    def _from_redis(self) -> tuple[list[Metric], Exception | None]:
        queues = GaugeMetricFamily("gatehouse_celery_queue_length", "Tasks waiting in a Celery queue", labels=["queue"])
        unacked = GaugeMetricFamily("gatehouse_celery_unacked", "Tasks a Celery worker took and has not finished")
        stream = GaugeMetricFamily("gatehouse_usage_stream_length", "Entries in the usage stream (stored ones too)")
        pending = GaugeMetricFamily("gatehouse_usage_pending", "Usage events delivered to ingestion, not yet stored")
        undelivered = GaugeMetricFamily(
            "gatehouse_usage_undelivered", "Usage events ingestion has not read yet (only where Redis reports it)"
        )
        lag = GaugeMetricFamily("gatehouse_usage_lag_seconds", "Age of the oldest usage event not yet stored")
        waiting = GaugeMetricFamily("gatehouse_dead_letters", "Usage events set aside and not replayed or purged")
        set_aside = CounterMetricFamily("gatehouse_dead_letters_set_aside", "Usage events ever set aside")
        families: list[Metric] = [queues, unacked, stream, pending, undelivered, lag, waiting, set_aside]
        # The queues are in the broker's Redis, the usage stream in the gateway data's (the same
        # server unless GATEHOUSE_BROKER_URL is set).
        broker = sync_client(settings.GATEHOUSE_BROKER_REDIS_URL, timeout=1, connect_timeout=1)
        client = sync_client(settings.REDIS_URL, timeout=1, connect_timeout=1)
        usage = redis_keys().usage_stream
        try:
            pipe = broker.pipeline(transaction=False)
            names = queue_names()
            for name in names:
                for suffix in PRIORITY_SUFFIXES:
                    pipe.llen(name + suffix)
            pipe.hlen(UNACKED_KEY)
            lengths = pipe.execute()
            pipe = client.pipeline(transaction=False)
            pipe.xlen(usage)
            pipe.xlen(dead_letters.stream_name())
            pipe.get(dead_letters.counter_name())
            pipe.xinfo_groups(usage)
            answers = pipe.execute(raise_on_error=False)
            failed = [a for a in answers[:-1] if isinstance(a, Exception)]
            if failed:
                raise failed[0]
            # Both answered ("redis" is both in gatehouse_dependency_up): the gauges get samples.
            for index, name in enumerate(names):
                queues.add_metric([name], sum(lengths[index * 4 : index * 4 + 4]))
            unacked.add_metric([], lengths[-1])
            stream_length, dead_count, dead_total, groups = answers
            stream.add_metric([], stream_length)
            waiting.add_metric([], dead_count)
            set_aside.add_metric([], int(dead_total or 0))
            ours = [g for g in groups if g.get("name") == GROUP.encode()] if isinstance(groups, list) else []
            self._ingestion(client, usage, ours[0] if ours else None, pending, undelivered, lag)
        except redis.RedisError as error:
            return families, error
        finally:
            client.close()
            broker.close()
        return families, None

    @staticmethod
    def _ingestion(
        client: redis.Redis,
        usage: str,
        group: dict[str, Any] | None,
        pending: GaugeMetricFamily,
        undelivered: GaugeMetricFamily,
        lag: GaugeMetricFamily,
    ) -> None:
        """Pending count and lag of the ingestion group (a group not created yet has read nothing)."""
        pipe = client.pipeline(transaction=False)
        last_delivered = (group or {}).get("last-delivered-id") or b"0-0"
        if group is not None:
            pipe.xpending(usage, GROUP)
        pipe.xrange(usage, min=b"(" + last_delivered, count=1)
        answers = pipe.execute()
        summary: dict[str, Any] = answers[0] if group is not None else {"pending": 0, "min": None}
        first_undelivered = answers[-1]
        pending.add_metric([], summary.get("pending") or 0)
        if group is not None and isinstance(group.get("lag"), int):
            undelivered.add_metric([], group["lag"])
        oldest_pending = _entry_seconds(summary.get("min"))
        oldest_unread = _entry_seconds(first_undelivered[0][0]) if first_undelivered else None
        known = [moment for moment in (oldest_pending, oldest_unread) if moment is not None]
        lag.add_metric([], max(0.0, time.time() - min(known)) if known else 0.0)

    def _from_database(self) -> tuple[list[Metric], Exception | None]:
        pending = GaugeMetricFamily("gatehouse_config_pending_changes", "Committed config changes no revision holds")
        age = GaugeMetricFamily(
            "gatehouse_config_unpublished_seconds", "Age of the oldest committed config change not yet in Redis"
        )
        newest = GaugeMetricFamily("gatehouse_config_newest_revision", "Newest config revision in PostgreSQL")
        published = GaugeMetricFamily("gatehouse_config_published_revision", "Newest config revision in Redis")
        families: list[Metric] = [pending, age, newest, published]
        try:
            state = publish_state()
        except Exception as error:  # any database failure: reported as a gauge, never a 500
            return families, error
        pending.add_metric([], state.pending_changes)
        age.add_metric([], state.age_seconds())
        if state.newest_revision is not None:
            newest.add_metric([], state.newest_revision)
        if state.redis_revision is not None:
            published.add_metric([], state.redis_revision)
        return families, None

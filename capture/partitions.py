"""The daily partitions of capture_capturedcontent.

A day's partition is made when content for that day first arrives (ingestion) or ahead of
time by the purge task; retention drops whole days (purge.py)."""

from datetime import UTC, date, datetime, timedelta

from django.db import connection

TABLE = "capture_capturedcontent"
_made: set[date] = set()  # days this process has seen made


def name(day: date) -> str:
    return f"{TABLE}_{day:%Y%m%d}"


def day_of(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def ensure(days: set[date]) -> None:
    """Make the partitions of `days` that do not exist yet, inside the caller's transaction.
    An advisory lock serialises the makers, so two ingestion processes never race on one."""
    missing = sorted(days - _made)
    if not missing:
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [TABLE])
        for day in missing:
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {name(day)} PARTITION OF {TABLE} FOR VALUES FROM (%s) TO (%s)",
                [start, start + timedelta(days=1)],
            )
    # Only once committed is a partition certain to exist for the next transaction.
    connection.on_commit(lambda: _made.update(missing))


def existing() -> list[date]:
    """The days that have a partition, oldest first."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT child.relname FROM pg_inherits
            JOIN pg_class parent ON parent.oid = pg_inherits.inhparent
            JOIN pg_class child ON child.oid = pg_inherits.inhrelid
            WHERE parent.relname = %s
            """,
            [TABLE],
        )
        names = [row[0] for row in cursor.fetchall()]
    days = []
    for relname in names:
        try:
            days.append(datetime.strptime(relname.removeprefix(f"{TABLE}_") + "+0000", "%Y%m%d%z").date())
        except ValueError:
            continue
    return sorted(days)


def drop(day: date) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {name(day)}")
    _made.discard(day)

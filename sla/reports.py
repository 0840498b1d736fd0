"""Measured SLOs, read from the usage ledger (UsageRecord), and the model leaderboard.

Definitions, the same on every page, in the API and in the burn-rate alerts:
- A request *failed* when its status to the client is 5xx (`status >= 500`): the platform or
  every provider behind it let the caller down. 4xx answers (bad input, a refused key, a budget
  cap, the caller's own rate limit) are the caller's and do not spend the error budget.
- availability = requests that did not fail / requests.
- The error budget is the failed share the SLO allows, 1 - SLO availability. Budget remaining =
  1 - failed share / allowed share (negative once overspent); burn rate = failed share / allowed
  share (1 spends the budget exactly over the SLO window).
- Percentiles are PostgreSQL's percentile_cont (linear interpolation), in milliseconds.
- A breach is availability below the target, or p95 latency or p95 time to first token above it.
- Which policy holds a request: its team's policy if the team has one, else the org default,
  else none.
- Deployment figures come from every upstream attempt (`attempts`), so a deployment that fails
  behind a successful fallback shows its own failures; rows from before attempts were recorded
  count as one attempt by the deployment that answered. An attempt failed when its status is 5xx
  (or missing: a timeout or a connection error has no status). Time to first token is the
  request's, counted for the attempt that answered.

Each grouping is one aggregate query plus one for its error codes, whatever the row count.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.db import connection
from django.db.models import Aggregate, Case, CharField, Count, F, FloatField, Q, QuerySet, Sum, Value, When
from django.db.models.functions import Cast, Concat, TruncDay, TruncHour

from budgets.models import UsageRecord

from .models import Deployment, SlaPolicy

WINDOWS = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
DEFAULT_WINDOW = "30d"
GROUPINGS = ("policy", "route", "deployment")
NO_POLICY = "none"  # the ?policy= value and the group key of requests no policy holds
PERCENTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
FAILED = Q(status__gte=500)


class Percentile(Aggregate):
    """percentile_cont(fraction) WITHIN GROUP (ORDER BY expression); NULLs are skipped."""

    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression, fraction: float, **extra):
        if not 0 <= fraction <= 1:
            raise ValueError("A percentile is a fraction between 0 and 1.")
        # A constant of this module, never user input: safe to write into the SQL.
        super().__init__(expression, fraction=repr(float(fraction)), **extra)


def percentile_aggregates(column: str, prefix: str) -> dict:
    return {f"{prefix}_{name}": Percentile(column, fraction) for name, fraction in PERCENTILES}


def window_bounds(window: str, now: datetime | None = None) -> tuple[datetime, datetime]:
    """[start, end) of a named window ending now, in UTC."""
    end = (now or datetime.now(UTC)).astimezone(UTC)
    return end - WINDOWS[window], end


# Policies ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policies:
    """An org's policies, and which one holds the requests of each team."""

    default: SlaPolicy | None
    by_team: dict  # team id -> the team's policy
    by_id: dict  # policy id -> policy

    @classmethod
    def of(cls, org) -> Policies:
        policies = list(SlaPolicy.objects.filter(org=org).select_related("team").order_by("team__name", "name"))
        default = next((p for p in policies if p.team_id is None), None)
        by_team = {p.team_id: p for p in policies if p.team_id is not None}
        return cls(default, by_team, {p.pk: p for p in policies})

    def ordered(self) -> list[SlaPolicy]:
        """The default first, then team policies by team name."""
        return ([self.default] if self.default else []) + list(self.by_team.values())

    def key_expression(self):
        """The SQL that names a request's policy: its id as text, or NO_POLICY."""
        fallback = Value(str(self.default.pk) if self.default else NO_POLICY)
        if not self.by_team:
            return fallback
        whens = [When(team_id=team_id, then=Value(str(policy.pk))) for team_id, policy in self.by_team.items()]
        return Case(*whens, default=fallback, output_field=CharField())

    def requests_of(self, policy_key: str) -> Q:
        """The requests a policy holds (NO_POLICY: those no policy holds)."""
        policy = self.by_id.get(_as_uuid(policy_key)) if policy_key != NO_POLICY else None
        team_policies = Q(team_id__in=list(self.by_team))
        if policy is not None and policy.team_id is not None:
            return Q(team_id=policy.team_id)
        if policy is not None or (policy_key == NO_POLICY and self.default is None):
            return ~team_policies if self.by_team else Q()
        return Q(pk__in=[])  # NO_POLICY while a default exists, or a policy of no one

    def targets_for(self, policy_key: str | None) -> SlaPolicy | None:
        """The targets a table is held to: the chosen policy's, or the org default's."""
        if policy_key is None:
            return self.default
        return self.by_id.get(_as_uuid(policy_key))


def _as_uuid(value) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


# Figures -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorCount:
    code: str
    count: int
    rate: Decimal  # of the group's requests (or attempts), 0..1

    @property
    def percent(self) -> Decimal:
        return self.rate * 100


OBJECTIVE_LABELS = {
    "availability": "Availability (%)",
    "p95_latency_ms": "p95 latency (ms)",
    "p95_ttft_ms": "p95 time to first token (ms)",
}


@dataclass(frozen=True)
class Objective:
    """One SLO target against what was measured."""

    name: str  # availability, p95_latency_ms, p95_ttft_ms
    target: Decimal | int
    measured: Decimal | float | None
    met: bool | None  # None: nothing measured

    @property
    def label(self) -> str:
        return OBJECTIVE_LABELS[self.name]


@dataclass
class Figures:
    key: str | None  # policy id / NO_POLICY, alias, deployment id
    label: str
    requests: int
    failed: int
    latency: dict  # p50, p95, p99 -> ms or None
    ttft: dict
    errors: list[ErrorCount] = field(default_factory=list)
    targets: SlaPolicy | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = Decimal(0)

    @property
    def availability(self) -> Decimal | None:
        """Share of requests that did not fail, 0..1; None without requests."""
        if not self.requests:
            return None
        return Decimal(self.requests - self.failed) / Decimal(self.requests)

    @property
    def failed_share(self) -> Decimal | None:
        return Decimal(self.failed) / Decimal(self.requests) if self.requests else None

    @property
    def availability_percent(self) -> Decimal | None:
        return None if self.availability is None else self.availability * 100

    @property
    def allowed_share(self) -> Decimal | None:
        if self.targets is None:
            return None
        return 1 - self.targets.slo_availability / 100

    @property
    def burn_rate(self) -> Decimal | None:
        return burn_rate(self.failed, self.requests, self.targets)

    @property
    def budget_remaining(self) -> Decimal | None:
        """1 - failed share / allowed share: 1 untouched, 0 spent, below 0 overspent."""
        rate = self.burn_rate
        return None if rate is None else 1 - rate

    @property
    def budget_remaining_percent(self) -> Decimal | None:
        remaining = self.budget_remaining
        return None if remaining is None else remaining * 100

    @property
    def objectives(self) -> list[Objective]:
        if self.targets is None:
            return []
        policy, has_requests = self.targets, self.requests > 0
        availability = self.availability_percent
        latency, ttft = self.latency.get("p95"), self.ttft.get("p95")
        return [
            Objective(
                "availability",
                policy.slo_availability,
                availability,
                None if availability is None else availability >= policy.slo_availability,
            ),
            Objective(
                "p95_latency_ms",
                policy.slo_p95_latency_ms,
                latency,
                None if latency is None or not has_requests else latency <= policy.slo_p95_latency_ms,
            ),
            Objective(
                "p95_ttft_ms",
                policy.slo_p95_ttft_ms,
                ttft,
                None if ttft is None or not has_requests else ttft <= policy.slo_p95_ttft_ms,
            ),
        ]

    @property
    def breaches(self) -> list[str]:
        return [objective.name for objective in self.objectives if objective.met is False]

    @property
    def error_rate(self) -> Decimal | None:
        """The failed share, for the leaderboard."""
        return self.failed_share

    @property
    def error_rate_percent(self) -> Decimal | None:
        return None if self.failed_share is None else self.failed_share * 100


def burn_rate(failed: int, requests: int, policy: SlaPolicy | None) -> Decimal | None:
    """Failed share / the share the SLO allows; None without a policy or requests. With a 100%
    target any failure burns without bound: reported as None when it fails, 0 when it does not."""
    if policy is None or not requests:
        return None
    allowed = 1 - policy.slo_availability / 100
    failed_share = Decimal(failed) / Decimal(requests)
    if allowed <= 0:
        return Decimal(0) if failed == 0 else None
    return failed_share / allowed


def _latencies(row: dict, prefix: str) -> dict:
    return {name: row[f"{prefix}_{name}"] for name, _fraction in PERCENTILES}


REQUEST_AGGREGATES = {
    "requests": Count("request_id"),
    "failed": Count("request_id", filter=FAILED),
    **percentile_aggregates("latency_ms", "latency"),
    **percentile_aggregates("ttft_ms", "ttft"),
}


def _error_code_expression():
    """A request's error as a code: its error_code, or http_<status> for an error without one."""
    return Case(
        When(~Q(error_code=""), then=F("error_code")),
        When(status__gte=400, then=Concat(Value("http_"), Cast("status", CharField()), output_field=CharField())),
        default=Value(""),
        output_field=CharField(),
    )


def _grouped(records: QuerySet, column, label_of, targets_of) -> list[Figures]:
    """Figures per value of `column` (a field name or an expression) for these requests."""
    keyed = records.annotate(group_key=column) if not isinstance(column, str) else records.annotate(group_key=F(column))
    rows = keyed.values("group_key").annotate(**REQUEST_AGGREGATES).order_by("-requests", "group_key")
    codes = (
        keyed.annotate(code=_error_code_expression())
        .exclude(code="")
        .values("group_key", "code")
        .annotate(count=Count("request_id"))
        .order_by("group_key", "-count", "code")
    )
    errors_by_group: dict = {}
    for row in codes:
        errors_by_group.setdefault(row["group_key"], []).append((row["code"], row["count"]))
    figures = []
    for row in rows:
        key = row["group_key"]
        requests = row["requests"]
        figures.append(
            Figures(
                key=None if key is None else str(key),
                label=label_of(key),
                requests=requests,
                failed=row["failed"],
                latency=_latencies(row, "latency"),
                ttft=_latencies(row, "ttft"),
                errors=[
                    ErrorCount(code, count, Decimal(count) / Decimal(requests))
                    for code, count in errors_by_group.get(key, [])
                ],
                targets=targets_of(key),
            )
        )
    return figures


def ledger(org, start: datetime, end: datetime) -> QuerySet:
    return UsageRecord.objects.filter(org=org, occurred_at__gte=start, occurred_at__lt=end)


def by_policy(org, start: datetime, end: datetime, policies: Policies | None = None) -> list[Figures]:
    """Figures per policy (and "no policy"), each held to its own targets."""
    policies = policies or Policies.of(org)

    def label(key) -> str:
        policy = policies.by_id.get(_as_uuid(key))
        if policy is None:
            return "No policy"
        return f"{policy.name} (team {policy.team.name})" if policy.team_id else f"{policy.name} (org default)"

    return _grouped(
        ledger(org, start, end), policies.key_expression(), label, lambda key: policies.by_id.get(_as_uuid(key))
    )


def by_route(
    org, start: datetime, end: datetime, policy_key: str | None = None, policies: Policies | None = None
) -> list[Figures]:
    """Figures per model alias, held to the chosen policy's targets (default: the org's)."""
    policies = policies or Policies.of(org)
    records = ledger(org, start, end)
    if policy_key is not None:
        records = records.filter(policies.requests_of(policy_key))
    targets = policies.targets_for(policy_key)
    return _grouped(records, "alias", str, lambda _key: targets)


ATTEMPTS_SQL = """
WITH attempt AS (
    SELECT
        a.item ->> 'deployment_id' AS deployment_id,
        CASE WHEN jsonb_typeof(a.item -> 'status') = 'number'
             THEN (a.item ->> 'status')::int END AS status,
        COALESCE(a.item ->> 'error_code', '') AS error_code,
        CASE WHEN jsonb_typeof(a.item -> 'latency_ms') = 'number'
             THEN (a.item ->> 'latency_ms')::float END AS latency_ms,
        CASE WHEN a.position = a.total AND r.status < 500 THEN r.ttft_ms END AS ttft_ms
    FROM ({records}) AS r
    CROSS JOIN LATERAL (
        SELECT item, position, count(*) OVER () AS total
        FROM jsonb_array_elements(
            CASE WHEN jsonb_typeof(r.attempts) = 'array' AND jsonb_array_length(r.attempts) > 0 THEN r.attempts
                 ELSE jsonb_build_array(jsonb_build_object(
                     'deployment_id', r.deployment_id::text, 'status', r.status,
                     'error_code', r.error_code, 'latency_ms', r.latency_ms))
            END
        ) WITH ORDINALITY AS e(item, position)
    ) AS a
)
"""

ATTEMPT_FIGURES_SQL = (
    ATTEMPTS_SQL
    + """
SELECT deployment_id,
       count(*) AS requests,
       count(*) FILTER (WHERE status IS NULL OR status >= 500) AS failed,
       {percentiles}
FROM attempt
WHERE deployment_id IS NOT NULL
GROUP BY deployment_id
ORDER BY count(*) DESC, deployment_id
"""
)
ATTEMPT_CODES_SQL = (
    ATTEMPTS_SQL
    + """
SELECT deployment_id,
       CASE WHEN error_code <> '' THEN error_code
            WHEN status IS NULL THEN 'no_response'
            ELSE 'http_' || status END AS code,
       count(*)
FROM attempt
WHERE deployment_id IS NOT NULL AND (error_code <> '' OR status IS NULL OR status >= 400)
GROUP BY 1, 2
ORDER BY 1, 3 DESC, 2
"""
)


def _attempt_rows(records: QuerySet) -> tuple[list[tuple], list[tuple]]:
    """(figures per deployment, error codes per deployment) of these requests' attempts."""
    inner_sql, params = (
        records.values("request_id", "attempts", "deployment_id", "status", "error_code", "latency_ms", "ttft_ms")
        .order_by()
        .query.sql_with_params()
    )
    percentiles = ", ".join(
        f"percentile_cont({fraction!r}) WITHIN GROUP (ORDER BY {column}) AS {column}_{name}"
        for column in ("latency_ms", "ttft_ms")
        for name, fraction in PERCENTILES
    )
    with connection.cursor() as cursor:
        cursor.execute(ATTEMPT_FIGURES_SQL.format(records=inner_sql, percentiles=percentiles), params)
        figures = cursor.fetchall()
        cursor.execute(ATTEMPT_CODES_SQL.format(records=inner_sql), params)
        codes = cursor.fetchall()
    return figures, codes


def by_deployment(
    org, start: datetime, end: datetime, policy_key: str | None = None, policies: Policies | None = None
) -> list[Figures]:
    """Figures per deployment from every upstream attempt; `requests` counts attempts."""
    policies = policies or Policies.of(org)
    records = ledger(org, start, end)
    if policy_key is not None:
        records = records.filter(policies.requests_of(policy_key))
    targets = policies.targets_for(policy_key)
    rows, codes = _attempt_rows(records)
    names = dict(
        Deployment.objects.filter(org=org, pk__in=[_as_uuid(row[0]) for row in rows if _as_uuid(row[0])]).values_list(
            "pk", "name"
        )
    )
    errors_by_deployment: dict = {}
    for deployment_id, code, count in codes:
        errors_by_deployment.setdefault(deployment_id, []).append((code, count))
    figures = []
    for deployment_id, attempts, failed, *percentiles in rows:
        latency = dict(zip([name for name, _ in PERCENTILES], percentiles[:3], strict=True))
        ttft = dict(zip([name for name, _ in PERCENTILES], percentiles[3:], strict=True))
        name = names.get(_as_uuid(deployment_id))
        figures.append(
            Figures(
                key=deployment_id,
                label=name or f"Deleted deployment {deployment_id[:8]}",
                requests=attempts,
                failed=failed,
                latency=latency,
                ttft=ttft,
                errors=[
                    ErrorCount(code, count, Decimal(count) / Decimal(attempts))
                    for code, count in errors_by_deployment.get(deployment_id, [])
                ],
                targets=targets,
            )
        )
    return figures


def report(
    org, start: datetime, end: datetime, group_by: str, policy_key: str | None = None, policies: Policies | None = None
) -> list[Figures]:
    """Figures for [start, end) grouped by policy, route or deployment."""
    policies = policies or Policies.of(org)
    if group_by == "policy":
        rows = by_policy(org, start, end, policies)
        return [row for row in rows if row.key == policy_key] if policy_key is not None else rows
    if group_by == "route":
        return by_route(org, start, end, policy_key, policies)
    if group_by == "deployment":
        return by_deployment(org, start, end, policy_key, policies)
    raise ValueError(f"Unknown grouping: {group_by}")


# Over time -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bucket:
    start: datetime
    requests: int
    failed: int
    p95_latency_ms: float | None

    @property
    def availability_percent(self) -> Decimal | None:
        if not self.requests:
            return None
        return Decimal(self.requests - self.failed) * 100 / Decimal(self.requests)


def bucket_starts(start: datetime, end: datetime, bucket: str) -> list[datetime]:
    step = timedelta(hours=1) if bucket == "hour" else timedelta(days=1)
    if bucket == "hour":
        current = start.replace(minute=0, second=0, microsecond=0)
    else:
        current = start.replace(hour=0, minute=0, second=0, microsecond=0)
    starts = []
    while current < end:
        starts.append(current)
        current += step
    return starts


def series(records: QuerySet, start: datetime, end: datetime, bucket: str) -> list[Bucket]:
    """Requests, failures and p95 latency per hour or day (UTC), empty buckets included."""
    trunc = TruncHour if bucket == "hour" else TruncDay
    rows = (
        records.annotate(bucket=trunc("occurred_at", tzinfo=UTC))
        .values("bucket")
        .annotate(
            requests=Count("request_id"), failed=Count("request_id", filter=FAILED), p95=Percentile("latency_ms", 0.95)
        )
        .order_by("bucket")
    )
    found = {row["bucket"]: row for row in rows}
    return [
        Bucket(moment, found[moment]["requests"], found[moment]["failed"], found[moment]["p95"])
        if moment in found
        else Bucket(moment, 0, 0, None)
        for moment in bucket_starts(start, end, bucket)
    ]


# Leaderboard ---------------------------------------------------------------------------------


def leaderboard(org, start: datetime, end: datetime) -> list[Figures]:
    """Per model alias: requests, tokens, cost, p50/p95 latency and failed share; busiest first."""
    rows = (
        ledger(org, start, end)
        .values("alias")
        .annotate(
            requests=Count("request_id"),
            failed=Count("request_id", filter=FAILED),
            input_tokens=Sum("input_tokens", default=0),
            output_tokens=Sum("output_tokens", default=0),
            cost=Sum("cost", default=Decimal(0)),
            **percentile_aggregates("latency_ms", "latency"),
            **percentile_aggregates("ttft_ms", "ttft"),
        )
        .order_by("-requests", "alias")
    )
    return [
        Figures(
            key=row["alias"],
            label=row["alias"],
            requests=row["requests"],
            failed=row["failed"],
            latency=_latencies(row, "latency"),
            ttft=_latencies(row, "ttft"),
            input_tokens=row["input_tokens"],
            output_tokens=row["output_tokens"],
            cost=row["cost"],
        )
        for row in rows
    ]


# Burn rates for alerts -------------------------------------------------------------------


def policy_burn_rates(org, now: datetime, windows: dict[str, timedelta]) -> dict:
    """{policy id: {window name: (failed, requests)}} for every policy, in one query."""
    policies = Policies.of(org)
    longest = max(windows.values())
    aggregates = {}
    for name, length in windows.items():
        recent = Q(occurred_at__gte=now - length)
        aggregates[f"requests_{name}"] = Count("request_id", filter=recent)
        aggregates[f"failed_{name}"] = Count("request_id", filter=recent & FAILED)
    rows = (
        ledger(org, now - longest, now)
        .annotate(policy_key=policies.key_expression())
        .values("policy_key")
        .annotate(**aggregates)
        .order_by()
    )
    counts = {row["policy_key"]: row for row in rows}
    result = {}
    for policy in policies.ordered():
        row = counts.get(str(policy.pk), {})
        result[policy.pk] = {name: (row.get(f"failed_{name}", 0), row.get(f"requests_{name}", 0)) for name in windows}
    return result

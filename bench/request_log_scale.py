"""Request log at scale: filtered page loads over 10 million ledger rows, under 200 ms at p95.

Run: make bench BENCH=request_log_scale. To try it small while developing:

    .venv/bin/python scripts/with_services.py .venv/bin/python bench/request_log_scale.py --rows 100000

The ledger lives in a database of its own next to DATABASE_URL's, `gatehouse_bench_requestlog`
(`..._<rows>` for another --rows), kept between runs: a run that finds it filled reuses it
(after `migrate`, so a new migration reaches it), `--refill` drops it and fills it again. The
10-million-row fill took 6.5 minutes on the 2-core development machine and takes 8.7 GB.

The fill: three orgs, one holding 90% of the rows ("bench": 50 teams, 500 caller keys of which
two thirds are people's, 10 model aliases routed over 5 deployments; two small orgs the rest),
made through the services (memberships through the ORM, as the tests make them); then
--rows ledger rows made by PostgreSQL itself (INSERT ... SELECT FROM generate_series, a
million a statement), spread over the 30 days before the fill in time order, as ingestion
appends them. Keys and aliases are skewed (a few carry most of the traffic), 3% of requests
fail (upstream_error, upstream_timeout, upstream_rate_limited, invalid_request,
model_not_allowed), 2% of the rest answer after a fallback, a fifth carry the caller's
X-Request-Id, and attempts are written as the gateway writes them (gateway/usage.py
UsageEvent). The ledger's secondary indexes are dropped for the fill and built again
afterwards from their own definitions (those the migrations made), then VACUUM ANALYZE.

The measure: page loads of /orgs/bench/requests/ through the real view (Django's test client,
in process, so no network and no server: what the view, its queries and its template cost),
signed in as the org's owner, then as a developer who sees only the requests of their own
three keys, for each filter of the issue; and the JSON API for a few of them. The views'
clock is the end of the fill, so the default window (the last 24 hours) holds a day of
traffic however long after the fill the run comes. Three rounds of warm-up, then --loads (30) timed
rounds; each round loads every filter once, so noise from the machine falls on all alike. Per
filter: the rows the page listed, its SQL queries, p50 and p95 of the whole load and p50 of the
ledger queries (the part that grows with the table). A second table goes beyond the issue's
filters: a few over the whole 30 days (`since`), where the 24-hour window no longer bounds what
a query may read. A filter at or above the target gets its ledger queries' EXPLAIN ANALYZE
printed after the tables.
"""

import argparse
import html
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

DEFAULT_ROWS = 10_000_000
CHUNK = 1_000_000
LOADS = 30
WARM_UP_ROUNDS = 3
TARGET_P95_MS = 200
DAYS = 30
DATABASE = "gatehouse_bench_requestlog"
FILL_TABLE = "bench_request_log_fill"  # not a model: the fill's own record, written last

ORG_SLUG = "bench"
SMALL_ORGS = (("Small A", "small-a"), ("Small B", "small-b"))
SMALL_ORG_SHARE = 0.05  # of the rows, each
TEAMS = 50
KEYS = 500
SMALL_KEYS = 5
PEOPLE = 100  # developers holding keys, besides the measured one
ALIASES = (
    "gpt-4o",
    "gpt-4o-mini",
    "claude-sonnet",
    "gpt-4.1",
    "claude-haiku",
    "gemini-flash",
    "o3-mini",
    "llama-70b",
    "mistral-large",
    "text-embedding-3-small",
)
DEPLOYMENTS = ("us-east primary", "us-west", "eu-west", "ap-south", "batch pool")
KEY_PURPOSES = ("ci", "backend", "notebook", "batch", "eval")
DEVELOPER_KEYS = (20, 150, 400)  # key numbers the measured developer holds
FILTER_KEY = 60  # a key of typical traffic, for the owner's key filter
FILTER_ALIAS = ALIASES[7]  # about 3% of the big org's traffic
FILTER_ERROR_CODE = "upstream_timeout"
REQUEST_LINK = re.compile(r'href="/orgs/[^/"]+/requests/([^/"]+)/"')
OLDER_LINK = re.compile(r'<a [^>]*href="([^"]+)" rel="next"')

# One statement per chunk. The innermost query draws each row's random numbers once (OFFSET 0
# keeps it a subquery, so a number read twice is the same number); the middle one turns them
# into the row's org, key, alias, deployments and outcome; the outer one writes the row.
# Outcomes: 0 answered, 1 answered after a fallback, 2 upstream_error (502), 3 upstream_timeout
# (504), 4 upstream_rate_limited (429), 5 invalid_request (400), 6 model_not_allowed (403).
FILL_SQL = """
INSERT INTO budgets_usagerecord (
    request_id, client_request_id, org_id, team_id, key_id, alias, deployment_id, endpoint,
    input_tokens, output_tokens, cost, latency_ms, ttft_ms, status, error_code, stream, node_id,
    attempts, occurred_at, client_ip, user_agent
)
SELECT
    md5('request-log-' || i),
    CASE WHEN r_client < 0.2 THEN 'req-' || substr(md5('client-' || i), 1, 24) ELSE '' END,
    (%(key_orgs)s::uuid[])[key_number],
    (%(key_teams)s::uuid[])[key_number],
    (%(key_ids)s::uuid[])[key_number],
    alias,
    CASE outcome WHEN 0 THEN first_deployment WHEN 1 THEN next_deployment END,
    endpoint,
    CASE WHEN outcome < 2 THEN input_tokens ELSE 0 END,
    CASE WHEN outcome < 2 THEN output_tokens ELSE 0 END,
    CASE WHEN outcome < 2 THEN round((input_tokens * 2.5 + output_tokens * 10) / 1e6, 6) ELSE 0 END,
    latency_ms,
    CASE WHEN stream THEN round((latency_ms * 0.25)::numeric, 3) ELSE latency_ms END,
    (ARRAY[200, 200, 502, 504, 429, 400, 403])[outcome + 1],
    (ARRAY['', '', 'upstream_error', 'upstream_timeout', 'upstream_rate_limited', 'invalid_request',
           'model_not_allowed'])[outcome + 1],
    stream,
    'gw-' || (1 + i %% 4),
    CASE outcome
        WHEN 0 THEN jsonb_build_array(pg_temp.attempt(first_deployment, 200, '', latency_ms))
        WHEN 1 THEN jsonb_build_array(
            pg_temp.attempt(first_deployment, 503, 'upstream_error', 420),
            pg_temp.attempt(next_deployment, 200, '', latency_ms - 420) || '{"reason": "fallback", "after": "5xx"}')
        WHEN 2 THEN jsonb_build_array(
            pg_temp.attempt(first_deployment, 500, 'upstream_error', 310),
            pg_temp.attempt(first_deployment, 500, 'upstream_error', 290) || '{"reason": "retry", "after": "5xx"}',
            pg_temp.attempt(next_deployment, 502, 'upstream_error', latency_ms - 600)
                || '{"reason": "fallback", "after": "5xx"}')
        WHEN 3 THEN jsonb_build_array(
            pg_temp.attempt(first_deployment, 0, 'upstream_timeout', 30000),
            pg_temp.attempt(next_deployment, 0, 'upstream_timeout', latency_ms - 30000)
                || '{"reason": "fallback", "after": "timeout"}')
        WHEN 4 THEN jsonb_build_array(
            pg_temp.attempt(first_deployment, 429, 'upstream_rate_limited', 95),
            pg_temp.attempt(next_deployment, 429, 'upstream_rate_limited', latency_ms - 95)
                || '{"reason": "fallback", "after": "429"}')
        ELSE '[]'::jsonb
    END,
    %(start)s::timestamptz + make_interval(secs => (i + r_jitter) * %(step_seconds)s),
    ('10.20.' || (key_number %% 256) || '.' || (1 + key_number %% 250))::inet,
    CASE WHEN endpoint = 'messages' THEN 'Anthropic/Python 0.42.0' ELSE 'OpenAI/Python 1.58.1' END
FROM (
    SELECT
        i, r_client, r_jitter, key_number, alias, first_deployment, next_deployment, outcome,
        CASE WHEN alias LIKE 'text-embedding%%' THEN 'embeddings'
             WHEN r_endpoint < 0.8 THEN 'chat.completions'
             WHEN r_endpoint < 0.9 THEN 'responses'
             ELSE 'messages' END AS endpoint,
        r_stream < 0.4 AND alias NOT LIKE 'text-embedding%%' AS stream,
        20 + floor(3000 * r_tokens ^ 2)::int AS input_tokens,
        5 + floor(600 * r_output)::int AS output_tokens,
        round((CASE outcome
            WHEN 0 THEN 120 + 4000 * r_latency ^ 3
            WHEN 1 THEN 900 + 4000 * r_latency ^ 3
            WHEN 2 THEN 900 + 300 * r_latency
            WHEN 3 THEN 60000 + 50 * r_latency
            WHEN 4 THEN 190 + 50 * r_latency
            ELSE 1 + r_latency END)::numeric, 3)::float8 AS latency_ms
    FROM (
        SELECT
            i, r_client, r_jitter, r_endpoint, r_stream, r_tokens, r_output, r_latency,
            CASE WHEN slot = 0 THEN 1 + least(%(keys)s - 1, floor(%(keys)s * r_key ^ 3))::int
                 ELSE %(keys)s + (slot - 1) * %(small_keys)s + 1 + floor(%(small_keys)s * r_key)::int
            END AS key_number,
            CASE WHEN slot = 0 THEN (%(aliases)s::text[])[1 + least(%(alias_count)s - 1,
                                                                 floor(%(alias_count)s * r_alias ^ 4))::int]
                 ELSE (%(aliases)s::text[])[1] END AS alias,
            CASE WHEN slot = 0 THEN (%(first_deployments)s::uuid[])[1 + least(%(alias_count)s - 1,
                                                                 floor(%(alias_count)s * r_alias ^ 4))::int]
                 ELSE (%(small_deployments)s::uuid[])[slot] END AS first_deployment,
            CASE WHEN slot = 0 THEN (%(next_deployments)s::uuid[])[1 + least(%(alias_count)s - 1,
                                                                 floor(%(alias_count)s * r_alias ^ 4))::int]
                 ELSE (%(small_deployments)s::uuid[])[slot] END AS next_deployment,
            CASE WHEN r_status < 0.97 THEN (CASE WHEN r_error < 0.02 THEN 1 ELSE 0 END)
                 WHEN r_error < 0.40 THEN 2
                 WHEN r_error < 0.60 THEN 3
                 WHEN r_error < 0.80 THEN 4
                 WHEN r_error < 0.95 THEN 5
                 ELSE 6 END AS outcome
        FROM (
            SELECT
                i,
                CASE WHEN r_org < %(small_share)s THEN 1 WHEN r_org < 2 * %(small_share)s THEN 2 ELSE 0 END AS slot,
                r_key, r_alias, r_status, r_error, r_client, r_jitter, r_endpoint, r_stream, r_tokens,
                r_output, r_latency
            FROM (
                SELECT
                    i, random() AS r_org, random() AS r_key, random() AS r_alias, random() AS r_status,
                    random() AS r_error, random() AS r_client, random() AS r_jitter, random() AS r_endpoint,
                    random() AS r_stream, random() AS r_tokens, random() AS r_output, random() AS r_latency
                FROM generate_series(%(low)s::bigint, %(high)s::bigint - 1) AS i
                OFFSET 0
            ) AS drawn
        ) AS slotted
    ) AS chosen
) AS shaped
"""

# One upstream attempt as the gateway records it (gateway/app.py _attempted): a function of the
# session only (pg_temp), so the fill statement stays readable.
ATTEMPT_FUNCTION = """
CREATE FUNCTION pg_temp.attempt(deployment uuid, status int, error_code text, latency_ms float8)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object('deployment_id', deployment::text, 'provider', 'openai_compatible',
                              'status', status, 'error_code', error_code,
                              'latency_ms', round(latency_ms::numeric, 3))
$$
"""


@dataclass
class Cast:
    """Who and what the measure names, read back from the database (after a fill or a reuse)."""

    org: object
    owner: object
    developer: object
    keys: list  # the big org's keys, by number
    teams: list
    deployments: dict  # name -> Deployment, the big org's
    small_orgs: list  # [(org, [keys], deployment)]
    anchor: datetime  # the end of the fill: the views' clock


# Database ------------------------------------------------------------------------------------


def database_name(rows: int) -> str:
    return DATABASE if rows == DEFAULT_ROWS else f"{DATABASE}_{rows}"


def recorded_fill(name: str) -> tuple[int, datetime] | None:
    """(rows, anchor) of a finished fill of the database `name`, None if it has none."""
    import psycopg

    with psycopg.connect(harness.database_url("postgres"), autocommit=True) as connection:
        if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            return None
    with psycopg.connect(harness.database_url(name), autocommit=True) as connection:
        if connection.execute("SELECT to_regclass(%s)", [FILL_TABLE]).fetchone()[0] is None:
            return None
        return connection.execute(f"SELECT rows, anchor FROM {FILL_TABLE}").fetchone()  # noqa: S608


@contextmanager
def kept_database(name: str, *, refill: bool):
    """Point DATABASE_URL at `name` (made empty first with `refill`, created if missing), set up
    Django and migrate; unlike harness.throwaway_database, the database stays afterwards."""
    import psycopg

    with psycopg.connect(harness.database_url("postgres"), autocommit=True) as connection:
        if refill:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            connection.execute(f'CREATE DATABASE "{name}"')
    with harness.using_database(name):
        yield


# Fill ----------------------------------------------------------------------------------------


def seed() -> None:
    """The orgs, people, teams, keys, deployments and routes the rows name, through the services."""
    from decimal import Decimal

    from audit.context import Actor
    from keys.services import create_credential, issue_key
    from orgs.models import User
    from orgs.services import add_team_member, create_org, create_team
    from sla.services import create_deployment, create_route

    system = Actor.system("bench")

    def person(email: str) -> User:
        return User.objects.create_user(email=email, password=None, full_name=email.split("@")[0].title())

    def routes(org, aliases, deployment_names) -> dict:
        credential = create_credential(
            actor=system,
            org=org,
            name="Upstream",
            provider="openai_compatible",
            base_url="http://127.0.0.1:9/v1",
            secrets={"api_key": "sk-bench-upstream-0000"},
        )
        deployments = [
            create_deployment(
                actor=system,
                org=org,
                name=name,
                credential=credential,
                upstream_model="gpt-4o",
                input_price_per_mtok=Decimal("2.5"),
                output_price_per_mtok=Decimal("10"),
            )
            for name in deployment_names
        ]
        for number, alias in enumerate(aliases):
            targets = [deployments[number % len(deployments)], deployments[(number + 1) % len(deployments)]]
            create_route(actor=system, org=org, alias=alias, deployments=list(dict.fromkeys(targets)))
        return deployments

    owner = person("owner@bench.test")
    org = create_org(actor=system, name="Bench", slug=ORG_SLUG, owner=owner, require_mfa=False)
    developer = person("developer@bench.test")
    org.memberships.create(user=developer, role="developer")
    people = [person(f"dev{number:03d}@bench.test") for number in range(PEOPLE)]
    for member in people:
        org.memberships.create(user=member, role="developer")
    teams = [create_team(actor=system, org=org, name=f"Team {number:02d}") for number in range(TEAMS)]
    routes(org, ALIASES, DEPLOYMENTS)
    members = set()
    for number in range(KEYS):
        team = teams[number % TEAMS]
        holder = developer if number in DEVELOPER_KEYS else (None if number % 3 == 0 else people[number % PEOPLE])
        if holder is not None and (team.pk, holder.pk) not in members:
            add_team_member(actor=system, team=team, user=holder)
            members.add((team.pk, holder.pk))
        issue_key(actor=system, team=team, name=f"{KEY_PURPOSES[number % 5]}-{number:03d}", user=holder)
    for name, slug in SMALL_ORGS:
        small = create_org(actor=system, name=name, slug=slug, owner=person(f"owner@{slug}.test"), require_mfa=False)
        team = create_team(actor=system, org=small, name="Everyone")
        routes(small, ALIASES[:1], ("main",))
        for number in range(SMALL_KEYS):
            issue_key(actor=system, team=team, name=f"{KEY_PURPOSES[number % 5]}-{number:03d}")


def key_number(key) -> int:
    return int(key.name.rsplit("-", 1)[1])


def read_cast(anchor: datetime) -> Cast:
    from keys.models import CallerKey
    from orgs.models import Organization, Team, User
    from sla.models import Deployment

    org = Organization.objects.get(slug=ORG_SLUG)
    small_orgs = []
    for _name, slug in SMALL_ORGS:
        small = Organization.objects.get(slug=slug)
        small_keys = sorted(CallerKey.objects.filter(org=small), key=key_number)
        small_orgs.append((small, small_keys, Deployment.objects.get(org=small)))
    return Cast(
        org=org,
        owner=User.objects.get(email="owner@bench.test"),
        developer=User.objects.get(email="developer@bench.test"),
        keys=sorted(CallerKey.objects.filter(org=org), key=key_number),
        teams=list(Team.objects.filter(org=org).order_by("name")),
        deployments={deployment.name: deployment for deployment in Deployment.objects.filter(org=org)},
        small_orgs=small_orgs,
        anchor=anchor,
    )


def fill(rows: int) -> datetime:
    """`rows` ledger rows over the DAYS days before now; returns the end of that span."""
    from django.db import connection

    anchor = datetime.now(UTC).replace(microsecond=0)
    cast = read_cast(anchor)
    keys = cast.keys + [key for _org, small_keys, _deployment in cast.small_orgs for key in small_keys]
    route_targets = [
        (
            cast.deployments[DEPLOYMENTS[number % len(DEPLOYMENTS)]],
            cast.deployments[DEPLOYMENTS[(number + 1) % len(DEPLOYMENTS)]],
        )
        for number in range(len(ALIASES))
    ]
    parameters = {
        "key_ids": [key.pk for key in keys],
        "key_teams": [key.team_id for key in keys],
        "key_orgs": [key.org_id for key in keys],
        "keys": KEYS,
        "small_keys": SMALL_KEYS,
        "small_share": SMALL_ORG_SHARE,
        "aliases": list(ALIASES),
        "alias_count": len(ALIASES),
        "first_deployments": [first.pk for first, _next in route_targets],
        "next_deployments": [following.pk for _first, following in route_targets],
        "small_deployments": [deployment.pk for _org, _keys, deployment in cast.small_orgs],
        "start": anchor - timedelta(days=DAYS),
        "step_seconds": DAYS * 86400 / rows,
    }
    began = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit = off")
        cursor.execute("SET maintenance_work_mem = '512MB'")
        cursor.execute(ATTEMPT_FUNCTION)
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'budgets_usagerecord' AND indexname NOT IN "
            "(SELECT conname FROM pg_constraint WHERE conrelid = 'budgets_usagerecord'::regclass)"
        )
        indexes = cursor.fetchall()
        for name, _definition in indexes:
            cursor.execute(f'DROP INDEX "{name}"')
        for low in range(0, rows, CHUNK):
            cursor.execute("SELECT setseed(%s)", [(low // CHUNK % 1000) / 1000])
            cursor.execute(FILL_SQL, {**parameters, "low": low, "high": min(rows, low + CHUNK)})
            print(
                f"filled {min(rows, low + CHUNK):,} of {rows:,} rows ({time.perf_counter() - began:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
        for name, definition in indexes:
            cursor.execute(definition)
            print(f"built index {name} ({time.perf_counter() - began:.0f} s)", file=sys.stderr, flush=True)
        cursor.execute("VACUUM ANALYZE budgets_usagerecord")
        cursor.execute(f"CREATE TABLE {FILL_TABLE} (rows bigint NOT NULL, anchor timestamptz NOT NULL)")
        cursor.execute(f"INSERT INTO {FILL_TABLE} VALUES (%s, %s)", [rows, anchor])  # noqa: S608
        cursor.execute("SELECT pg_size_pretty(pg_total_relation_size('budgets_usagerecord'))")
        size = cursor.fetchone()[0]
    print(f"filled and indexed in {time.perf_counter() - began:.0f} s; the ledger takes {size}", file=sys.stderr)
    return anchor


# Measure -------------------------------------------------------------------------------------


@dataclass
class Case:
    viewer: str  # "owner" or "developer"
    label: str
    path: str
    api: bool = False
    month: bool = False  # over the last 30 days: beyond the issue's filters, reported apart


@dataclass
class Figures:
    rows: int
    queries: int
    loads_ms: list
    ledger_ms: list
    ledger_sql: list  # the ledger queries of the last load


def one_row(cursor, sql: str, parameters: list):
    cursor.execute(sql, parameters)
    found = cursor.fetchone()
    if found is None:
        raise SystemExit(f"the fill holds no row for: {sql} {parameters}")
    return found[0]


def cases(cast: Cast, client_for) -> list[Case]:
    """The filters each viewer loads, with values picked from the rows (a request id of ten days
    ago, a key of typical traffic...), and the second page's address from the first."""
    from django.db import connection
    from django.urls import reverse

    page = reverse("requestlog:list", kwargs={"org_slug": ORG_SLUG})
    api = reverse("api:requestlog:request-list", kwargs={"org_slug": ORG_SLUG})
    day_ago = cast.anchor - timedelta(hours=24)
    ten_days_ago = cast.anchor - timedelta(days=10)
    developer_keys = [key.pk for key in cast.keys if key_number(key) in DEVELOPER_KEYS]
    with connection.cursor() as cursor:
        picks = {}
        for viewer, keys in (("owner", [key.pk for key in cast.keys]), ("developer", developer_keys)):
            picks[viewer] = {
                "request_id": one_row(
                    cursor,
                    "SELECT request_id FROM budgets_usagerecord WHERE org_id = %s AND key_id = ANY(%s) "
                    "AND occurred_at < %s ORDER BY occurred_at DESC LIMIT 1",
                    [cast.org.pk, keys, ten_days_ago],
                ),
                "client_request_id": one_row(
                    cursor,
                    "SELECT client_request_id FROM budgets_usagerecord WHERE org_id = %s AND key_id = ANY(%s) "
                    "AND occurred_at < %s AND client_request_id <> '' ORDER BY occurred_at DESC LIMIT 1",
                    [cast.org.pk, keys, ten_days_ago],
                ),
            }
    key = cast.keys[FILTER_KEY]
    developer_key = cast.keys[DEVELOPER_KEYS[0]]
    plans = {
        "owner": {"key": key.pk, "team": key.team_id},
        "developer": {"key": developer_key.pk, "team": developer_key.team_id},
    }
    found = []
    for viewer in ("owner", "developer"):
        filters = [
            ("newest page, no filter", {}),
            ("last 24 h (since, until)", {"since": day_ago.isoformat(), "until": cast.anchor.isoformat()}),
            ("key", {"key": plans[viewer]["key"]}),
            ("team", {"team": plans[viewer]["team"]}),
            ("model alias", {"model": FILTER_ALIAS}),
            ("deployment", {"deployment": cast.deployments[DEPLOYMENTS[2]].pk}),
            ("status 5xx", {"status": "5xx"}),
            ("error code", {"error_code": FILTER_ERROR_CODE}),
            ("request id (all time)", {"request_id": picks[viewer]["request_id"]}),
            ("client request id (all time)", {"request_id": picks[viewer]["client_request_id"]}),
        ]
        for label, query in filters:
            found.append(Case(viewer, label, f"{page}?{urlencode(query)}" if query else page))
        first = client_for(viewer).get(page)
        older = OLDER_LINK.search(first.content.decode())
        if older is None:  # fewer rows than a page in the last 24 hours: only at small --rows
            print(f"the {viewer}'s newest page has no older page: not measured", file=sys.stderr)
        else:
            found.append(Case(viewer, "second page (keyset cursor)", page + html.unescape(older.group(1))))
    # Beyond the issue: filters over the whole 30 days, where the default 24-hour window no longer
    # bounds the rows a query may have to read before it has a page (or finds there is none).
    month = {"since": (cast.anchor - timedelta(days=DAYS)).isoformat()}
    month_filters = [
        ("developer", "status 5xx", {"status": "5xx"}),
        ("owner", "status 5xx", {"status": "5xx"}),
        ("owner", "error code", {"error_code": FILTER_ERROR_CODE}),
        ("owner", "key owner (the developer) + status 4xx", {"user": cast.developer.uuid, "status": "4xx"}),
        ("owner", "team + model alias + status 5xx", {"team": key.team_id, "model": FILTER_ALIAS, "status": "5xx"}),
    ]
    for viewer, label, query in month_filters:
        found.append(Case(viewer, label, f"{page}?{urlencode({**query, **month})}", month=True))
    first = client_for("owner").get(api).json()
    api_filters = [
        ("newest page, no filter", {}),
        ("key", {"key": plans["owner"]["key"]}),
        ("status 5xx", {"status": "5xx"}),
        ("second page (cursor)", {"cursor": first["next_cursor"]}),
        ("request id (all time)", {"request_id": picks["owner"]["request_id"]}),
    ]
    for label, query in api_filters:
        found.append(Case("owner", label, f"{api}?{urlencode(query)}" if query else api, api=True))
    return found


def listed_rows(case: Case, response) -> int:
    if response.status_code != 200:
        raise SystemExit(f"{case.viewer} {case.path}: {response.status_code}")
    if case.api:
        return len(response.json()["results"])
    return len(set(REQUEST_LINK.findall(response.content.decode())))


class QueryTimer:
    """Counts a load's queries and times those that read the ledger (an execute wrapper, so
    the times are this process's own, to the microsecond)."""

    def __init__(self) -> None:
        self.queries = 0
        self.ledger_ms = 0.0
        self.ledger: list[str] = []  # their SQL, with the values in

    def __call__(self, execute, sql, params, many, context):
        self.queries += 1
        if 'FROM "budgets_usagerecord"' not in sql:
            return execute(sql, params, many, context)
        began = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.ledger_ms += (time.perf_counter() - began) * 1000
            self.ledger.append(context["connection"].ops.compose_sql(sql, params))


def measure(cast: Cast, loads: int) -> tuple[list[Case], dict[int, Figures]]:
    from django.db import connection
    from django.test import Client

    clients = {}
    for viewer, user in (("owner", cast.owner), ("developer", cast.developer)):
        clients[viewer] = Client(SERVER_NAME="localhost")
        clients[viewer].force_login(user)
    # The views read the clock for the default window: the end of the fill, on any later run.
    with mock.patch("django.utils.timezone.now", return_value=cast.anchor + timedelta(seconds=1)):
        all_cases = cases(cast, clients.__getitem__)
        figures = {index: Figures(0, 0, [], [], []) for index in range(len(all_cases))}
        for round_number in range(WARM_UP_ROUNDS + loads):
            for index, case in enumerate(all_cases):
                timer = QueryTimer()
                with connection.execute_wrapper(timer):
                    began = time.perf_counter()
                    response = clients[case.viewer].get(case.path)
                    elapsed = (time.perf_counter() - began) * 1000
                figure = figures[index]
                figure.rows = listed_rows(case, response)
                if round_number < WARM_UP_ROUNDS:
                    continue
                figure.loads_ms.append(elapsed)
                figure.ledger_ms.append(timer.ledger_ms)
                figure.queries = timer.queries
                figure.ledger_sql = timer.ledger
    return all_cases, figures


def explain(sql: str) -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")
        return "\n".join(line for (line,) in cursor.fetchall())


def table(rows: list[tuple[Case, Figures]]) -> list[tuple[Case, Figures]]:
    """Print one Markdown table; return the rows that missed the target."""
    print(f"| viewer | what | filter | rows listed | queries | p50 | p95 | ledger SQL p50 | p95 < {TARGET_P95_MS} ms |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    slow = []
    for case, figure in rows:
        p50, p95 = harness.median(figure.loads_ms), harness.percentile(figure.loads_ms, 0.95)
        if p95 >= TARGET_P95_MS:
            slow.append((case, figure))
        print(
            f"| {case.viewer} | {'API' if case.api else 'page'} | {case.label} | {figure.rows} | {figure.queries} "
            f"| {p50:.1f} | {p95:.1f} | {harness.median(figure.ledger_ms):.1f} "
            f"| {'met' if p95 < TARGET_P95_MS else 'MISSED'} |"
        )
    return slow


def report(rows: int, loads: int, all_cases: list[Case], figures: dict[int, Figures]) -> None:
    from django.db import connection

    measured = [(case, figures[index]) for index, case in enumerate(all_cases)]
    print(
        f"Request log over {rows:,} ledger rows ({DAYS} days; org {ORG_SLUG!r} holds about "
        f"{1 - 2 * SMALL_ORG_SHARE:.0%}: {TEAMS} teams, {KEYS} keys, {len(ALIASES)} model aliases), PostgreSQL "
        f"{connection.pg_version // 10000}. Loads through the views (test client, in process), {loads} timed "
        f"per filter after {WARM_UP_ROUNDS} rounds of warm-up; ms. Without `since`, the last 24 hours.\n"
    )
    slow = table([(case, figure) for case, figure in measured if not case.month])
    pages = [ms for case, figure in measured if not case.api and not case.month for ms in figure.loads_ms]
    api = [ms for case, figure in measured if case.api for ms in figure.loads_ms]
    print(
        f"\nAll page loads above: p50 {harness.median(pages):.1f} ms, p95 {harness.percentile(pages, 0.95):.1f} ms "
        f"({len(pages)} loads); API: p50 {harness.median(api):.1f} ms, p95 {harness.percentile(api, 0.95):.1f} ms "
        f"({len(api)} loads). Target, every filter's p95 under {TARGET_P95_MS} ms: "
        f"{'met' if not slow else f'MISSED by {len(slow)}'}.\n"
    )
    print(f"Beyond the issue's filters: the same page over the last {DAYS} days (`since`).\n")
    slow += table([(case, figure) for case, figure in measured if case.month])
    for case, figure in slow:
        print(f"\n{case.viewer}, {'API' if case.api else 'page'}, {case.label}: {case.path}\n")
        for sql in figure.ledger_sql:
            shown = re.sub(r"^SELECT .*? FROM", "SELECT ... FROM", sql)  # the columns are the model's
            print(f"```\n{shown}\n\n{explain(sql)}\n```")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="ledger rows (default 10,000,000)")
    parser.add_argument("--refill", action="store_true", help="drop the kept database and fill it again")
    parser.add_argument("--loads", type=int, default=LOADS, help=f"timed loads per filter (default {LOADS})")
    arguments = parser.parse_args()
    name = database_name(arguments.rows)
    filled = None if arguments.refill else recorded_fill(name)
    # A fill that did not finish (or of another size) leaves no record: start again from empty.
    refill = filled is None or filled[0] != arguments.rows
    with kept_database(name, refill=refill):
        if refill:
            seed()
            anchor = fill(arguments.rows)
        else:
            anchor = filled[1]
            print(f"reusing {name}: {filled[0]:,} rows, filled up to {anchor:%Y-%m-%d %H:%M} UTC", file=sys.stderr)
        cast = read_cast(anchor)
        all_cases, figures = measure(cast, arguments.loads)
        report(arguments.rows, arguments.loads, all_cases, figures)


if __name__ == "__main__":
    main()

"""Reads of the request log, shared by the page, the API and exports: whose requests a principal
sees (`viewer_for`, `visible_requests`), what each filter means (`filter_requests`), keyset pages
on (occurred_at, request_id) newest first, and the labels a row is shown with (`Labeller`).

The log is the usage ledger (budgets.models.UsageRecord). Every read is of one org and, unless it
looks up one request id, of a time range (the last 24 hours by default), so PostgreSQL can walk
the ledger's (org, occurred_at) index newest first and stop after a page; a page never uses
OFFSET, so the thousandth page costs what the first does.
"""

import base64
import binascii
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import Http404

from budgets.models import UsageRecord
from keys.models import CallerKey, Provider
from orgs.access import OrgAccess, administered_teams, visible_keys
from orgs.models import Team
from sla.models import Deployment, SlaPolicy

PAGE_SIZE = 50
DEFAULT_WINDOW = timedelta(hours=24)
NEWEST_FIRST = ("-occurred_at", "-request_id")
OLDEST_FIRST = ("occurred_at", "request_id")
# status class -> (label, lowest status, first status above the class)
STATUS_CLASSES = {
    "2xx": ("2xx success", 200, 300),
    "4xx": ("4xx refused", 400, 500),
    "5xx": ("5xx failed", 500, 600),
}
MAX_REQUEST_ID = 64  # UsageRecord.request_id and client_request_id
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
PROVIDER_NAMES = dict(Provider.choices)


# Who sees what -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Viewer:
    """What one principal may read of an org's request log. Roles that read every key read every
    request; otherwise a developer reads the requests of the keys they hold and a team admin the
    requests of their teams. Cost shows where the usage page would show it: to roles that read
    spend, and to the members of the request's team (budgets.views.usage_access)."""

    request: object
    access: OrgAccess
    whole_org: bool
    own_user_id: int | None
    admin_team_ids: frozenset[uuid.UUID]
    cost_everywhere: bool
    cost_team_ids: frozenset[uuid.UUID]

    @property
    def org(self):
        return self.access.org

    def sees_cost(self, team_id) -> bool:
        return self.cost_everywhere or team_id in self.cost_team_ids

    @property
    def sees_any_cost(self) -> bool:
        return self.cost_everywhere or bool(self.cost_team_ids)


def viewer_for(request, access: OrgAccess) -> Viewer:
    """The principal's view of the log; 403 for whom it would always be empty (viewers)."""
    whole_org = access.can("keys.read")
    admin_team_ids: frozenset[uuid.UUID] = frozenset()
    own_user_id = None
    if not whole_org:
        admin_team_ids = frozenset(administered_teams(request, access).values_list("pk", flat=True))
        if not access.can("keys.own") and not admin_team_ids:
            raise PermissionDenied(f"Your role ({access.role}) may not read the request log.")
        # API tokens act through their role, not as a person: they hold no keys (orgs.access.visible_keys).
        own_user_id = access.actor.user_id if access.can("keys.own") else None
    cost_everywhere = access.can("spend.read")
    cost_team_ids: frozenset[uuid.UUID] = frozenset()
    if not cost_everywhere and access.actor.user_id is not None:
        members_of = Team.objects.filter(org=access.org, members=access.actor.user_id)
        cost_team_ids = frozenset(members_of.values_list("pk", flat=True))
    return Viewer(request, access, whole_org, own_user_id, admin_team_ids, cost_everywhere, cost_team_ids)


def visible_requests(viewer: Viewer) -> QuerySet:
    """The org's ledger rows this viewer may read."""
    records = UsageRecord.objects.filter(org=viewer.org)
    if viewer.whole_org:
        return records
    scopes = []
    if viewer.admin_team_ids:
        scopes.append(Q(team_id__in=sorted(viewer.admin_team_ids)))
    if viewer.own_user_id is not None:
        own_keys = CallerKey.objects.filter(org=viewer.org, user_id=viewer.own_user_id).values("pk")
        scopes.append(Q(key_id__in=own_keys))
    if not scopes:
        return records.none()
    scope = scopes[0]
    for other in scopes[1:]:
        scope |= other
    return records.filter(scope)


def find_request(viewer: Viewer, request_id: str) -> UsageRecord:
    """One request by the gateway's id; 404 when it does not exist or the viewer may not read it."""
    if len(request_id) > MAX_REQUEST_ID or "\x00" in request_id:
        raise Http404("No such request.")
    record = visible_requests(viewer).filter(request_id=request_id).first()
    if record is None:
        raise Http404("No such request.")
    return record


# Filters -------------------------------------------------------------------------------------


def time_window(cleaned: dict, now: datetime) -> tuple[datetime | None, datetime | None]:
    """(since, until) of RequestFilterForm's cleaned values: since defaults to 24 hours before
    `until` (or now), except when looking up a request id, which searches all time."""
    since, until = cleaned.get("since"), cleaned.get("until")
    if since is None and not cleaned.get("request_id"):
        end = until or now
        since = end - DEFAULT_WINDOW if end - EARLIEST > DEFAULT_WINDOW else EARLIEST
    return since, until


def filter_requests(records: QuerySet, cleaned: dict, now: datetime) -> QuerySet:
    """The rows of `records` matching RequestFilterForm's cleaned values (empty ones are skipped)."""
    since, until = time_window(cleaned, now)
    if since is not None:
        records = records.filter(occurred_at__gte=since)
    if until is not None:
        records = records.filter(occurred_at__lte=until)
    if request_id := cleaned.get("request_id"):
        # The gateway's id is the primary key; the caller's, which callers may reuse, has its own
        # partial index (org, client_request_id).
        records = records.filter(Q(request_id=request_id) | Q(client_request_id=request_id))
    for name, column in (("key", "key_id"), ("team", "team_id"), ("deployment", "deployment_id")):
        if cleaned.get(name):
            records = records.filter(**{column: cleaned[name]})
    if user := cleaned.get("user"):
        keys = CallerKey.objects.filter(user__uuid=user).values("pk")
        records = records.filter(key_id__in=keys)
    if model := cleaned.get("model"):
        records = records.filter(alias=model)
    if status := cleaned.get("status"):
        _label, low, high = STATUS_CLASSES[status]
        records = records.filter(status__gte=low, status__lt=high)
    if error_code := cleaned.get("error_code"):
        records = records.filter(error_code=error_code)
    return records


# Keyset pages --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cursor:
    occurred_at: datetime
    request_id: str


CURSOR_TEXT = re.compile(r"(-?\d{1,18}):(.+)", re.S)


def encode_cursor(record: UsageRecord) -> str:
    """An opaque, URL-safe cursor naming a row's place in the log's order."""
    micros = (record.occurred_at - EPOCH) // timedelta(microseconds=1)
    raw = f"{micros}:{record.request_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    """The place `text` names; ValueError for anything encode_cursor did not make."""
    if len(text) > 200:
        raise ValueError("cursor too long")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True).decode()
        match = CURSOR_TEXT.fullmatch(raw)
        if match is None:
            raise ValueError("not a cursor")
        occurred_at = EPOCH + timedelta(microseconds=int(match.group(1)))
    except (binascii.Error, UnicodeDecodeError, OverflowError) as error:
        raise ValueError("not a cursor") from error
    request_id = match.group(2)
    if len(request_id) > MAX_REQUEST_ID or "\x00" in request_id:
        raise ValueError("not a cursor")
    return Cursor(occurred_at, request_id)


def older_than(records: QuerySet, cursor: Cursor) -> QuerySet:
    # The first condition alone bounds the (org, occurred_at) index scan; the second breaks
    # ties between requests of the same microsecond.
    return records.filter(occurred_at__lte=cursor.occurred_at).filter(
        Q(occurred_at__lt=cursor.occurred_at) | Q(request_id__lt=cursor.request_id)
    )


def newer_than(records: QuerySet, cursor: Cursor) -> QuerySet:
    return records.filter(occurred_at__gte=cursor.occurred_at).filter(
        Q(occurred_at__gt=cursor.occurred_at) | Q(request_id__gt=cursor.request_id)
    )


@dataclass(frozen=True)
class KeysetPage:
    """Up to a page of rows, newest first, and the cursors the Older/Newer links start from
    (the attribute names templates/audit/_keyset_pagination.html reads)."""

    rows: list
    older_than: str | None
    newer_than: str | None
    cursor: bool  # the page starts somewhere other than the newest row

    @classmethod
    def empty(cls) -> "KeysetPage":
        return cls(rows=[], older_than=None, newer_than=None, cursor=False)


def keyset_page(
    records: QuerySet, *, before: Cursor | None = None, after: Cursor | None = None, size: int = PAGE_SIZE
) -> KeysetPage:
    """One page below `before`, above `after`, or from the newest: a LIMITed index scan and at
    most one EXISTS, however deep the page."""
    if after is not None:
        rows = list(newer_than(records, after).order_by(*OLDEST_FIRST)[: size + 1])
        has_newer = len(rows) > size
        page = rows[:size][::-1]
        has_older = bool(page) and older_than(records, cursor_of(page[-1])).exists()
    else:
        below = older_than(records, before) if before is not None else records
        rows = list(below.order_by(*NEWEST_FIRST)[: size + 1])
        has_older = len(rows) > size
        page = rows[:size]
        has_newer = before is not None and bool(page) and newer_than(records, cursor_of(page[0])).exists()
    return KeysetPage(
        rows=page,
        older_than=encode_cursor(page[-1]) if has_older else None,
        newer_than=encode_cursor(page[0]) if has_newer else None,
        cursor=before is not None or after is not None,
    )


def cursor_of(record: UsageRecord) -> Cursor:
    return Cursor(record.occurred_at, record.request_id)


# Labels --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyLabel:
    id: uuid.UUID
    name: str | None  # None: the key was deleted
    prefix: str | None
    linked: bool  # the viewer may open the key's page
    owner_uuid: uuid.UUID | None
    owner_email: str | None


@dataclass(frozen=True)
class DeploymentLabel:
    id: str
    name: str | None  # None: deleted since
    provider: str | None

    @property
    def provider_label(self) -> str | None:
        return PROVIDER_NAMES.get(self.provider, self.provider) if self.provider else None


@dataclass(frozen=True)
class Attempt:
    """One upstream attempt and why it happened: the first, a retry of the same deployment or a
    fallback to another, after the previous attempt's status and error (and, where the gateway
    recorded it, the SLA policy's retry condition that matched: timeout, 429 or 5xx)."""

    number: int
    deployment: DeploymentLabel | None
    provider: str | None  # as recorded when it ran; else the deployment's now
    status: int
    error_code: str
    latency_ms: float
    kind: str  # "first", "retry" or "fallback"
    after_status: int | None
    after_error_code: str
    after_condition: str | None

    @property
    def provider_label(self) -> str | None:
        return PROVIDER_NAMES.get(self.provider, self.provider) if self.provider else None

    @property
    def reason(self) -> str:
        if self.kind == "first":
            return "First attempt"
        cause = " ".join(str(part) for part in (self.after_status or "", self.after_error_code) if part)
        verb = "Retried" if self.kind == "retry" else "Fell back"
        text = f"{verb} after {cause or 'a failure'}"
        return f"{text} (retry condition {self.after_condition})" if self.after_condition else text


def _uuid_or_none(value) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def _attempt_dicts(record: UsageRecord) -> list[dict]:
    return [attempt for attempt in (record.attempts or []) if isinstance(attempt, dict)]


class Labeller:
    """Names for the keys, teams and deployments of rows, fetched a batch at a time and kept, so
    a page costs the same few queries for one row as for fifty, and an export a few per chunk."""

    def __init__(self, viewer: Viewer) -> None:
        self.viewer = viewer
        self.keys: dict[uuid.UUID, KeyLabel] = {}
        self.teams: dict[uuid.UUID, str | None] = {}
        self.deployments: dict[uuid.UUID, DeploymentLabel] = {}

    def label(self, records: Iterable[UsageRecord]) -> list[UsageRecord]:
        """Give each record key_label, team_name, deployment_label, attempt_list and
        cost_shown (None where the viewer may not see it)."""
        records = list(records)
        self._fetch(records)
        for record in records:
            record.key_label = self.keys[record.key_id]
            record.team_name = self.teams.get(record.team_id)
            record.deployment_label = self._deployment(record.deployment_id)
            record.attempt_list = self._attempts(record)
            record.cost_shown = record.cost if self.viewer.sees_cost(record.team_id) else None
        return records

    def _fetch(self, records: list[UsageRecord]) -> None:
        org = self.viewer.org
        key_ids = {record.key_id for record in records} - set(self.keys)
        if key_ids:
            keys = CallerKey.objects.filter(org=org, pk__in=key_ids)
            found = {key.pk: key for key in keys.select_related("user")}
            linked = set(found) if self.viewer.whole_org else set()
            if found and not self.viewer.whole_org:
                readable = visible_keys(self.viewer.request, self.viewer.access, keys)
                linked = set(readable.values_list("pk", flat=True))
            for key_id in key_ids:
                key = found.get(key_id)
                owner = key.user if key is not None else None
                self.keys[key_id] = KeyLabel(
                    id=key_id,
                    name=key.name if key else None,
                    prefix=key.prefix if key else None,
                    linked=key_id in linked,
                    owner_uuid=owner.uuid if owner else None,
                    owner_email=owner.email if owner else None,
                )
        team_ids = {record.team_id for record in records} - set(self.teams)
        if team_ids:
            names = dict(Team.objects.filter(org=org, pk__in=team_ids).values_list("pk", "name"))
            self.teams.update({team_id: names.get(team_id) for team_id in team_ids})
        deployment_ids = {record.deployment_id for record in records if record.deployment_id}
        for record in records:
            deployment_ids |= {_uuid_or_none(attempt.get("deployment_id")) for attempt in _attempt_dicts(record)}
        deployment_ids -= {None, *self.deployments}
        if deployment_ids:
            rows = Deployment.objects.filter(org=org, pk__in=deployment_ids).values_list(
                "pk", "name", "credential__provider"
            )
            found_deployments = {pk: (name, provider) for pk, name, provider in rows}
            for deployment_id in deployment_ids:
                name, provider = found_deployments.get(deployment_id, (None, None))
                self.deployments[deployment_id] = DeploymentLabel(str(deployment_id), name, provider)

    def _deployment(self, deployment_id) -> DeploymentLabel | None:
        parsed = _uuid_or_none(deployment_id) if deployment_id else None
        if parsed is None:
            return None
        return self.deployments.get(parsed) or DeploymentLabel(str(parsed), None, None)

    def _attempts(self, record: UsageRecord) -> list[Attempt]:
        """The record's attempts, in order. Attempts recorded since issue 15 carry their provider,
        and after the first their reason and the retry condition; older ones are read the same
        way from the attempt before them."""
        attempts: list[Attempt] = []
        previous: dict | None = None
        for number, attempt in enumerate(_attempt_dicts(record), start=1):
            deployment_id = str(attempt.get("deployment_id") or "")
            deployment = self._deployment(deployment_id) if deployment_id else None
            kind = "first"
            if previous is not None:
                recorded = attempt.get("reason")
                kind = recorded if recorded in ("retry", "fallback") else ""
                kind = kind or ("retry" if deployment_id == str(previous.get("deployment_id") or "") else "fallback")
            attempts.append(
                Attempt(
                    number=number,
                    deployment=deployment,
                    provider=str(attempt.get("provider") or "") or (deployment.provider if deployment else None),
                    status=int(attempt.get("status") or 0),
                    error_code=str(attempt.get("error_code") or ""),
                    latency_ms=float(attempt.get("latency_ms") or 0),
                    kind=kind,
                    after_status=None if previous is None else int(previous.get("status") or 0),
                    after_error_code="" if previous is None else str(previous.get("error_code") or ""),
                    after_condition=None if previous is None else (str(attempt.get("after") or "") or None),
                )
            )
            previous = attempt
        return attempts


def sla_policy_for(org, team_id) -> SlaPolicy | None:
    """The policy the gateway applies to a team's requests: the team's own, else the org's default."""
    policies = SlaPolicy.objects.filter(org=org).filter(Q(team_id=team_id) | Q(team__isnull=True))
    return min(policies, key=lambda policy: policy.team_id is None, default=None)


def client_details(record: UsageRecord) -> tuple[str | None, str]:
    """(client IP, user agent), as the gateway saw them (gateway/usage.py)."""
    return record.client_ip or None, record.user_agent or ""


def cost_text(cost: Decimal | None) -> str | None:
    return None if cost is None else f"{cost:.6f}"

"""Searching the audit trail: every filter on the page and the API (they share AuditFilterForm and
filter_events), keyset pages that cover the trail exactly once while events arrive, hostile input
that gives field errors or no results but never a 500, and the page of one event."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit.context import Actor, RequestMeta, request_meta
from audit.filters import filter_events
from audit.forms import AuditFilterForm
from audit.models import AuditEvent
from audit.services import record_event
from keys.services import issue_key, revoke_key
from orgs.services import create_team, update_team
from tests.conftest import SYSTEM

pytestmark = pytest.mark.django_db

AUDIT_URL = "/orgs/acme/audit/"
ROBOT = Actor(kind="token", id="tok-42", label="API token release-bot")


def api_url(org_slug: str = "acme") -> str:
    return reverse("api:audit:event-list", args=[org_slug])


def event_url(event) -> str:
    return reverse("audit:event_detail", kwargs={"org_slug": event.org.slug, "event_uuid": event.uuid})


def record(org, action="test.event", *, actor=SYSTEM, ip=None, at=None, **fields) -> AuditEvent:
    token = request_meta.set(RequestMeta(ip=ip, user_agent="probe/1.0", request_id="req-search"))
    try:
        event = record_event(actor=actor, org=org, action=action, **fields)
    finally:
        request_meta.reset(token)
    if at is not None:
        # The trigger forbids UPDATE: give the event its time by re-reading it with a stand-in.
        event.created_at = at
    return event


def sequences(response) -> list[int]:
    if response["Content-Type"].startswith("application/json"):
        return [row["sequence"] for row in response.json()["results"]]
    return [
        int(s) for s in re.findall(r"<span class=\"visually-hidden\"> event (\d+)</span>", response.content.decode())
    ]


def matching(org, **query) -> list[int]:
    return list(
        AuditEvent.objects.filter(org=org, **query).order_by("-sequence").values_list("sequence", flat=True)[:50]
    )


@pytest.fixture
def trail(org, team, actors):
    """A small varied trail: team and key events, a robot's actions from two networks."""
    key, _ = issue_key(actor=actors["admin"], team=team, name="ci key")
    other_team = create_team(actor=SYSTEM, org=org, name="Data science")
    other_key, _ = issue_key(actor=SYSTEM, team=other_team, name="notebook key")
    record(org, "key.updated", actor=ROBOT, ip="203.0.113.7", target_type="caller_key", target_id=str(key.pk))
    record(org, "member.role_changed", actor=ROBOT, ip="198.51.100.20", target_type="member", target_id="u-1")
    record(org, "member.removed", actor=ROBOT, ip="2001:db8::5", target_type="member", target_label="Ops O'Brien")
    revoke_key(actor=actors["owner"], key=other_key)
    update_team(actor=actors["admin"], team=team, name="Platform Core", description="")
    return {"team": team, "key": key, "other_team": other_team, "other_key": other_key}


# Each filter, on the page and the API --------------------------------------------------------


def both(client_for, query: dict) -> tuple[list[int], list[int]]:
    client = client_for("auditor")
    page = client.get(AUDIT_URL, query)
    api = client.get(api_url(), query)
    assert (page.status_code, api.status_code) == (200, 200)
    return sequences(page), sequences(api)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"action": "member.removed"}, {"action": "member.removed"}),
        ({"action": "member."}, {"action__startswith": "member."}),
        ({"action": "member"}, {"action": "member"}),  # no dot: exact, so nothing
        ({"actor": "release-bot"}, {"actor_label__icontains": "release-bot"}),
        ({"actor": "tok-42"}, {"actor_id": "tok-42"}),
        ({"actor": "ADMIN@acme"}, {"actor_label__icontains": "admin@acme"}),
        ({"target_type": "member"}, {"target_type": "member"}),
        ({"target": "u-1"}, {"target_id": "u-1"}),
        ({"q": "o'brien"}, {"target_label__icontains": "o'brien"}),
        ({"ip": "203.0.113.7"}, {"ip": "203.0.113.7"}),
        ({"ip": "198.51.100.0/24"}, {"ip": "198.51.100.20"}),
        ({"ip": "2001:db8::/32"}, {"ip": "2001:db8::5"}),
        ({"ip": "10.0.0.0/8"}, {"ip": "10.9.9.9"}),
    ],
)
def test_each_filter_on_the_page_and_the_api(org, trail, client_for, query, expected):
    page, api = both(client_for, query)
    assert page == api == matching(org, **expected)


def test_filters_that_match_find_something(org, trail):
    """The table above must not pass by matching nothing everywhere."""
    for query in [{"action__startswith": "member."}, {"actor_id": "tok-42"}, {"ip": "198.51.100.20"}]:
        assert matching(org, **query)


def test_team_finds_the_team_and_its_keys_events_only(org, trail, client_for):
    team, key, other_key = trail["team"], trail["key"], trail["other_key"]
    page, api = both(client_for, {"team": str(team.pk)})
    wanted = AuditEvent.objects.filter(org=org, target_type="team", target_id=str(team.pk)) | AuditEvent.objects.filter(
        org=org, target_type="caller_key", target_id=str(key.pk)
    )
    assert page == api == list(wanted.order_by("-sequence").values_list("sequence", flat=True))
    actions = set(AuditEvent.objects.filter(sequence__in=api, org=org).values_list("action", flat=True))
    assert {"team.created", "team.updated", "key.issued", "key.updated"} <= actions
    assert not AuditEvent.objects.filter(org=org, sequence__in=api, target_id=str(other_key.pk)).exists()


def test_team_of_another_org_finds_nothing(org, other_org, trail, client_for):
    foreign = other_org.teams.get()
    assert both(client_for, {"team": str(foreign.pk)}) == ([], [])


def test_time_range(org, client_for):
    client = client_for("auditor")
    now = datetime.now(tz=UTC)
    today = now.date().isoformat()
    tomorrow = (now + timedelta(days=1)).date().isoformat()
    everything = matching(org)
    assert sequences(client.get(AUDIT_URL, {"since": today})) == everything
    assert sequences(client.get(api_url(), {"until": today})) == everything  # a date is its whole day
    assert sequences(client.get(AUDIT_URL, {"since": tomorrow})) == []
    assert sequences(client.get(api_url(), {"until": "2000-01-01"})) == []
    assert sequences(client.get(api_url(), {"since": "2000-01-01T00:00:00+05:00", "until": tomorrow})) == everything
    naive_past = (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    assert sequences(client.get(api_url(), {"since": naive_past})) == everything  # naive means UTC
    assert sequences(client.get(api_url(), {"until": naive_past})) == []


def test_the_form_reads_times_as_utc():
    form = AuditFilterForm({"since": "2025-03-01", "until": "2025-03-31T12:00:00+02:00"})
    assert form.is_valid(), form.errors
    assert form.cleaned_data["since"] == datetime(2025, 3, 1, tzinfo=UTC)
    assert form.cleaned_data["until"] == datetime(2025, 3, 31, 10, tzinfo=UTC)
    form = AuditFilterForm({"until": "2025-03-31"})
    assert form.is_valid()
    assert form.cleaned_data["until"] == datetime(2025, 3, 31, 23, 59, 59, 999999, tzinfo=UTC)


def test_combined_filters(org, trail, client_for):
    query = {"actor": "release-bot", "action": "member.", "ip": "198.51.100.0/22", "since": "2000-01-01"}
    page, api = both(client_for, query)
    assert page == api == matching(org, action="member.role_changed")
    assert len(api) == 1
    assert both(client_for, {**query, "target_type": "caller_key"}) == ([], [])


def test_filter_events_is_usable_alone(org, trail):
    form = AuditFilterForm({"action": "key.", "team": str(trail["team"].pk)})
    assert form.is_valid()
    found = filter_events(AuditEvent.objects.filter(org=org), form.cleaned_data)
    assert set(found.values_list("action", flat=True)) == {"key.issued", "key.updated"}


# Keyset pages ---------------------------------------------------------------------------------


def add_events(org, count: int, start: int = 0) -> None:
    for number in range(start, start + count):
        record(org, "bulk.event", target_type="thing", target_id=str(number), target_label=f"thing {number}")


def test_page_keyset_links_cover_the_trail_once_while_events_arrive(org, client_for):
    add_events(org, 120)
    client = client_for("auditor")
    total_before = AuditEvent.objects.filter(org=org).count()
    response = client.get(AUDIT_URL, {"action": "bulk."})
    seen = sequences(response)
    add_events(org, 7, start=1000)  # newer events must not shift the older pages
    pages = 1
    while match := re.search(r'href="\?([^"]*)" rel="next"', response.content.decode()):
        response = client.get(AUDIT_URL + "?" + match.group(1).replace("&amp;", "&"))
        assert response.status_code == 200
        assert len(sequences(response)) <= 50
        seen += sequences(response)
        pages += 1
    assert pages == 3
    assert seen == sorted(seen, reverse=True)
    assert seen == list(
        AuditEvent.objects.filter(org=org, action="bulk.event", sequence__lte=max(seen))
        .order_by("-sequence")
        .values_list("sequence", flat=True)
    )
    assert len(seen) == 120 and total_before > 120
    # Walking back up from the oldest page with ?after= reaches the new events, pages newest first.
    back = sequences(response)
    while match := re.search(r'href="\?([^"]*)" rel="prev"', response.content.decode()):
        response = client.get(AUDIT_URL + "?" + match.group(1).replace("&amp;", "&"))
        page = sequences(response)
        assert page == sorted(page, reverse=True) and len(page) <= 50
        back = page + back
    everything = AuditEvent.objects.filter(org=org, action="bulk.event").order_by("-sequence")
    assert back == list(everything.values_list("sequence", flat=True))
    assert len(back) == 127


def test_page_query_count_is_constant_however_deep(org, client_for):
    client = client_for("auditor")
    client.get(AUDIT_URL)

    def count(query: dict) -> int:
        with CaptureQueriesContext(connection) as queries:
            assert client.get(AUDIT_URL, query).status_code == 200
        return len(queries)

    add_events(org, 5)
    few = count({"team": "9b2d3c7e-0000-4000-8000-000000000000", "ip": "10.0.0.0/8"})
    first_page, deep_page = count({}), None
    add_events(org, 150, start=5)
    assert count({"team": "9b2d3c7e-0000-4000-8000-000000000000", "ip": "10.0.0.0/8"}) == few
    assert count({}) == first_page
    deep_page = count({"before": 20})
    assert count({"before": 120}) == deep_page
    assert count({"after": 20}) == count({"after": 60})


def test_no_offset_and_no_count_of_the_table(org, client_for):
    client = client_for("auditor")
    add_events(org, 60)
    with CaptureQueriesContext(connection) as queries:
        client.get(AUDIT_URL, {"before": 30, "actor": "tests"})
    audit_sql = [q["sql"].upper() for q in queries.captured_queries if "AUDIT_AUDITEVENT" in q["sql"].upper()]
    assert audit_sql
    assert not any("OFFSET" in sql or "COUNT(" in sql for sql in audit_sql)


# Bad input -----------------------------------------------------------------------------------

# A NUL byte is a field error instead (tests/audit/test_nul_filters.py).
HOSTILE_TEXT = ["' OR 1=1 --", "<script>alert(1)</script>", "x" * 10_000, "%", "\u202e", "🙂"]


@pytest.mark.parametrize("field", ["actor", "action", "target_type", "target", "q"])
@pytest.mark.parametrize("value", HOSTILE_TEXT, ids=range(len(HOSTILE_TEXT)))
def test_hostile_text_finds_nothing_and_never_fails(org, trail, client_for, field, value):
    client = client_for("auditor")
    page = client.get(AUDIT_URL, {field: value})
    assert page.status_code == 200
    assert sequences(page) == []
    assert "<script>" not in page.content.decode().split("<main", 1)[1]
    api = client.get(api_url(), {field: value})
    assert (api.status_code, api.json()) == (200, {"next": None, "results": []})


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"since": "yesterday"}, "since"),
        ({"since": "2025-13-01"}, "since"),
        ({"until": "2025-02-30T10:00"}, "until"),
        ({"since": "2025-01-01\x00"}, "since"),
        ({"since": "1" * 10_000}, "since"),
        ({"since": "2025-03-02", "until": "2025-03-01"}, "until"),
        ({"since": "2025-03-01T12:00Z", "until": "2025-03-01T11:59Z"}, "until"),
        ({"ip": "' OR 1=1 --"}, "ip"),
        ({"ip": "300.1.1.1"}, "ip"),
        ({"ip": "10.0.0.0/33"}, "ip"),
        ({"ip": "<script>"}, "ip"),
        ({"team": "' OR 1=1 --"}, "team"),
        ({"team": "x" * 10_000}, "team"),
    ],
)
def test_malformed_values_are_field_errors(org, client_for, query, field):
    client = client_for("auditor")
    page = client.get(AUDIT_URL, query)
    assert page.status_code == 400
    html = page.content.decode()
    assert f'id="id_{field}_error"' in html  # next to its field, tied to it by aria-describedby
    assert "<script>" not in html.split("<main", 1)[1]
    api = client.get(api_url(), query)
    assert api.status_code == 400
    assert list(api.json()) == [field]


def test_an_inverted_range_says_so(org, client_for):
    response = client_for("auditor").get(api_url(), {"since": "2025-03-02", "until": "2025-03-01"})
    assert response.json() == {"until": ["The end of the range is before its start."]}
    assert client_for("auditor").get(api_url(), {"since": "2025-03-01", "until": "2025-03-01"}).status_code == 200


@pytest.mark.parametrize("query", [{"before": "abc"}, {"after": "-1"}, {"before": "1" * 30}, {"before": 5, "after": 2}])
def test_bad_page_cursors_are_400_on_the_page(org, client_for, query):
    response = client_for("auditor").get(AUDIT_URL, query)
    assert response.status_code == 400
    assert "Go to the newest events" in response.content.decode()


# The event page -------------------------------------------------------------------------------


def test_event_page_shows_everything_and_links_to_the_target(org, trail, client_for):
    event = record(
        org,
        "team.updated",
        actor=ROBOT,
        ip="203.0.113.9",
        target=trail["team"],
        diff={"name": {"before": "Platform", "after": "Platform Core"}, "note": [1, 2]},
    )
    response = client_for("auditor").get(event_url(event))
    assert response.status_code == 200
    html = response.content.decode()
    team_url = reverse("orgs:team_detail", kwargs={"org_slug": "acme", "team_id": trail["team"].pk})
    for expected in [
        "API token release-bot",
        "tok-42",
        "203.0.113.9",
        "probe/1.0",
        "req-search",
        f"Event #{event.sequence}",
        event.hash,
        event.prev_hash,
        f'<a href="{team_url}">{event.target_label}</a>',
        '<td class="diff-before">Platform</td><td class="diff-after">Platform Core</td>',
        f"?target={trail['team'].pk}",
    ]:
        assert expected in html, expected


def test_event_page_does_not_link_what_is_gone_or_unknown(org, client_for):
    gone = record(org, "team.deleted", target_type="team", target_id="4c1d3c7e-0000-4000-8000-000000000000")
    odd = record(org, "thing.done", target_type="caller_key", target_id="not-a-uuid", target_label="odd")
    client = client_for("auditor")
    for event in (gone, odd):
        response = client.get(event_url(event))
        assert response.status_code == 200
        assert "/teams/" not in response.content.decode().split("<main", 1)[1].split("Changes", 1)[0]
    assert "This event records no field changes." in client.get(event_url(odd)).content.decode()


def test_event_rows_link_to_their_page_for_audit_readers(org, client_for):
    newest = AuditEvent.objects.filter(org=org).order_by("-sequence").first()
    assert event_url(newest) in client_for("auditor").get(AUDIT_URL).content.decode()


@pytest.mark.parametrize(
    ("role", "status"),
    [("owner", 200), ("admin", 200), ("auditor", 200), ("finance", 403), ("developer", 403), ("viewer", 403)],
)
def test_event_page_needs_audit_read(org, client_for, role, status):
    event = AuditEvent.objects.filter(org=org).first()
    assert client_for(role).get(event_url(event)).status_code == status


def test_event_page_is_404_for_outsiders_other_orgs_and_unknown_ids(org, other_org, client_for):
    ours = AuditEvent.objects.filter(org=org).first()
    theirs = AuditEvent.objects.filter(org=other_org).first()
    assert client_for("outsider").get(event_url(ours)).status_code == 404
    foreign = reverse("audit:event_detail", kwargs={"org_slug": "acme", "event_uuid": theirs.uuid})
    assert client_for("owner").get(foreign).status_code == 404
    assert client_for("owner").get(AUDIT_URL + "9b2d3c7e-0000-4000-8000-000000000000/").status_code == 404
    assert client_for("owner").get(AUDIT_URL + "not-a-uuid/").status_code == 404


# History links ---------------------------------------------------------------------------------


def test_history_link_partial_is_for_audit_readers_only(org, team, rf):
    from django.template.loader import render_to_string

    context = {"current_org": org, "target": team.pk, "noun": "team"}
    link = render_to_string("audit/_history_link.html", {**context, "current_caps": {"audit.read"}})
    assert f'href="/orgs/acme/audit/?target={team.pk}"' in link
    assert "History of this team" in link
    assert render_to_string("audit/_history_link.html", {**context, "current_caps": set()}).strip() == ""

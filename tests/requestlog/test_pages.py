"""The request log page and the detail page: who sees which requests (and their cost), what each
filter selects, keyset pages through equal timestamps, the attempts timeline, and a query count
that does not grow with the rows."""

import html
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from orgs.services import set_team_admin
from sla.policies import create_policy
from tests.conftest import SYSTEM
from tests.orgs.test_views import assert_every_control_labelled, field_error, text

from .conftest import NOW, make_record, url

pytestmark = pytest.mark.django_db

REQUEST_LINK = re.compile(r'href="/orgs/acme/requests/([^/"]+)/"')


def listed(response) -> list[str]:
    """The request ids the page lists, in order."""
    assert response.status_code == 200, response.status_code
    return REQUEST_LINK.findall(text(response))


def link(response, rel: str) -> str | None:
    """The Newer (prev) or Older (next) link: a query string on the list page."""
    found = re.search(rf'<a [^>]*href="([^"]+)" rel="{rel}"', text(response))
    return url("list") + html.unescape(found.group(1)) if found else None


# Who sees what ------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["owner", "admin", "finance", "auditor"])
def test_roles_that_read_every_key_see_the_whole_org(one_each, signed_in, role):
    expected = [one_each[name].request_id for name in ("mine", "platform_ci", "notebooks", "old_data_key")]
    assert listed(signed_in(role).get(url("list"))) == expected


def test_a_developer_sees_only_requests_made_with_their_own_keys(one_each, signed_in):
    """Not the team's service key, not another team's keys; their key in a team they left, yes."""
    assert listed(signed_in("developer").get(url("list"))) == [
        one_each["mine"].request_id,
        one_each["old_data_key"].request_id,
    ]


def test_a_developer_cannot_see_another_teams_requests(one_each, signed_in):
    assert listed(signed_in("data-dev").get(url("list"))) == [one_each["notebooks"].request_id]


def test_a_team_admin_sees_their_teams_requests(one_each, signed_in):
    """Lead is a viewer by org role, and team admin of Data: every Data request, whoever's key."""
    assert listed(signed_in("lead").get(url("list"))) == [
        one_each["notebooks"].request_id,
        one_each["old_data_key"].request_id,
    ]


def test_a_developer_who_is_also_team_admin_sees_the_team_and_their_own(one_each, signed_in, people, team):
    set_team_admin(actor=SYSTEM, team=team, user=people["developer"], team_admin=True)
    assert listed(signed_in("developer").get(url("list"))) == [
        one_each["mine"].request_id,
        one_each["platform_ci"].request_id,
        one_each["old_data_key"].request_id,
    ]


def test_a_viewer_is_refused(one_each, signed_in):
    assert signed_in("viewer").get(url("list")).status_code == 403


def test_an_outsider_gets_404(one_each, signed_in):
    assert signed_in("outsider").get(url("list")).status_code == 404


def test_the_navigation_links_the_log_for_those_who_may_read_it(one_each, signed_in):
    assert url("list") in text(signed_in("developer").get(url("list")))
    dashboard = reverse("orgs:dashboard", kwargs={"org_slug": "acme"})
    assert url("list") not in text(signed_in("viewer").get(dashboard))


# Cost ---------------------------------------------------------------------------------------


def test_roles_that_read_spend_see_every_cost(one_each, signed_in):
    page = text(signed_in("finance").get(url("list")))
    assert page.count("$0.00045") == 4 and "Hidden" not in page


def test_a_developer_sees_the_cost_of_their_teams_requests_only(one_each, signed_in):
    """As on the usage page: a team's spend is for its members. The developer left Data, so the
    request of their old Data key shows without its cost."""
    response = signed_in("developer").get(url("list"))
    rows = text(response).split("<tr>")[2:]
    assert "$0.00045" in rows[0] and "Hidden" not in rows[0]
    assert "$0.00045" not in rows[1] and "Hidden" in rows[1]
    detail = text(signed_in("developer").get(url("detail", request_id=one_each["old_data_key"].request_id)))
    assert "$0.00045" not in detail and "Hidden: your role does not read this spend" in detail


def test_a_team_admin_sees_the_cost_of_their_teams_requests(one_each, signed_in):
    assert text(signed_in("lead").get(url("list"))).count("$0.00045") == 2


# Filters ------------------------------------------------------------------------------------


@pytest.fixture
def varied(keys, routes):
    deployment = routes["claude-sonnet"].deployments.get()
    return {
        "ok": make_record(keys.mine, at=NOW - timedelta(minutes=5), client_request_id="caller-7"),
        "refused": make_record(keys.platform_ci, at=NOW - timedelta(minutes=6), status=429, error_code="rate_limited"),
        "failed": make_record(
            keys.notebooks,
            at=NOW - timedelta(minutes=7),
            status=502,
            error_code="upstream_error",
            alias="claude-sonnet",
            deployment_id=deployment.pk,
        ),
        "old": make_record(keys.mine, at=NOW - timedelta(hours=30)),
    }


def filtered(client, **query) -> list[str]:
    return listed(client.get(url("list"), query))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, ["ok", "refused", "failed"]),  # the last 24 hours
        ({"status": "2xx"}, ["ok"]),
        ({"status": "4xx"}, ["refused"]),
        ({"status": "5xx"}, ["failed"]),
        ({"error_code": "upstream_error"}, ["failed"]),
        ({"model": "claude-sonnet"}, ["failed"]),
        ({"request_id": "caller-7"}, ["ok"]),  # the caller's own id
        ({"since": "2000-01-01"}, ["ok", "refused", "failed", "old"]),
    ],
)
def test_each_filter_selects_its_requests(varied, signed_in, query, expected):
    ids = [varied[name].request_id for name in expected]
    assert filtered(signed_in("admin"), **query) == ids


def test_filters_by_key_team_user_and_deployment(varied, keys, routes, people, data_team, signed_in):
    admin = signed_in("admin")
    ids = {name: record.request_id for name, record in varied.items()}
    assert filtered(admin, key=str(keys.platform_ci.pk)) == [ids["refused"]]
    assert filtered(admin, team=str(data_team.pk)) == [ids["failed"]]
    assert filtered(admin, user=str(people["developer"].uuid)) == [ids["ok"]]
    assert filtered(admin, user=str(people["data-dev"].uuid)) == [ids["failed"]]
    deployment = routes["claude-sonnet"].deployments.get()
    assert filtered(admin, deployment=str(deployment.pk)) == [ids["failed"]]


def test_a_request_id_is_found_at_any_age(varied, signed_in):
    assert filtered(signed_in("admin"), request_id=varied["old"].request_id) == [varied["old"].request_id]


def test_a_time_range_bounds_the_requests(varied, signed_in):
    since = (NOW - timedelta(minutes=6, seconds=30)).isoformat()
    until = (NOW - timedelta(minutes=5, seconds=30)).isoformat()
    assert filtered(signed_in("admin"), since=since, until=until) == [varied["refused"].request_id]


def test_filters_never_widen_what_a_developer_sees(varied, signed_in, keys):
    developer = signed_in("developer")
    assert filtered(developer, key=str(keys.notebooks.pk)) == []
    assert filtered(developer, request_id=varied["failed"].request_id) == []


def test_bad_filters_are_shown_next_to_their_field(signed_in, one_each):
    response = signed_in("admin").get(url("list"), {"since": "yesterday", "status": "3xx", "key": "nope"})
    assert response.status_code == 400
    assert "Enter a date" in field_error(response, "id_since")
    assert "Choose 2xx, 4xx or 5xx" in field_error(response, "id_status")
    assert "Choose one from the list" in field_error(response, "id_key")


def test_a_range_that_ends_before_it_starts_is_refused(signed_in, one_each):
    response = signed_in("admin").get(url("list"), {"since": "2025-03-02", "until": "2025-03-01"})
    assert response.status_code == 400
    assert "before its start" in field_error(response, "id_until")


def test_the_filter_form_offers_only_what_the_viewer_may_see(one_each, signed_in):
    page = text(signed_in("developer").get(url("list")))
    assert "dev laptop" in page and "old data key" in page
    assert "notebooks" not in page and "platform ci" not in page


def test_every_control_is_labelled(one_each, signed_in):
    assert_every_control_labelled(signed_in("admin").get(url("list")))


# Keyset pages -------------------------------------------------------------------------------


def test_pages_walk_through_equal_timestamps_without_gaps_or_repeats(keys, signed_in):
    """120 requests in the same microsecond, 3 before and after: the ties break on request id."""
    moment = NOW - timedelta(minutes=10)
    same = [make_record(keys.mine, at=moment, request_id=f"tie-{index:03d}") for index in range(120)]
    newer = [make_record(keys.mine, at=moment + timedelta(microseconds=index + 1)) for index in range(3)]
    older = [make_record(keys.mine, at=moment - timedelta(microseconds=index + 1)) for index in range(3)]
    expected = [r.request_id for r in reversed(newer)] + sorted((r.request_id for r in same), reverse=True)
    expected += [r.request_id for r in older]

    client = signed_in("developer")
    pages, response = [], client.get(url("list"))
    while True:
        pages.append(listed(response))
        older_link = link(response, "next")
        if older_link is None:
            break
        response = client.get(older_link)
    assert [len(page) for page in pages] == [50, 50, 26]
    assert [request_id for page in pages for request_id in page] == expected

    back = client.get(link(response, "prev"))  # "Newer" from the last page
    assert listed(back) == pages[1]


def test_a_broken_page_link_says_so(one_each, signed_in):
    response = signed_in("admin").get(url("list"), {"before": "not-a-cursor"})
    assert response.status_code == 400
    assert "This page link is not valid" in text(response)


def test_the_query_count_does_not_grow_with_the_rows(keys, routes, signed_in, django_assert_num_queries):
    deployment = routes["gpt-4o"].deployments.get()
    make_record(keys.mine, deployment_id=deployment.pk)
    client = signed_in("developer")
    with CaptureQueriesContext(connection) as few:
        assert client.get(url("list")).status_code == 200
    for index in range(30):
        make_record(keys.mine, deployment_id=deployment.pk, at=NOW - timedelta(minutes=index + 2))
        make_record(keys.old_data_key, at=NOW - timedelta(minutes=index + 2))
    with django_assert_num_queries(len(few)):
        assert len(listed(client.get(url("list")))) == 50


# Detail -------------------------------------------------------------------------------------


@pytest.fixture
def retried(keys, routes, org, team):
    """A request that timed out on gpt-4o's deployment, was retried there (503), then fell back
    to claude-sonnet's, which answered."""
    first = routes["gpt-4o"].deployments.get()
    second = routes["claude-sonnet"].deployments.get()
    attempts = [
        {"deployment_id": str(first.pk), "status": 0, "error_code": "upstream_timeout", "latency_ms": 5000.0},
        {"deployment_id": str(first.pk), "status": 503, "error_code": "upstream_error", "latency_ms": 40.5},
        {
            "deployment_id": str(second.pk),
            "provider": "anthropic",
            "status": 200,
            "error_code": "",
            "latency_ms": 700.0,
            "reason": "fallback",
            "after": "5xx",
        },
    ]
    return make_record(
        keys.mine,
        deployment_id=second.pk,
        attempts=attempts,
        client_request_id="caller-42",
        cost=Decimal("0.012300"),
        stream=True,
    )


def test_the_detail_page_shows_every_field_and_the_attempts(retried, signed_in, org, team):
    policy = create_policy(actor=SYSTEM, org=org, name="Team SLA", team=team)
    create_policy(actor=SYSTEM, org=org, name="Org default")
    response = signed_in("admin").get(url("detail", request_id=retried.request_id))
    assert response.status_code == 200
    page = text(response)
    for shown in (retried.request_id, "caller-42", "gpt-4o", "chat.completions", "$0.0123", "gw-1", "812.5 ms"):
        assert shown in page
    assert "dev laptop" in page and "developer@acme.test" in page and "Platform" in page
    assert f"/orgs/acme/keys/{retried.key_id}/" in page
    assert f"/orgs/acme/teams/{team.pk}/" in page
    assert f"/orgs/acme/deployments/{retried.deployment_id}/" in page
    assert f"/orgs/acme/sla-policies/{policy.pk}/" in page and "the team's own policy" in page
    timeline = page[page.index('id="attempts-title"') :]
    assert timeline.index("First attempt") < timeline.index("Retried after upstream_timeout")
    assert "Fell back after 503 upstream_error (retry condition 5xx)" in timeline
    assert "No answer" in timeline and "Anthropic" in timeline


def test_without_a_team_policy_the_org_default_applies(retried, signed_in, org):
    policy = create_policy(actor=SYSTEM, org=org, name="Org default")
    page = text(signed_in("auditor").get(url("detail", request_id=retried.request_id)))
    assert f"/orgs/acme/sla-policies/{policy.pk}/" in page and "the organization's default" in page


def test_a_developer_sees_their_request_without_links_their_role_cannot_open(retried, signed_in, org):
    create_policy(actor=SYSTEM, org=org, name="Org default")
    page = text(signed_in("developer").get(url("detail", request_id=retried.request_id)))
    assert "claude-sonnet deployment" in page and "Org default" in page and "$0.0123" in page
    assert "/deployments/" not in page and "/sla-policies/" not in page
    assert f"/orgs/acme/keys/{retried.key_id}/" in page


@pytest.mark.parametrize("who", ["developer", "data-dev", "lead"])
def test_a_request_out_of_reach_is_404_by_its_url(one_each, signed_in, who):
    hidden = {"developer": "notebooks", "data-dev": "mine", "lead": "platform_ci"}[who]
    response = signed_in(who).get(url("detail", request_id=one_each[hidden].request_id))
    assert response.status_code == 404


def test_another_orgs_request_is_404(one_each, other_org, signed_in):
    response = signed_in("owner").get(url("detail", org_slug="other", request_id=one_each["mine"].request_id))
    assert response.status_code == 404
    response = signed_in("owner").get(url("detail", request_id="no-such-request"))
    assert response.status_code == 404


def test_a_viewer_is_refused_the_detail(one_each, signed_in):
    assert signed_in("viewer").get(url("detail", request_id=one_each["mine"].request_id)).status_code == 403


def test_client_address_and_user_agent_show_when_recorded(keys, signed_in):
    record = make_record(keys.mine)
    record.client_ip, record.user_agent = "203.0.113.9", "openai-python/1.40"
    record.save(update_fields=["client_ip", "user_agent"])
    page = text(signed_in("developer").get(url("detail", request_id=record.request_id)))
    assert "203.0.113.9" in page and "openai-python/1.40" in page


def test_the_key_and_team_pages_link_to_their_requests(keys, signed_in):
    owner = signed_in("owner")
    key_page = text(owner.get(reverse("keys:detail", kwargs={"org_slug": "acme", "key_id": keys.mine.pk})))
    assert f"/orgs/acme/requests/?key={keys.mine.pk}" in key_page
    team_page = text(owner.get(reverse("orgs:team_detail", kwargs={"org_slug": "acme", "team_id": keys.mine.team_id})))
    assert f"/orgs/acme/requests/?team={keys.mine.team_id}" in team_page

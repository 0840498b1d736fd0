"""The fleet pages: platform staff only; nodes as their heartbeats in Redis describe them;
revisions, diffs, rollback and republish through the pages, each write with its audit event,
and every refusal answered on the page, never with a 500."""

import html
import time

import pytest
import redis
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit.models import AuditEvent
from fleet import services
from fleet.models import ConfigRevision
from fleet.redis_client import redis_keys
from tests.orgs.test_views import assert_every_control_labelled, text
from tests.plugins.fleet_state import heartbeat

pytestmark = pytest.mark.django_db


def url(name: str, **kwargs) -> str:
    return reverse(f"fleet:{name}", kwargs=kwargs)


# Who may ------------------------------------------------------------------------------------


def fleet_requests(number: int) -> list[tuple[str, str]]:
    return [
        ("get", url("node_list")),
        ("get", url("revision_list")),
        ("get", url("revision_diff", number=number)),
        ("get", url("rollback", number=number)),
        ("post", url("rollback", number=number)),
        ("get", url("republish")),
        ("post", url("republish")),
    ]


@pytest.mark.parametrize("role", ["owner", "admin", "auditor"])
def test_org_roles_who_are_not_platform_staff_get_403(revisions, client_for, role):
    client = client_for(role)
    before = ConfigRevision.objects.count()
    statuses = {path + method: getattr(client, method)(path).status_code for method, path in fleet_requests(1)}
    assert statuses == dict.fromkeys(statuses, 403)
    assert ConfigRevision.objects.count() == before


def test_signed_out_visitors_are_sent_to_sign_in(revisions):
    for method, path in fleet_requests(1):
        response = getattr(Client(), method)(path)
        assert response.status_code == 302
        assert response.url.startswith(reverse("account_login"))


def test_every_fleet_page_renders_for_platform_staff(revisions, staff_client, clean_redis):
    heartbeat(clean_redis, "gw-1", seconds_ago=2, revision=revisions[1].number)
    for method, path in fleet_requests(revisions[0].number):
        if method == "get":
            response = staff_client.get(path)
            assert response.status_code == 200, path
            assert_every_control_labelled(response)
            assert 'aria-label="Gateway fleet"' in text(response)  # the fleet's own navigation


# Nodes --------------------------------------------------------------------------------------


def test_node_list_shows_each_node_from_its_heartbeat(revisions, staff_client, clean_redis):
    newest = revisions[1].number
    heartbeat(clean_redis, "gw-live", seconds_ago=3, revision=newest)
    heartbeat(
        clean_redis,
        "gw-behind",
        seconds_ago=300,
        revision=revisions[0].number,
        last_error="redis: connection refused",
        last_rejected=f"revision {newest + 5}: bad signature",
    )
    html_text = text(staff_client.get(url("node_list")))
    rows = {row.split("</th>")[0]: row for row in html_text.split('<th scope="row">')[1:]}
    live = next(row for head, row in rows.items() if "gw-live" in head)
    behind = next(row for head, row in rows.items() if "gw-behind" in head)
    assert "host-gw-live" in live and "Live" in live and "Up to date" in live
    assert ">ab12cd34ab12<" in live  # the config hash, shortened
    assert "Stale" in behind and "1 behind" in behind
    assert "redis: connection refused" in behind
    assert f"revision {newest + 5}: bad signature" in behind
    assert "300 s ago" in behind or "301 s ago" in behind


def test_a_node_silent_for_a_minute_is_stale(revisions, staff_client, clean_redis):
    heartbeat(clean_redis, "gw-quiet", seconds_ago=61, revision=revisions[1].number)
    page = text(staff_client.get(url("node_list")))
    assert "Stale" in page and ">Live<" not in page


def test_node_list_without_nodes_says_so(staff_client, clean_redis):
    assert "No gateway node has sent a heartbeat yet." in text(staff_client.get(url("node_list")))


def test_node_list_costs_the_same_for_1_and_10_nodes(revisions, staff_client, clean_redis):
    heartbeat(clean_redis, "gw-0", seconds_ago=1, revision=1)
    staff_client.get(url("node_list"))
    with CaptureQueriesContext(connection) as few:
        staff_client.get(url("node_list"))
    for index in range(1, 10):
        heartbeat(clean_redis, f"gw-{index}", seconds_ago=index, revision=1)
    with CaptureQueriesContext(connection) as many:
        assert text(staff_client.get(url("node_list"))).count("host-gw-") == 10
    assert len(few) == len(many)


# Revisions ----------------------------------------------------------------------------------


def test_revision_list_links_each_cause_to_its_orgs_audit_page(revisions, staff_client):
    page = text(staff_client.get(url("revision_list")))
    audit = reverse("audit:list", kwargs={"org_slug": "acme"})
    assert f'href="{audit}?action=route.deleted"' in page
    assert "initial snapshot" in page and "1 route" in page
    assert "Full snapshot" in page and "Delta" in page


def test_compare_form_opens_the_diff(revisions, staff_client):
    first, second = (revision.number for revision in revisions)
    response = staff_client.get(url("revision_list"), {"revision": second, "against": first})
    assert response.status_code == 302
    assert response.url == url("revision_diff", number=second) + f"?against={first}"


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ({"revision": "abc", "against": "1"}, "revision", "Enter a revision number"),
        ({"revision": "999999", "against": "1"}, "revision", "There is no revision 999999."),
        ({"revision": "1", "against": "99999999999999999999999"}, "against", "less than or equal to"),
        ({"revision": "1"}, "against", "This field is required."),
    ],
)
def test_compare_form_errors_sit_next_to_their_field(revisions, staff_client, query, field, message):
    response = staff_client.get(url("revision_list"), query)
    assert response.status_code == 400
    assert f'id="id_{field}_error"' in text(response)
    assert message in html.unescape(text(response))


def test_revision_list_paginates_and_costs_the_same_for_3_and_30_revisions(revisions, actors, staff_client):
    event = AuditEvent.objects.filter(action="route.deleted").get()

    def add(count: int) -> None:
        for _ in range(count):
            ConfigRevision.objects.create(
                kind="delta", sha256="0" * 64, size=10, summary="test", envelope=b"{}", cause=event
            )

    add(1)  # 3 revisions
    staff_client.get(url("revision_list"))
    with CaptureQueriesContext(connection) as few:
        staff_client.get(url("revision_list"))
    add(27)
    with CaptureQueriesContext(connection) as many:
        first_page = text(staff_client.get(url("revision_list")))
    assert len(few) == len(many)
    assert "Page 1 of 2" in first_page
    assert "Page 2 of 2" in text(staff_client.get(url("revision_list"), {"page": 2}))


# Diff ---------------------------------------------------------------------------------------


def test_diff_shows_what_a_delta_changed(revisions, staff_client):
    first, second = revisions
    deleted_route = AuditEvent.objects.get(action="route.deleted").target_id
    response = staff_client.get(url("revision_diff", number=second.number))
    page = html.unescape(text(response))
    assert response.status_code == 200
    assert f"Revision {second.number} compared with revision {first.number}" in page
    assert "1 entity differs" in page
    row = page.split(f'<th scope="row" class="mono">{deleted_route}</th>')[1].split("</tr>")[0]
    before, after = row.split('class="diff-after"')
    assert '"alias": "o1"' in before  # pretty-printed JSON, one key per line
    assert "<em>absent</em>" in after


def test_diff_against_an_explicit_revision_and_against_nothing(revisions, staff_client):
    first, second = revisions
    page = text(staff_client.get(url("revision_diff", number=first.number), {"against": second.number}))
    assert f"Before (revision {first.number})" in page and f"After (revision {second.number})" in page
    whole = html.unescape(text(staff_client.get(url("revision_diff", number=first.number))))
    assert "compared with an empty config" in whole
    assert "(sealed) " in whole  # the credential's secret, only as a fingerprint
    assert "sk-simulator-test-0000" not in whole


def test_diff_refuses_unknown_revisions(revisions, staff_client):
    assert staff_client.get(url("revision_diff", number=999_999)).status_code == 404
    assert staff_client.get(url("revision_diff", number=10**30)).status_code == 404
    assert staff_client.get(url("revision_diff", number=0)).status_code == 404
    response = staff_client.get(url("revision_diff", number=revisions[1].number), {"against": 999_999})
    assert response.status_code == 400
    assert "There is no revision 999999." in text(response)
    response = staff_client.get(url("revision_diff", number=revisions[1].number), {"against": "one"})
    assert response.status_code == 400
    assert "Enter a revision number" in text(response)


# Rollback -----------------------------------------------------------------------------------


def test_rollback_asks_first_and_explains_keys_are_never_rolled_back(revisions, staff_client):
    page = text(staff_client.get(url("rollback", number=revisions[0].number)))
    assert "Caller keys are never rolled back." in page
    assert "The rollback holds until those entities change again." in page
    assert ConfigRevision.objects.count() == 2


def test_rollback_through_the_page_publishes_the_old_content(revisions, staff, staff_client, clean_redis):
    first, second = revisions
    response = staff_client.post(url("rollback", number=first.number))
    assert response.status_code == 302 and response.url == url("revision_list")
    newest = ConfigRevision.objects.order_by("-number").first()
    assert newest.number > second.number and newest.summary == f"rollback to revision {first.number}"
    restored = services.revision_entities(newest.number)
    assert restored["route"] == services.revision_entities(first.number)["route"]
    assert int(clean_redis.get(redis_keys().latest)) == newest.number
    event = AuditEvent.objects.get(action="fleet.rolled_back")
    assert (event.actor_type, event.actor_id, event.actor_label) == ("user", str(staff.uuid), staff.email)
    assert event.diff["content_of"] == {"after": first.number}
    follow = staff_client.get(response.url)
    assert f"Revision {newest.number} published with the content of revision {first.number}." in text(follow)


def test_rollback_to_the_running_revision_is_refused_on_the_page(revisions, staff_client):
    newest = revisions[1].number
    assert "is the one running" in text(staff_client.get(url("rollback", number=newest)))
    response = staff_client.post(url("rollback", number=newest))
    assert response.status_code == 400
    assert f"Revision {newest} is the one running." in text(response)
    assert not AuditEvent.objects.filter(action="fleet.rolled_back").exists()


def test_rollback_to_an_unknown_revision_is_404(revisions, staff_client):
    assert staff_client.get(url("rollback", number=999_999)).status_code == 404
    assert staff_client.post(url("rollback", number=999_999)).status_code == 404
    assert staff_client.post(url("rollback", number=2**63)).status_code == 404
    assert ConfigRevision.objects.count() == 2


# Republish ----------------------------------------------------------------------------------


def test_republish_through_the_page(revisions, staff, staff_client, clean_redis):
    page = text(staff_client.get(url("republish")))
    assert "Republish every config from the database?" in page
    response = staff_client.post(url("republish"), {"reason": "Redis restored from a backup"})
    assert response.status_code == 302
    newest = ConfigRevision.objects.order_by("-number").first()
    assert newest.kind == "full" and newest.number > revisions[1].number
    event = AuditEvent.objects.get(action="fleet.republished")
    assert event.actor_label == staff.email
    assert event.diff["reason"] == {"after": "Redis restored from a backup"}
    assert int(clean_redis.get(redis_keys().latest)) == newest.number


def test_republish_shows_a_bad_reason_next_to_its_field(revisions, staff_client):
    response = staff_client.post(url("republish"), {"reason": "x" * 301})
    assert response.status_code == 400
    assert 'id="id_reason_error"' in text(response)
    assert ConfigRevision.objects.count() == 2


@pytest.mark.parametrize(("name", "number"), [("rollback", 1), ("republish", None)])
def test_redis_down_after_the_revision_is_saved_is_a_warning_not_a_500(
    revisions, staff_client, monkeypatch, name, number
):
    def unreachable():
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(services, "sync_to_redis", unreachable)
    path = url(name, number=revisions[0].number) if number else url(name)
    response = staff_client.post(path, follow=True)
    assert response.status_code == 200
    assert "Redis cannot be reached" in text(response)
    assert ConfigRevision.objects.count() == 3  # saved in PostgreSQL all the same


def test_node_list_says_when_redis_cannot_be_reached(staff_client, monkeypatch):
    from fleet import selectors

    def unreachable():
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(selectors, "redis_client", unreachable)
    response = staff_client.get(url("node_list"))
    assert response.status_code == 503
    assert "Redis cannot be reached" in text(response)


def test_the_node_list_shows_open_circuit_breakers(revisions, staff_client, clean_redis):
    import json

    breakers = {"d1": {"state": "open", "until": time.time() + 30}, "d2": {"state": "half_open", "until": 0}}
    heartbeat(clean_redis, "node-b", seconds_ago=1, revision=revisions[-1].number, breakers=json.dumps(breakers))
    heartbeat(clean_redis, "node-c", seconds_ago=1, revision=revisions[-1].number)
    html = staff_client.get(url("node_list")).content.decode()
    assert "2 circuits open" in html
    assert html.count("circuit open") + html.count("circuits open") == 1

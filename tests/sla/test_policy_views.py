"""The SLA policy pages and the explain-route page: they render for sla.read (routes.read for
explain), writes need sla.manage and leave their audit event, bad input is answered next to its
field with a 400, deletes ask first, and the list costs the same queries for 2 rows as for 6."""

import html
import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit.models import AuditEvent
from keys.services import issue_key
from orgs.services import create_team
from sla.models import SlaPolicy
from sla.policies import create_policy
from tests.conftest import SYSTEM
from tests.factories import make_routes
from tests.orgs.test_views import assert_every_control_labelled, text
from tests.orgs.test_views import field_error as escaped_field_error

pytestmark = pytest.mark.django_db


def url(name: str, **kwargs) -> str:
    return reverse(f"sla:{name}", kwargs={"org_slug": "acme", **kwargs})


def field_error(response, field_id: str) -> str:
    return html.unescape(escaped_field_error(response, field_id))


@pytest.fixture
def routes(org, fresh_key_ring):
    return make_routes(org, SYSTEM)


@pytest.fixture
def policy(org, routes):
    return create_policy(actor=SYSTEM, org=org, name="Default")


def form_data(**overrides) -> dict:
    data = {
        "name": "Default",
        "team": "",
        "strategy": "priority",
        "connect_timeout_ms": "5000",
        "first_token_timeout_ms": "30000",
        "total_timeout_ms": "120000",
        "max_retries": "2",
        "retry_on": ["timeout", "5xx"],
        "backoff_base_ms": "100",
        "backoff_max_ms": "2000",
        "breaker_failure_rate": "50",
        "breaker_window_seconds": "60",
        "breaker_min_requests": "10",
        "breaker_cooldown_seconds": "30",
        "slo_availability": "99.9",
        "slo_p95_latency_ms": "10000",
        "slo_p95_ttft_ms": "2000",
        "slo_window_days": "30",
        "alert_emails": "",
        "alert_webhooks": "",
    }
    data.update(overrides)
    return data


@pytest.mark.parametrize("role", ["auditor", "finance", "admin", "owner"])
def test_policy_pages_render_for_roles_reading_sla(policy, client_for, role):
    client = client_for(role)
    for path in (url("policy_list"), url("policy_detail", policy_id=policy.pk)):
        response = client.get(path)
        assert response.status_code == 200, path
        assert "Default" in text(response)
        assert_every_control_labelled(response)
    assert "SLA policies" in text(client.get(url("route_list")))


@pytest.mark.parametrize("role", ["viewer", "developer"])
def test_roles_without_sla_read_get_403_and_no_nav_entry(policy, client_for, role):
    client = client_for(role)
    assert client.get(url("policy_list")).status_code == 403
    assert "SLA policies" not in text(client.get(reverse("orgs:dashboard", kwargs={"org_slug": "acme"})))


def test_readers_see_no_forms(policy, client_for):
    assert "Create a policy" not in text(client_for("auditor").get(url("policy_list")))
    assert "Create a policy" in text(client_for("admin").get(url("policy_list")))
    assert client_for("finance").post(url("policy_list"), form_data()).status_code == 403


def test_create_a_team_policy_through_the_page(org, team, routes, users, client_for):
    data = form_data(name="Platform EU", team=str(team.pk), allowed_regions=["global"], route_strategy_1="cost")
    response = client_for("admin").post(url("policy_list"), data)
    policy = SlaPolicy.objects.get(org=org, team=team)
    assert response.status_code == 302
    assert response.url == url("policy_detail", policy_id=policy.pk)
    # route_strategy_1 is the first alias in alphabetical order.
    assert (policy.retry_on, policy.route_strategies) == (["timeout", "5xx"], {"claude-sonnet": "cost"})
    event = AuditEvent.objects.get(org=org, action="policy.created")
    assert event.actor_label == users["admin"].email


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"connect_timeout_ms": "0"}, "connect_timeout_ms", "from 100 ms to 60 s"),
        ({"total_timeout_ms": "172800000"}, "total_timeout_ms", "to 1 hour"),
        ({"max_retries": "9"}, "max_retries", "from 0 to 5"),
        ({"slo_availability": "100"}, "slo_availability", "from 50 to 99.999"),
        ({"allowed_regions": ["eu-west"]}, "allowed_regions", "no deployment for the routes claude-sonnet, gpt-4o, o1"),
        ({"alert_emails": "nope"}, "alert_emails", "not an email address"),
        ({"max_retries": "two"}, "max_retries", "Enter a whole number"),
    ],
)
def test_bad_input_is_answered_next_to_its_field(org, routes, client_for, overrides, field, message):
    response = client_for("admin").post(url("policy_list"), form_data(**overrides))
    assert response.status_code == 400
    assert message in field_error(response, f"id_{field}")
    assert not SlaPolicy.objects.exists()


def test_edit_a_policy_through_the_page(org, policy, client_for):
    response = client_for("admin").post(
        url("policy_detail", policy_id=policy.pk), form_data(name="Default", max_retries="4")
    )
    assert response.status_code == 302
    policy.refresh_from_db()
    assert policy.max_retries == 4
    bad = client_for("admin").post(url("policy_detail", policy_id=policy.pk), form_data(backoff_max_ms="50"))
    assert bad.status_code == 400
    assert "at least the first" in field_error(bad, "id_backoff_max_ms")


def test_delete_asks_first(org, policy, client_for):
    client = client_for("admin")
    page = client.get(url("policy_delete", policy_id=policy.pk))
    assert page.status_code == 200 and "built-in defaults" in text(page)
    assert SlaPolicy.objects.filter(pk=policy.pk).exists()
    response = client.post(url("policy_delete", policy_id=policy.pk))
    assert response.status_code == 302 and response.url == url("policy_list")
    assert not SlaPolicy.objects.filter(pk=policy.pk).exists()
    assert AuditEvent.objects.filter(org=org, action="policy.deleted").exists()


def test_policy_list_query_count_is_constant(org, routes, client_for, django_assert_num_queries):
    client = client_for("auditor")
    create_policy(actor=SYSTEM, org=org, name="Default")
    create_policy(actor=SYSTEM, org=org, name="Team 0", team=create_team(actor=SYSTEM, org=org, name="T0"))
    with CaptureQueriesContext(connection) as few:
        assert client.get(url("policy_list")).status_code == 200
    for index in range(1, 5):
        team = create_team(actor=SYSTEM, org=org, name=f"T{index}")
        create_policy(actor=SYSTEM, org=org, name=f"Team {index}", team=team)
    with django_assert_num_queries(len(few)):
        response = client.get(url("policy_list"))
    assert "Team 4" in text(response)


# Explain route ------------------------------------------------------------------------------


def test_route_page_offers_explain_and_explain_shows_the_table(org, team, routes, client_for, clean_redis):
    route = routes["gpt-4o"]
    key, _plaintext = issue_key(actor=SYSTEM, team=team, name="explain me")
    detail = client_for("auditor").get(url("route_detail", route_id=route.pk))
    assert "Explain route" in text(detail)
    assert_every_control_labelled(detail)
    response = client_for("auditor").get(url("route_explain", route_id=route.pk) + f"?key={key.pk}")
    assert response.status_code == 200
    page = text(response)
    assert "gpt-4o deployment" in page and "eligible" in page and "explain me" in page
    assert_every_control_labelled(response)


def test_explain_with_an_unknown_or_malformed_key_is_a_400_beside_the_field(org, routes, client_for):
    route = routes["gpt-4o"]
    for key in ("6f1c1f4e-0000-4000-8000-000000000000", "nope"):
        response = client_for("admin").get(url("route_explain", route_id=route.pk) + f"?key={key}")
        assert response.status_code == 400
        assert field_error(response, "id_key")


def test_explain_shows_an_open_circuit(org, team, routes, client_for, clean_redis):
    from fleet.redis_client import redis_keys

    route = routes["gpt-4o"]
    deployment = route.deployments.get()
    key, _plaintext = issue_key(actor=SYSTEM, team=team, name="explain me")
    keys = redis_keys()
    clean_redis.zadd(keys.nodes, {"w1": time.time()})
    clean_redis.hset(keys.node("w1"), "breakers", f'{{"{deployment.pk}": {{"state": "open", "until": 4102444800}}}}')
    page = text(client_for("admin").get(url("route_explain", route_id=route.pk) + f"?key={key.pk}"))
    assert "circuit open until 2100-01-01 00:00:00 UTC" in page

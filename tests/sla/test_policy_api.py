"""SLA policies and explain-route over the API: /api/v1/orgs/<org>/sla-policies/ and
/routes/<id>/explain/. Strict input, errors keyed by field, audit events, constant query counts."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit.models import AuditEvent
from fleet.models import PendingConfigChange
from keys.services import issue_key
from orgs.services import create_team
from sla.models import SlaPolicy
from sla.policies import create_policy
from tests.conftest import SYSTEM
from tests.factories import make_routes

pytestmark = pytest.mark.django_db


def url(name: str, *args) -> str:
    return reverse(f"api:sla:{name}", args=args)


def post(client, path, data):
    return client.post(path, data, content_type="application/json")


def patch(client, path, data):
    return client.patch(path, data, content_type="application/json")


@pytest.fixture
def routes(org, fresh_key_ring):
    return make_routes(org, SYSTEM)


def test_create_get_patch_delete(org, team, routes, users, client_for):
    client = client_for("admin")
    response = post(
        client,
        url("policy-list", "acme"),
        {
            "name": "Platform",
            "team": str(team.pk),
            "strategy": "weighted",
            "retry_on": ["429"],
            "slo_availability": "99.5",
        },
    )
    assert response.status_code == 201, response.content
    body = response.json()
    policy = SlaPolicy.objects.get(pk=body["id"])
    assert body["team"] == {"id": str(team.pk), "name": "Platform"}
    assert (body["strategy"], body["retry_on"], body["slo_availability"]) == ("weighted", ["429"], "99.500")
    assert body["total_timeout_ms"] == 120_000
    event = AuditEvent.objects.get(org=org, action="policy.created")
    assert event.actor_id == str(users["admin"].uuid)
    assert PendingConfigChange.objects.filter(entity_type="policy", entity_id=str(policy.pk)).exists()

    assert client_for("auditor").get(url("policy-detail", "acme", policy.pk)).json()["name"] == "Platform"
    changed = patch(client, url("policy-detail", "acme", policy.pk), {"max_retries": 0, "team": str(team.pk)})
    assert changed.status_code == 200 and changed.json()["max_retries"] == 0
    assert changed.json()["strategy"] == "weighted"

    assert client.delete(url("policy-detail", "acme", policy.pk)).status_code == 204
    assert not SlaPolicy.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"connect_timeout_ms": 0}, "connect_timeout_ms"),
        ({"total_timeout_ms": 172_800_000}, "total_timeout_ms"),
        ({"connect_timeout_ms": "5000"}, "connect_timeout_ms"),
        ({"max_retries": True}, "max_retries"),
        ({"first_token_timeout_ms": 200, "connect_timeout_ms": 1000}, "first_token_timeout_ms"),
        ({"retry_on": ["timeout", "404"]}, "retry_on"),
        ({"allowed_regions": ["atlantis"]}, "allowed_regions"),
        ({"allowed_regions": ["eu-west"]}, "allowed_regions"),
        ({"allowed_providers": ["cohere"]}, "allowed_providers"),
        ({"route_strategies": {"gpt-4o": "fastest"}}, "route_strategies"),
        ({"route_strategies": {"unknown": "cost"}}, "route_strategies"),
        ({"slo_availability": 99.9}, "slo_availability"),
        ({"slo_availability": "100"}, "slo_availability"),
        ({"slo_window_days": 91}, "slo_window_days"),
        ({"strategy": "random"}, "strategy"),
        ({"team": "6f1c1f4e-0000-4000-8000-000000000000"}, "team"),
    ],
)
def test_bad_input_is_a_400_keyed_by_field(org, routes, client_for, body, field):
    response = post(client_for("admin"), url("policy-list", "acme"), {"name": "Default", **body})
    assert response.status_code == 400, response.content
    assert list(response.json()) == [field], response.json()
    assert not SlaPolicy.objects.exists()


def test_another_orgs_team_is_no_such_team(org, other_org, routes, client_for):
    team = other_org.teams.get()
    response = post(client_for("admin"), url("policy-list", "acme"), {"name": "X", "team": str(team.pk)})
    assert response.status_code == 400
    assert response.json() == {"team": ["No such team."]}


def test_a_policys_team_cannot_change(org, team, routes, client_for):
    policy = create_policy(actor=SYSTEM, org=org, name="Default")
    response = patch(client_for("admin"), url("policy-detail", "acme", policy.pk), {"team": str(team.pk)})
    assert response.status_code == 400 and list(response.json()) == ["team"]


def test_list_query_count_is_constant(org, routes, client_for):
    client = client_for("auditor")
    create_policy(actor=SYSTEM, org=org, name="Default")
    with CaptureQueriesContext(connection) as few:
        assert client.get(url("policy-list", "acme")).status_code == 200
    for index in range(5):
        create_policy(
            actor=SYSTEM, org=org, name=f"T{index}", team=create_team(actor=SYSTEM, org=org, name=f"T{index}")
        )
    with CaptureQueriesContext(connection) as many:
        body = client.get(url("policy-list", "acme")).json()
    assert body["count"] == 6 and body["results"][0]["team"] is None
    assert len(many) == len(few)


def test_explain_route(org, team, routes, client_for, clean_redis):
    create_policy(actor=SYSTEM, org=org, name="Default", strategy="weighted")
    key, _plaintext = issue_key(actor=SYSTEM, team=team, name="explain")
    route = routes["gpt-4o"]
    response = client_for("auditor").get(url("route-explain", "acme", route.pk), {"key": str(key.pk)})
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["route"], body["key"], body["strategy"]) == ("gpt-4o", str(key.pk), "weighted")
    [row] = body["deployments"]
    assert (row["eligible"], row["reason"], row["order"], row["weight_percent"]) == (True, "eligible", 1, "100.0")
    unknown = client_for("auditor").get(
        url("route-explain", "acme", route.pk), {"key": "6f1c1f4e-0000-4000-8000-000000000000"}
    )
    assert unknown.status_code == 400 and list(unknown.json()) == ["key"]
    malformed = client_for("auditor").get(url("route-explain", "acme", route.pk), {"key": "nope"})
    assert malformed.status_code == 400 and list(malformed.json()) == ["key"]


def test_route_weights_and_deployment_region_over_the_api(org, routes, client_for):
    client = client_for("admin")
    deployments = [routes["gpt-4o"].deployments.get(), routes["o1"].deployments.get()]
    response = patch(client, url("deployment-detail", "acme", deployments[0].pk), {"region": "eu-west"})
    assert response.status_code == 200 and response.json()["region"] == "eu-west"
    bad_region = patch(client, url("deployment-detail", "acme", deployments[0].pk), {"region": "moon"})
    assert bad_region.status_code == 400 and list(bad_region.json()) == ["region"]
    ids = [str(d.pk) for d in deployments]
    created = post(client, url("route-list", "acme"), {"alias": "mix", "deployments": ids, "weights": [3, 1]})
    assert [t["weight"] for t in created.json()["deployments"]] == [3, 1]
    zero = post(client, url("route-list", "acme"), {"alias": "zero", "deployments": ids, "weights": [0, 0]})
    assert zero.status_code == 400 and list(zero.json()) == ["weights"]
    too_heavy = post(client, url("route-list", "acme"), {"alias": "heavy", "deployments": ids, "weights": [1, 1001]})
    assert too_heavy.status_code == 400 and list(too_heavy.json()) == ["weights"]

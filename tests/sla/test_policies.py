"""SLA policies (sla/policies.py), route weights and deployment regions (sla/services.py), and
explain_route (sla/explain.py): every bad input refused with its field, every change audited and
queued for the gateway, and the explanation naming why each deployment is in or out."""

import json
import time
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from audit.models import AuditEvent
from fleet.models import PendingConfigChange
from fleet.redis_client import redis_keys
from keys.services import create_credential, issue_key
from orgs.services import create_team
from sla.explain import LATENCY_NOTE, explain_route
from sla.models import SlaPolicy
from sla.policies import create_policy, delete_policy, update_policy
from sla.services import create_deployment, create_route, update_deployment, update_route
from tests.conftest import SYSTEM
from tests.factories import make_routes

pytestmark = pytest.mark.django_db


@pytest.fixture
def routes(org, actors, fresh_key_ring):
    return make_routes(org, actors["admin"])


def refused(field: str, **kwargs) -> str:
    with pytest.raises(ValidationError) as caught:
        kwargs.setdefault("name", "Default")
        create_policy(actor=SYSTEM, **kwargs)
    errors = caught.value.message_dict
    assert field in errors, errors
    return " ".join(errors[field])


# Creating, changing, deleting ---------------------------------------------------------------


def test_create_policy_records_its_event_and_a_config_change(org, routes, actors, users):
    policy = create_policy(
        actor=actors["admin"],
        org=org,
        name="Default",
        strategy="weighted",
        route_strategies={"gpt-4o": "latency"},
        allowed_regions=["global"],
        slo_availability="99.95",
        alert_emails=["Ops@Acme.test"],
    )
    assert (policy.team, policy.strategy, policy.slo_availability) == (None, "weighted", Decimal("99.950"))
    assert policy.alert_emails == ["ops@acme.test"]
    event = AuditEvent.objects.filter(org=org, action="policy.created").get()
    assert event.actor_id == str(users["admin"].uuid)
    assert event.diff["route_strategies"] == {"before": None, "after": {"gpt-4o": "latency"}}
    change = PendingConfigChange.objects.get(entity_type="policy", entity_id=str(policy.pk))
    assert change.cause == event.pk


def test_update_keeps_settings_not_named_and_records_only_a_real_change(org, routes, actors):
    policy = create_policy(actor=SYSTEM, org=org, name="Default", max_retries=3)
    update_policy(actor=actors["admin"], policy=policy, total_timeout_ms=60_000)
    policy.refresh_from_db()
    assert (policy.max_retries, policy.total_timeout_ms, policy.name) == (3, 60_000, "Default")
    event = AuditEvent.objects.filter(org=org, action="policy.updated").get()
    assert event.diff == {"total_timeout_ms": {"before": 120_000, "after": 60_000}}
    assert PendingConfigChange.objects.filter(entity_type="policy", cause=event.pk).exists()
    update_policy(actor=actors["admin"], policy=policy, total_timeout_ms=60_000)
    assert AuditEvent.objects.filter(org=org, action="policy.updated").count() == 1


def test_the_org_default_may_be_deleted(org, routes, actors):
    policy = create_policy(actor=SYSTEM, org=org, name="Default")
    delete_policy(actor=actors["admin"], policy=policy)
    assert not SlaPolicy.objects.filter(org=org).exists()
    event = AuditEvent.objects.filter(org=org, action="policy.deleted").get()
    assert PendingConfigChange.objects.filter(entity_type="policy", entity_id=str(policy.pk), cause=event.pk).exists()


def test_one_default_per_org_and_one_policy_per_team(org, team, routes):
    create_policy(actor=SYSTEM, org=org, name="Default")
    assert "default policy already" in refused("team", org=org)
    create_policy(actor=SYSTEM, org=org, name="Platform", team=team)
    assert "has a policy already" in refused("team", org=org, team=team, name="Again")


def test_a_team_of_another_org_is_no_such_team(org, other_org):
    assert refused("team", org=org, team=other_org.teams.get()) == "No such team."


# Bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "field", "message"),
    [
        ({"connect_timeout_ms": 0}, "connect_timeout_ms", "from 100 ms to 60 s"),
        ({"connect_timeout_ms": 86_400_000}, "connect_timeout_ms", "from 100 ms to 60 s"),
        ({"first_token_timeout_ms": 0}, "first_token_timeout_ms", "from 100 ms to 10 minutes"),
        ({"total_timeout_ms": 0}, "total_timeout_ms", "from 1 s"),
        ({"total_timeout_ms": 2 * 86_400_000}, "total_timeout_ms", "to 1 hour"),
        ({"connect_timeout_ms": 10_000, "first_token_timeout_ms": 5_000}, "first_token_timeout_ms", "at least"),
        ({"first_token_timeout_ms": 50_000, "total_timeout_ms": 40_000}, "total_timeout_ms", "at least"),
        ({"max_retries": 6}, "max_retries", "from 0 to 5"),
        ({"max_retries": -1}, "max_retries", "from 0 to 5"),
        ({"max_retries": 2.5}, "max_retries", "whole number"),
        ({"retry_on": ["timeout", "404"]}, "retry_on", "Unknown retry condition: 404"),
        ({"backoff_base_ms": 5}, "backoff_base_ms", "from 10 ms to 10 s"),
        ({"backoff_max_ms": 120_000}, "backoff_max_ms", "to 60 s"),
        ({"backoff_base_ms": 5_000, "backoff_max_ms": 1_000}, "backoff_max_ms", "at least the first"),
        ({"breaker_failure_rate": 0}, "breaker_failure_rate", "from 1 to 100"),
        ({"breaker_failure_rate": 101}, "breaker_failure_rate", "from 1 to 100"),
        ({"breaker_window_seconds": 5}, "breaker_window_seconds", "from 10 s to 1 hour"),
        ({"breaker_min_requests": 0}, "breaker_min_requests", "from 1 to 1000"),
        ({"breaker_min_requests": 1001}, "breaker_min_requests", "from 1 to 1000"),
        ({"breaker_cooldown_seconds": 0}, "breaker_cooldown_seconds", "from 1 s to 1 hour"),
        ({"allowed_providers": ["openai", "cohere"]}, "allowed_providers", "Unknown provider: cohere"),
        ({"allowed_regions": ["mars-north"]}, "allowed_regions", "Unknown region: mars-north"),
        ({"route_strategies": {"no-such-model": "priority"}}, "route_strategies", "No route with the alias no-such"),
        ({"route_strategies": {"gpt-4o": "fastest"}}, "route_strategies", "Unknown strategy fastest"),
        ({"strategy": "random"}, "strategy", "Use one of: priority"),
        ({"slo_availability": "49.9"}, "slo_availability", "from 50 to 99.999"),
        ({"slo_availability": "100"}, "slo_availability", "from 50 to 99.999"),
        ({"slo_availability": "99.9999"}, "slo_availability", "from 50 to 99.999"),
        ({"slo_availability": "lots"}, "slo_availability", "Enter a percentage"),
        ({"slo_p95_latency_ms": 0}, "slo_p95_latency_ms", "from 1 ms to 10 minutes"),
        ({"slo_p95_ttft_ms": 700_000}, "slo_p95_ttft_ms", "from 1 ms to 10 minutes"),
        ({"slo_window_days": 0}, "slo_window_days", "from 1 to 90 days"),
        ({"slo_window_days": 91}, "slo_window_days", "from 1 to 90 days"),
        ({"alert_emails": ["not-an-address"]}, "alert_emails", "not an email address"),
    ],
)
def test_bad_settings_are_refused_next_to_their_field(org, routes, values, field, message):
    assert message in refused(field, org=org, **values)
    assert not SlaPolicy.objects.exists()


def test_every_bad_field_is_answered_at_once(org, routes):
    with pytest.raises(ValidationError) as caught:
        create_policy(actor=SYSTEM, org=org, name="Bad", connect_timeout_ms=0, max_retries=9, slo_window_days=0)
    assert {"connect_timeout_ms", "max_retries", "slo_window_days"} <= set(caught.value.message_dict)


def test_a_nameless_policy_is_refused(org):
    assert "name" in refused("name", org=org, name="  ")


def test_a_policy_that_leaves_a_route_without_deployments_is_refused_with_the_routes(org, routes, actors):
    deployment = routes["gpt-4o"].deployments.get()
    update_deployment(
        actor=SYSTEM,
        deployment=deployment,
        name=deployment.name,
        upstream_model=deployment.upstream_model,
        input_price_per_mtok=deployment.input_price_per_mtok,
        output_price_per_mtok=deployment.output_price_per_mtok,
        region="us-east",
    )
    message = refused("allowed_regions", org=org, allowed_regions=["eu-west", "global"])
    assert "no deployment for the routes gpt-4o" in message
    assert "claude-sonnet" not in message
    assert "claude-sonnet, gpt-4o, o1" in refused("allowed_regions", org=org, allowed_regions=["eu-west"])
    assert "gpt-4o" in refused("allowed_providers", org=org, allowed_providers=["anthropic"])
    # An update is held to the same rule.
    policy = create_policy(actor=SYSTEM, org=org, name="Default", allowed_regions=["us-east", "global"])
    with pytest.raises(ValidationError) as caught:
        update_policy(actor=actors["admin"], policy=policy, allowed_regions=["us-east"])
    assert "claude-sonnet, o1" in caught.value.message_dict["allowed_regions"][0]


# Route weights and deployment regions -------------------------------------------------------


def test_route_weights_are_stored_and_kept_when_not_given(org, routes):
    route = routes["gpt-4o"]
    deployments = [route.deployments.get(), routes["o1"].deployments.get()]
    update_route(actor=SYSTEM, route=route, deployments=deployments, weights=[3, 1])
    assert [t.weight for t in route.targets.order_by("priority")] == [3, 1]
    update_route(actor=SYSTEM, route=route, deployments=deployments[::-1])
    assert [t.weight for t in route.targets.order_by("priority")] == [1, 3]
    event = AuditEvent.objects.filter(org=org, action="route.updated").order_by("-sequence").first()
    assert event.diff["weights"] == {"before": [3, 1], "after": [1, 3]}


@pytest.mark.parametrize(
    ("weights", "message"),
    [([0, 0], "sum to zero"), ([1, 1001], "from 0 to 1000"), ([1, -1], "from 0 to 1000"), ([1], "one weight per")],
)
def test_bad_route_weights_are_refused(org, routes, weights, message):
    deployments = [routes["gpt-4o"].deployments.get(), routes["o1"].deployments.get()]
    with pytest.raises(ValidationError) as caught:
        create_route(actor=SYSTEM, org=org, alias="mixed", deployments=deployments, weights=weights)
    assert message in caught.value.message_dict["weights"][0]


def test_an_unknown_region_is_refused(org, routes):
    credential = routes["gpt-4o"].deployments.get().credential
    with pytest.raises(ValidationError) as caught:
        create_deployment(
            actor=SYSTEM,
            org=org,
            name="Moon",
            credential=credential,
            upstream_model="gpt-4o",
            input_price_per_mtok=1,
            output_price_per_mtok=1,
            region="moon-base",
        )
    assert "Unknown region 'moon-base'" in caught.value.message_dict["region"][0]


# Explain ------------------------------------------------------------------------------------


@pytest.fixture
def gpt4o(org, team, fresh_key_ring):
    """gpt-4o served by: the factory's deployment (global), an EU one, and one whose credential
    only another team may use; the key belongs to `team`."""
    route = make_routes(org, SYSTEM, aliases=("gpt-4o",))["gpt-4o"]
    shared = route.deployments.get()
    eu = create_deployment(
        actor=SYSTEM,
        org=org,
        name="EU",
        credential=shared.credential,
        upstream_model="gpt-4o",
        input_price_per_mtok=Decimal("1.00"),
        output_price_per_mtok=Decimal("4.00"),
        region="eu-west",
    )
    others = create_team(actor=SYSTEM, org=org, name="Research")
    restricted = create_credential(
        actor=SYSTEM, org=org, name="Research only", provider="openai", secrets={"api_key": "sk-r"}, teams=[others]
    )
    private = create_deployment(
        actor=SYSTEM,
        org=org,
        name="Research",
        credential=restricted,
        upstream_model="gpt-4o",
        input_price_per_mtok=Decimal("0.10"),
        output_price_per_mtok=Decimal("0.40"),
        region="us-east",
    )
    update_route(actor=SYSTEM, route=route, deployments=[shared, eu, private], weights=[1, 3, 1])
    key, _plaintext = issue_key(actor=SYSTEM, team=team, name="explain")
    return {"route": route, "key": key, "shared": shared, "eu": eu, "private": private}


def by_name(rows) -> dict:
    return {row.deployment.name: row for row in rows}


def test_explain_names_region_policy_and_team_restricted_credential(org, gpt4o):
    create_policy(actor=SYSTEM, org=org, name="EU only", allowed_regions=["eu-west", "us-east"])
    rows = by_name(explain_route(org, gpt4o["key"], "gpt-4o", breaker_states={}))
    assert [row.deployment.name for row in explain_route(org, gpt4o["key"], "gpt-4o", {})] == [
        "gpt-4o deployment",
        "EU",
        "Research",
    ]
    assert (rows["gpt-4o deployment"].eligible, rows["gpt-4o deployment"].reason) == (
        False,
        "excluded by region policy",
    )
    assert (rows["Research"].eligible, rows["Research"].reason) == (False, "credential restricted to other teams")
    assert (rows["EU"].eligible, rows["EU"].reason, rows["EU"].order) == (True, "eligible", 1)
    assert rows["EU"].region == "eu-west"


def test_a_team_policy_overrides_the_default_for_the_teams_keys(org, team, gpt4o):
    create_policy(actor=SYSTEM, org=org, name="Default", allowed_regions=["eu-west", "us-east"])
    create_policy(actor=SYSTEM, org=org, team=team, name="Platform", strategy="cost")
    rows = by_name(explain_route(org, gpt4o["key"], "gpt-4o", {}))
    assert rows["gpt-4o deployment"].eligible
    # Cost: the EU deployment ($1 + $4) before the shared one ($2.50 + $10).
    assert (rows["EU"].order, rows["gpt-4o deployment"].order) == (1, 2)
    assert rows["EU"].detail == "$1.00 in, $4.00 out per 1M tokens"


def test_weighted_gives_shares_of_the_eligible_deployments(org, gpt4o):
    create_policy(actor=SYSTEM, org=org, name="Default", strategy="weighted")
    rows = by_name(explain_route(org, gpt4o["key"], "gpt-4o", {}))
    assert (rows["EU"].weight_percent, rows["gpt-4o deployment"].weight_percent) == (Decimal("75.0"), Decimal("25.0"))
    assert rows["EU"].order == 1
    assert rows["Research"].weight_percent is None


def test_latency_says_how_it_orders(org, gpt4o):
    create_policy(actor=SYSTEM, org=org, name="Default", route_strategies={"gpt-4o": "latency"})
    rows = explain_route(org, gpt4o["key"], "gpt-4o", {})
    assert [row.order for row in rows] == [1, 2, None]
    assert rows[0].detail == LATENCY_NOTE


def test_without_a_policy_priority_order_and_built_in_defaults(org, gpt4o):
    rows = explain_route(org, gpt4o["key"], "gpt-4o", {})
    assert [(row.order, row.detail) for row in rows[:2]] == [(1, "choice 1"), (2, "choice 2")]


def test_an_open_breaker_reported_in_a_heartbeat_takes_a_deployment_out(org, gpt4o, clean_redis):
    keys, now = redis_keys(), time.time()
    until = int(now) + 30
    breakers = {str(gpt4o["shared"].pk): {"state": "open", "until": until}, str(gpt4o["eu"].pk): {"state": "closed"}}
    clean_redis.zadd(keys.nodes, {"worker-1": now})
    clean_redis.hset(keys.node("worker-1"), mapping={"revision": 3, "breakers": json.dumps(breakers)})
    rows = by_name(explain_route(org, gpt4o["key"], "gpt-4o"))
    assert not rows["gpt-4o deployment"].eligible
    assert rows["gpt-4o deployment"].reason.startswith("circuit open until ")
    assert (rows["EU"].eligible, rows["EU"].order) == (True, 1)
    # A second worker with the circuit closed: still eligible there.
    clean_redis.zadd(keys.nodes, {"worker-2": now})
    clean_redis.hset(keys.node("worker-2"), mapping={"revision": 3, "breakers": "{}"})
    shared = by_name(explain_route(org, gpt4o["key"], "gpt-4o"))["gpt-4o deployment"]
    assert shared.eligible and "open on 1 of 2 workers" in shared.reason


def test_explain_tolerates_no_heartbeats_and_bad_ones(org, gpt4o, clean_redis):
    assert all(row.reason != "" for row in explain_route(org, gpt4o["key"], "gpt-4o"))
    clean_redis.zadd(redis_keys().nodes, {"worker-1": time.time()})
    clean_redis.hset(redis_keys().node("worker-1"), mapping={"breakers": "not json"})
    assert by_name(explain_route(org, gpt4o["key"], "gpt-4o"))["gpt-4o deployment"].eligible


def test_explain_refuses_an_unknown_alias(org, gpt4o):
    with pytest.raises(ValidationError) as caught:
        explain_route(org, gpt4o["key"], "no-such-model", {})
    assert "alias" in caught.value.message_dict

"""The request log API: the shape of a request, keyset cursors, filters and their errors, who
sees what (and what cost), and the detail route."""

from datetime import timedelta

import pytest
from django.test import Client

from orgs.services import create_api_token
from sla.policies import create_policy
from tests.conftest import SYSTEM

from .conftest import NOW, api_url, make_record

pytestmark = pytest.mark.django_db


def ids(body) -> list[str]:
    return [row["request_id"] for row in body["results"]]


def test_a_request_has_every_field(keys, routes, signed_in, people):
    deployment = routes["gpt-4o"].deployments.get()
    attempts = [
        {"deployment_id": str(deployment.pk), "status": 429, "error_code": "rate_limited", "latency_ms": 3.5},
        {"deployment_id": str(deployment.pk), "status": 200, "error_code": "", "latency_ms": 640.0},
    ]
    record = make_record(
        keys.mine, deployment_id=deployment.pk, attempts=attempts, client_request_id="mine-1", stream=True
    )
    response = signed_in("developer").get(api_url("request-list"))
    assert response.status_code == 200
    body = response.json()
    assert body["next"] is None and body["next_cursor"] is None
    (row,) = body["results"]
    assert row == {
        "request_id": record.request_id,
        "client_request_id": "mine-1",
        "occurred_at": record.occurred_at.isoformat().replace("+00:00", "Z"),
        "model": "gpt-4o",
        "endpoint": "chat.completions",
        "status": 200,
        "error_code": "",
        "stream": True,
        "team": {"id": str(keys.mine.team_id), "name": "Platform"},
        "key": {"id": str(keys.mine.pk), "name": "dev laptop", "prefix": keys.mine.prefix},
        "user": {"id": str(people["developer"].uuid), "email": "developer@acme.test"},
        "deployment": {"id": str(deployment.pk), "name": "gpt-4o deployment", "provider": "openai_compatible"},
        "input_tokens": 100,
        "output_tokens": 20,
        "cost": "0.000450",
        "latency_ms": 812.5,
        "ttft_ms": 120.25,
        "node_id": "gw-1",
        "attempts": [
            {
                "deployment": {"id": str(deployment.pk), "name": "gpt-4o deployment", "provider": "openai_compatible"},
                "provider": "openai_compatible",
                "status": 429,
                "error_code": "rate_limited",
                "latency_ms": 3.5,
                "kind": "first",
                "after": None,
            },
            {
                "deployment": {"id": str(deployment.pk), "name": "gpt-4o deployment", "provider": "openai_compatible"},
                "provider": "openai_compatible",
                "status": 200,
                "error_code": "",
                "latency_ms": 640.0,
                "kind": "retry",
                "after": {"status": 429, "error_code": "rate_limited", "condition": None},
            },
        ],
        "client_ip": None,
        "user_agent": "",
    }


def test_cursors_walk_every_page_once(keys, signed_in):
    moment = NOW - timedelta(minutes=30)
    made = [make_record(keys.mine, at=moment, request_id=f"same-{index:02d}") for index in range(12)]
    made += [make_record(keys.mine, at=moment - timedelta(seconds=index + 1)) for index in range(5)]
    client = signed_in("developer")
    seen, body = [], client.get(api_url("request-list"), {"limit": 5}).json()
    while True:
        seen += ids(body)
        if body["next_cursor"] is None:
            assert body["next"] is None
            break
        assert f"cursor={body['next_cursor']}" in body["next"] and "limit=5" in body["next"]
        body = client.get(api_url("request-list"), {"limit": 5, "cursor": body["next_cursor"]}).json()
    expected = sorted((r.request_id for r in made[:12]), reverse=True) + [r.request_id for r in made[12:]]
    assert seen == expected


def test_the_next_link_is_followable(keys, signed_in):
    for index in range(3):
        make_record(keys.mine, at=NOW - timedelta(minutes=index + 1))
    client = signed_in("developer")
    first = client.get(api_url("request-list"), {"limit": 2}).json()
    second = client.get(first["next"]).json()
    assert len(ids(first)) == 2 and len(ids(second)) == 1 and second["next"] is None


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"cursor": "bm9wZQ"}, "cursor"),
        ({"limit": "0"}, "limit"),
        ({"since": "last week"}, "since"),
        ({"status": "1xx"}, "status"),
        ({"team": "12"}, "team"),
        ({"request_id": "x" * 65}, "request_id"),
    ],
)
def test_bad_parameters_are_400_by_field(one_each, signed_in, query, field):
    response = signed_in("admin").get(api_url("request-list"), query)
    assert response.status_code == 400
    assert list(response.json()) == [field]


def test_filters_work_as_on_the_page(one_each, keys, data_team, signed_in):
    client = signed_in("finance")
    assert ids(client.get(api_url("request-list"), {"team": str(data_team.pk)}).json()) == [
        one_each["notebooks"].request_id,
        one_each["old_data_key"].request_id,
    ]
    assert ids(client.get(api_url("request-list"), {"key": str(keys.platform_ci.pk)}).json()) == [
        one_each["platform_ci"].request_id
    ]


def test_a_developer_reads_only_their_own_and_the_cost_of_their_teams(one_each, signed_in):
    body = signed_in("developer").get(api_url("request-list")).json()
    assert ids(body) == [one_each["mine"].request_id, one_each["old_data_key"].request_id]
    assert [row["cost"] for row in body["results"]] == ["0.000450", None]


def test_a_team_admin_reads_their_team(one_each, signed_in):
    body = signed_in("lead").get(api_url("request-list")).json()
    assert ids(body) == [one_each["notebooks"].request_id, one_each["old_data_key"].request_id]


def bearer(org, role: str) -> dict:
    _token, plaintext = create_api_token(actor=SYSTEM, org=org, name=f"log {role}", role=role)
    return {"HTTP_AUTHORIZATION": f"Bearer {plaintext}"}


@pytest.mark.parametrize("role", ["owner", "finance", "auditor"])
def test_tokens_of_roles_that_read_every_key_read_the_org(one_each, org, role):
    response = Client().get(api_url("request-list"), **bearer(org, role))
    assert response.status_code == 200 and len(response.json()["results"]) == 4


def test_a_developer_token_holds_no_keys_so_reads_nothing(one_each, org):
    """Tokens act through their role, not as a person (orgs.access.visible_keys)."""
    response = Client().get(api_url("request-list"), **bearer(org, "developer"))
    assert response.status_code == 200 and response.json()["results"] == []


def test_viewers_are_refused_and_outsiders_get_404(one_each, org, other_org, signed_in):
    assert signed_in("viewer").get(api_url("request-list")).status_code == 403
    assert Client().get(api_url("request-list"), **bearer(org, "viewer")).status_code == 403
    assert signed_in("outsider").get(api_url("request-list")).status_code == 404
    assert Client().get(api_url("request-list"), **bearer(other_org, "owner")).status_code == 404


# Detail -------------------------------------------------------------------------------------


def test_the_detail_names_the_sla_policy_that_applies(one_each, org, team, signed_in):
    create_policy(actor=SYSTEM, org=org, name="Org default")
    policy = create_policy(actor=SYSTEM, org=org, name="Platform SLA", team=team)
    record = one_each["mine"]
    response = signed_in("developer").get(api_url("request-detail", request_id=record.request_id))
    assert response.status_code == 200
    body = response.json()
    assert body["request_id"] == record.request_id and body["cost"] == "0.000450"
    assert body["sla_policy"] == {"id": str(policy.pk), "name": "Platform SLA", "team_policy": True}
    listed = signed_in("developer").get(api_url("request-list")).json()["results"][0]
    assert {name: value for name, value in body.items() if name != "sla_policy"} == listed


def test_the_detail_without_any_policy_says_null(one_each, signed_in):
    body = signed_in("admin").get(api_url("request-detail", request_id=one_each["notebooks"].request_id)).json()
    assert body["sla_policy"] is None


@pytest.mark.parametrize(("who", "hidden"), [("developer", "notebooks"), ("lead", "mine"), ("data-dev", "platform_ci")])
def test_a_request_out_of_reach_is_404(one_each, signed_in, who, hidden):
    response = signed_in(who).get(api_url("request-detail", request_id=one_each[hidden].request_id))
    assert response.status_code == 404 and response.json() == {"detail": "Not found."}


def test_another_orgs_id_and_unknown_ids_are_404(one_each, other_org, org):
    owner_of_other = bearer(other_org, "owner")
    record = one_each["mine"]
    assert Client().get(api_url("request-detail", request_id=record.request_id), **owner_of_other).status_code == 404
    response = Client().get(api_url("request-detail", "other", request_id=record.request_id), **owner_of_other)
    assert response.status_code == 404
    too_long = api_url("request-detail", request_id="x" * 300)
    assert Client().get(too_long, **bearer(org, "owner")).status_code == 404

"""Deployments and model routes over the API: /api/v1/orgs/<org_slug>/{deployments,routes}/."""

from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit.models import AuditEvent
from keys.services import create_credential
from orgs.services import create_api_token
from sla.models import Deployment, ModelRoute
from sla.services import create_deployment, create_route
from tests.conftest import SYSTEM

UNKNOWN = "6f1c1f4e-0000-4000-8000-000000000000"


def url(name: str, *args) -> str:
    return reverse(f"api:sla:{name}", args=args)


def post(client: Client, path: str, data=None):
    return client.post(path, data if data is not None else {}, content_type="application/json")


def patch(client: Client, path: str, data):
    return client.patch(path, data, content_type="application/json")


def assert_event(org, action: str, actor_id: str) -> AuditEvent:
    event = AuditEvent.objects.filter(org=org).order_by("-sequence").first()
    assert (event.action, event.actor_id) == (action, actor_id)
    return event


def assert_field_errors(response, field: str) -> None:
    assert response.status_code == 400, response.content
    body = response.json()
    assert list(body) == [field], body
    assert body[field] and all(isinstance(message, str) for message in body[field])


@pytest.fixture
def credential(org, actors, fresh_key_ring):
    return create_credential(
        actor=actors["admin"],
        org=org,
        name="Local",
        provider="openai_compatible",
        base_url="http://127.0.0.1:9/v1",
        secrets={"api_key": "sk-local-0000000000001234"},
    )


@pytest.fixture
def foreign_credential(other_org, fresh_key_ring):
    return create_credential(actor=SYSTEM, org=other_org, name="Theirs", provider="openai", secrets={"api_key": "sk-1"})


def make_deployment(org, credential, name: str, model: str = "gpt-4o") -> Deployment:
    return create_deployment(
        actor=SYSTEM,
        org=org,
        name=name,
        credential=credential,
        upstream_model=model,
        input_price_per_mtok=Decimal("2.5"),
        output_price_per_mtok=Decimal("10"),
    )


@pytest.fixture
def deployments(org, credential) -> list[Deployment]:
    return [
        make_deployment(org, credential, name, model)
        for name, model in (("primary", "gpt-4o"), ("backup", "gpt-4o-mini"))
    ]


@pytest.fixture
def foreign_deployment(other_org, foreign_credential) -> Deployment:
    return make_deployment(other_org, foreign_credential, "theirs")


def deployment_body(of_credential, **fields) -> dict:
    return {
        "name": "gpt-4o east",
        "credential": str(of_credential.pk),
        "upstream_model": "gpt-4o-2024-08-06",
        "input_price_per_mtok": "2.50",
        "output_price_per_mtok": "10.00",
        **fields,
    }


# Deployments -------------------------------------------------------------------------------


def test_create_deployment(client_for, org, users, credential):
    response = post(client_for("admin"), url("deployment-list", "acme"), deployment_body(credential))
    assert response.status_code == 201, response.json()
    body = response.json()
    deployment = Deployment.objects.get(pk=body["id"], org=org)
    assert body == {
        "id": str(deployment.pk),
        "name": "gpt-4o east",
        "credential": {"id": str(credential.pk), "name": "Local", "provider": "openai_compatible"},
        "upstream_model": "gpt-4o-2024-08-06",
        "input_price_per_mtok": "2.500000",
        "output_price_per_mtok": "10.000000",
        "region": "global",
        "created_at": body["created_at"],
    }
    assert (deployment.input_price_per_mtok, deployment.output_price_per_mtok) == (Decimal("2.5"), Decimal(10))
    event = assert_event(org, "deployment.created", str(users["admin"].uuid))
    assert event.diff["input_price_per_mtok"] == {"before": None, "after": "2.500000"}


def test_sub_cent_prices_keep_every_digit(client_for, org, credential):
    data = deployment_body(credential, input_price_per_mtok="0.000001", output_price_per_mtok="9999.999999")
    body = post(client_for("admin"), url("deployment-list", "acme"), data).json()
    assert (body["input_price_per_mtok"], body["output_price_per_mtok"]) == ("0.000001", "9999.999999")


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": "Tab\tname"}, "name"),
        ({"credential": "nope"}, "credential"),
        ({"credential": None}, "credential"),
        ({"upstream_model": ""}, "upstream_model"),
        ({"upstream_model": "   "}, "upstream_model"),
        ({"upstream_model": "m" * 201}, "upstream_model"),
        ({"upstream_model": "gpt\n4o"}, "upstream_model"),
        ({"input_price_per_mtok": 2.5}, "input_price_per_mtok"),
        ({"input_price_per_mtok": 2}, "input_price_per_mtok"),
        ({"input_price_per_mtok": "-1"}, "input_price_per_mtok"),
        ({"input_price_per_mtok": "10000.000001"}, "input_price_per_mtok"),
        ({"input_price_per_mtok": "1.0000001"}, "input_price_per_mtok"),
        ({"input_price_per_mtok": "NaN"}, "input_price_per_mtok"),
        ({"input_price_per_mtok": "Infinity"}, "input_price_per_mtok"),
        ({"input_price_per_mtok": "two"}, "input_price_per_mtok"),
        ({"input_price_per_mtok": ""}, "input_price_per_mtok"),
        ({"output_price_per_mtok": None}, "output_price_per_mtok"),
        ({"output_price_per_mtok": "9" * 100}, "output_price_per_mtok"),
    ],
)
def test_create_deployment_rejects_bad_input(client_for, org, credential, extra, field):
    response = post(client_for("admin"), url("deployment-list", "acme"), deployment_body(credential, **extra))
    assert_field_errors(response, field)
    assert not Deployment.objects.exists()


def test_deployment_names_are_unique(client_for, org, credential, deployments):
    response = post(client_for("admin"), url("deployment-list", "acme"), deployment_body(credential, name="PRIMARY"))
    assert response.json() == {"name": ["A deployment with this name already exists."]}


def test_deployment_refuses_another_orgs_credential(client_for, org, credential, foreign_credential):
    data = deployment_body(foreign_credential)
    assert post(client_for("admin"), url("deployment-list", "acme"), data).status_code == 404
    assert (
        post(
            client_for("admin"), url("deployment-list", "acme"), deployment_body(credential, credential=UNKNOWN)
        ).status_code
        == 404
    )
    assert not Deployment.objects.filter(org__slug="acme").exists()


def test_deployment_list_and_detail(client_for, org, deployments, foreign_deployment):
    client = client_for("finance")
    body = client.get(url("deployment-list", "acme")).json()
    assert [d["name"] for d in body["results"]] == ["backup", "primary"]
    assert [d["name"] for d in client.get(url("deployment-list", "acme"), {"q": "MINI"}).json()["results"]] == [
        "backup"
    ]
    detail = client.get(url("deployment-detail", "acme", deployments[0].pk)).json()
    assert (detail["name"], detail["input_price_per_mtok"]) == ("primary", "2.500000")
    assert client.get(url("deployment-detail", "acme", foreign_deployment.pk)).status_code == 404
    assert client.get(url("deployment-detail", "acme", UNKNOWN)).status_code == 404


def test_update_deployment(client_for, org, users, credential, deployments):
    client = client_for("admin")
    path = url("deployment-detail", "acme", deployments[0].pk)
    response = patch(client, path, {"output_price_per_mtok": "12.125", "upstream_model": "gpt-4o-2024-11-20"})
    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["name"], body["upstream_model"], body["input_price_per_mtok"], body["output_price_per_mtok"]) == (
        "primary",
        "gpt-4o-2024-11-20",
        "2.500000",
        "12.125000",
    )
    event = assert_event(org, "deployment.updated", str(users["admin"].uuid))
    assert event.diff["output_price_per_mtok"] == {"before": "10.000000", "after": "12.125000"}
    assert patch(client, path, {"credential": str(credential.pk)}).status_code == 200
    assert patch(client, path, {"credential": UNKNOWN}).json() == {
        "credential": ["A deployment's credential cannot change: create a new deployment."]
    }
    assert patch(client, path, {"name": "Backup"}).json() == {"name": ["A deployment with this name already exists."]}
    assert_field_errors(patch(client, path, {"input_price_per_mtok": 3}), "input_price_per_mtok")


def test_delete_deployment(client_for, org, users, deployments):
    route = create_route(actor=SYSTEM, org=org, alias="gpt-4o", deployments=[deployments[0]])
    client = client_for("admin")
    path = url("deployment-detail", "acme", deployments[0].pk)
    assert client.delete(path).json() == {"deployment": ["Routes use this deployment: gpt-4o. Change them first."]}
    route.delete()
    assert client.delete(path).status_code == 204
    assert_event(org, "deployment.deleted", str(users["admin"].uuid))
    assert client.delete(path).status_code == 404
    assert Deployment.objects.filter(org=org).count() == 1


def test_deployment_writes_of_another_org_are_404(client_for, org, foreign_deployment):
    client = client_for("owner")
    path = url("deployment-detail", "acme", foreign_deployment.pk)
    assert patch(client, path, {"name": "mine"}).status_code == 404
    assert client.delete(path).status_code == 404
    foreign_deployment.refresh_from_db()
    assert foreign_deployment.name == "theirs"


# Routes ------------------------------------------------------------------------------------


def test_create_route_keeps_the_priority_order(client_for, org, users, deployments):
    primary, backup = deployments
    data = {"alias": "gpt-4o", "description": "General chat", "deployments": [str(backup.pk), str(primary.pk)]}
    response = post(client_for("admin"), url("route-list", "acme"), data)
    assert response.status_code == 201, response.json()
    body = response.json()
    route = ModelRoute.objects.get(pk=body["id"], org=org)
    assert body == {
        "id": str(route.pk),
        "alias": "gpt-4o",
        "description": "General chat",
        "deployments": [
            {"id": str(backup.pk), "name": "backup", "upstream_model": "gpt-4o-mini", "region": "global", "weight": 1},
            {"id": str(primary.pk), "name": "primary", "upstream_model": "gpt-4o", "region": "global", "weight": 1},
        ],
        "created_at": body["created_at"],
    }
    event = assert_event(org, "route.created", str(users["admin"].uuid))
    assert event.diff["deployments"] == {"after": ["backup", "primary"]}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"deployments": "FIRST"}, "alias"),
        ({"alias": "", "deployments": "FIRST"}, "alias"),
        ({"alias": "gpt 4o", "deployments": "FIRST"}, "alias"),
        ({"alias": "a" * 101, "deployments": "FIRST"}, "alias"),
        ({"alias": 4, "deployments": "FIRST"}, "alias"),
        ({"alias": "gpt-4o"}, "deployments"),
        ({"alias": "gpt-4o", "deployments": []}, "deployments"),
        ({"alias": "gpt-4o", "deployments": "FIRST-AS-TEXT"}, "deployments"),
        ({"alias": "gpt-4o", "deployments": ["nope"]}, "deployments"),
        ({"alias": "gpt-4o", "deployments": "TWICE"}, "deployments"),
        ({"alias": "gpt-4o", "deployments": [UNKNOWN] * 11}, "deployments"),
        ({"alias": "gpt-4o", "deployments": "FIRST", "description": "d" * 301}, "description"),
        ({"alias": "gpt-4o", "deployments": "FIRST", "description": "bell\x07"}, "description"),
    ],
)
def test_create_route_rejects_bad_input(client_for, org, deployments, data, field):
    first = str(deployments[0].pk)
    replacements = {"FIRST": [first], "TWICE": [first, first], "FIRST-AS-TEXT": first}
    data = {name: replacements.get(value, value) if isinstance(value, str) else value for name, value in data.items()}
    assert_field_errors(post(client_for("admin"), url("route-list", "acme"), data), field)
    assert not ModelRoute.objects.exists()


def test_route_aliases_are_unique(client_for, org, deployments):
    create_route(actor=SYSTEM, org=org, alias="gpt-4o", deployments=[deployments[0]])
    data = {"alias": "gpt-4o", "deployments": [str(deployments[1].pk)]}
    assert post(client_for("admin"), url("route-list", "acme"), data).json() == {
        "alias": ["A route with this alias already exists."]
    }


def test_route_refuses_another_orgs_deployment(client_for, org, deployments, foreign_deployment):
    data = {"alias": "gpt-4o", "deployments": [str(deployments[0].pk), str(foreign_deployment.pk)]}
    assert post(client_for("admin"), url("route-list", "acme"), data).status_code == 404
    assert not ModelRoute.objects.filter(org=org).exists()


@pytest.fixture
def route(org, deployments):
    return create_route(actor=SYSTEM, org=org, alias="gpt-4o", deployments=deployments, description="Chat")


def test_update_route(client_for, org, users, deployments, route, foreign_deployment):
    primary, backup = deployments
    client = client_for("admin")
    path = url("route-detail", "acme", route.pk)
    response = patch(client, path, {"deployments": [str(backup.pk), str(primary.pk)]})
    assert response.status_code == 200, response.json()
    assert [d["name"] for d in response.json()["deployments"]] == ["backup", "primary"]
    assert response.json()["description"] == "Chat"
    event = assert_event(org, "route.updated", str(users["admin"].uuid))
    assert event.diff["deployments"] == {"before": ["primary", "backup"], "after": ["backup", "primary"]}

    response = patch(client, path, {"description": "General chat", "alias": "gpt-4o"})
    assert (response.json()["description"], [d["name"] for d in response.json()["deployments"]]) == (
        "General chat",
        ["backup", "primary"],
    )
    assert patch(client, path, {"alias": "gpt-5"}).json() == {
        "alias": ["A route's alias cannot change: create a route with the new alias."]
    }
    assert patch(client, path, {"deployments": [str(foreign_deployment.pk)]}).status_code == 404
    assert_field_errors(patch(client, path, {"deployments": []}), "deployments")
    assert [t.deployment.name for t in route.targets.select_related("deployment")] == ["backup", "primary"]


def test_route_list_detail_and_delete(client_for, org, users, route, deployments):
    create_route(actor=SYSTEM, org=org, alias="claude-sonnet", deployments=[deployments[1]])
    client = client_for("auditor")
    assert [r["alias"] for r in client.get(url("route-list", "acme")).json()["results"]] == ["claude-sonnet", "gpt-4o"]
    assert [r["alias"] for r in client.get(url("route-list", "acme"), {"q": "chat"}).json()["results"]] == ["gpt-4o"]
    assert client.get(url("route-detail", "acme", route.pk)).json()["alias"] == "gpt-4o"

    admin = client_for("admin")
    assert admin.delete(url("route-detail", "acme", route.pk)).status_code == 204
    event = assert_event(org, "route.deleted", str(users["admin"].uuid))
    assert event.diff == {"alias": {"before": "gpt-4o"}}
    assert admin.get(url("route-detail", "acme", route.pk)).status_code == 404


def test_another_orgs_route_is_404(client_for, org, other_org, foreign_deployment):
    foreign = create_route(actor=SYSTEM, org=other_org, alias="theirs", deployments=[foreign_deployment])
    client = client_for("owner")
    path = url("route-detail", "acme", foreign.pk)
    assert client.get(path).status_code == 404
    assert patch(client, path, {"description": "mine"}).status_code == 404
    assert client.delete(path).status_code == 404
    assert ModelRoute.objects.filter(pk=foreign.pk).exists()


# Who may ------------------------------------------------------------------------------------


def test_reading_needs_routes_read_and_writing_routes_manage(client_for, org, credential, route, deployments):
    paths = [
        url("deployment-list", "acme"),
        url("deployment-detail", "acme", deployments[0].pk),
        url("route-list", "acme"),
        url("route-detail", "acme", route.pk),
    ]
    for role in ("developer", "viewer"):
        assert {client_for(role).get(path).status_code for path in paths} == {403}, role
    for role in ("finance", "auditor"):
        client = client_for(role)
        assert {client.get(path).status_code for path in paths} == {200}, role
        assert post(client, url("deployment-list", "acme"), deployment_body(credential)).status_code == 403
        assert patch(client, paths[1], {"name": "x"}).status_code == 403
        assert client.delete(paths[1]).status_code == 403
        assert post(client, url("route-list", "acme"), {"alias": "x", "deployments": []}).status_code == 403
        assert patch(client, paths[3], {"description": "x"}).status_code == 403
        assert client.delete(paths[3]).status_code == 403
    _token, plaintext = create_api_token(actor=SYSTEM, org=org, name="ci", role="auditor")
    token = Client(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    assert token.get(paths[2]).status_code == 200
    assert token.delete(paths[3]).status_code == 403
    assert client_for("outsider").get(paths[2]).status_code == 404
    assert ModelRoute.objects.get().description == "Chat"


# Constant query counts ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["deployment-list", "route-list"])
def test_list_query_count_is_constant(client_for, org, credential, kind):
    client = client_for("auditor")
    path = url(kind, "acme")
    client.get(path)

    def add(count: int, start: int) -> None:
        for i in range(start, start + count):
            first = make_deployment(org, credential, f"d{i}a")
            second = make_deployment(org, credential, f"d{i}b")
            create_route(actor=SYSTEM, org=org, alias=f"model-{i}", deployments=[first, second])

    def count_queries(expected_rows: int) -> int:
        with CaptureQueriesContext(connection) as queries:
            response = client.get(path, {"limit": 200})
        assert len(response.json()["results"]) >= expected_rows
        return len(queries)

    add(3, 0)
    few = count_queries(3)
    add(27, 3)
    assert count_queries(30) == few

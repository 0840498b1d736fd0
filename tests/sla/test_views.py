"""The deployment and route pages: they render for roles with routes.read, writes work for
routes.manage and leave their audit event, bad input is answered next to its field with a 400,
deletes ask first, and the lists cost the same number of queries for 3 rows as for 30."""

import html
import uuid
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit.models import AuditEvent
from keys.services import create_credential
from sla.forms import ROUTE_SLOTS
from sla.models import Deployment, ModelRoute
from sla.services import create_deployment, create_route
from tests.conftest import SYSTEM
from tests.orgs.test_views import assert_every_control_labelled, text
from tests.orgs.test_views import field_error as escaped_field_error

pytestmark = pytest.mark.django_db


def url(name: str, **kwargs) -> str:
    return reverse(f"sla:{name}", kwargs={"org_slug": "acme", **kwargs})


def field_error(response, field_id: str) -> str:
    return html.unescape(escaped_field_error(response, field_id))


def last_event(org, action: str) -> AuditEvent:
    event = AuditEvent.objects.filter(org=org, action=action).order_by("-sequence").first()
    assert event is not None, f"no {action} event"
    return event


@pytest.fixture
def credential(org, fresh_key_ring):
    return create_credential(
        actor=SYSTEM,
        org=org,
        name="Simulator",
        provider="openai_compatible",
        base_url="http://127.0.0.1:9/v1",
        secrets={"api_key": "sk-simulator-test-0000"},
    )


def make_deployment(org, credential, name: str, model: str = "gpt-4o") -> Deployment:
    return create_deployment(
        actor=SYSTEM,
        org=org,
        name=name,
        credential=credential,
        upstream_model=model,
        input_price_per_mtok=Decimal("2.50"),
        output_price_per_mtok=Decimal("10"),
    )


@pytest.fixture
def deployments(org, credential) -> list[Deployment]:
    return [
        make_deployment(org, credential, "Primary", "gpt-4o"),
        make_deployment(org, credential, "Fallback", "gpt-4o-mini"),
        make_deployment(org, credential, "Spare", "o1"),
    ]


@pytest.fixture
def route(org, deployments) -> ModelRoute:
    return create_route(actor=SYSTEM, org=org, alias="gpt-4o", deployments=deployments[:2], description="Default")


def deployment_data(credential_, **overrides) -> dict:
    return {
        "name": "Azure EU",
        "credential": str(credential_.pk),
        "upstream_model": "gpt-4o-2024-08-06",
        "input_price_per_mtok": "2.50",
        "output_price_per_mtok": "10.000001",
        **overrides,
    }


# Pages render -------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["auditor", "finance", "admin", "owner"])
def test_lists_and_details_render_for_roles_reading_routes(org, route, client_for, role):
    client = client_for(role)
    deployment = route.deployments.get(name="Primary")
    pages = [
        (url("deployment_list"), "Primary"),
        (url("deployment_detail", deployment_id=deployment.pk), "gpt-4o"),
        (url("route_list"), "Fallback"),
        (url("route_detail", route_id=route.pk), "Primary"),
    ]
    for path, expected in pages:
        response = client.get(path)
        assert response.status_code == 200, path
        assert expected in text(response)
        assert_every_control_labelled(response)


@pytest.mark.parametrize("role", ["viewer", "developer"])
def test_roles_without_routes_read_get_403(org, route, client_for, role):
    client = client_for(role)
    assert client.get(url("deployment_list")).status_code == 403
    assert client.get(url("route_detail", route_id=route.pk)).status_code == 403


def test_readers_see_no_forms_and_managers_do(org, route, client_for):
    auditor_page = text(client_for("auditor").get(url("route_list")))
    admin_page = text(client_for("admin").get(url("route_list")))
    assert "Create a route" not in auditor_page and "Create a route" in admin_page
    detail = url("route_detail", route_id=route.pk)
    assert "Delete route" not in text(client_for("finance").get(detail))
    assert "Delete route" in text(client_for("admin").get(detail))


def test_route_list_shows_deployments_in_priority_order(org, deployments, client_for):
    create_route(actor=SYSTEM, org=org, alias="chat", deployments=[deployments[2], deployments[0]])
    html = text(client_for("auditor").get(url("route_list")))
    assert html.index("Spare") < html.index("Primary")


def test_prices_are_shown_as_written(org, credential, client_for):
    create_deployment(
        actor=SYSTEM,
        org=org,
        name="Cheap",
        credential=credential,
        upstream_model="mini",
        input_price_per_mtok=Decimal("0.075"),
        output_price_per_mtok=Decimal("1234.5"),
    )
    html = text(client_for("auditor").get(url("deployment_list")))
    assert "$0.075" in html and "$1,234.50" in html


def test_unknown_and_foreign_ids_answer_404(org, other_org, route, client_for, fresh_key_ring):
    foreign_credential = create_credential(
        actor=SYSTEM, org=other_org, name="Theirs", provider="openai", secrets={"api_key": "sk-theirs-0000"}
    )
    foreign = make_deployment(other_org, foreign_credential, "Theirs")
    client = client_for("admin")
    assert client.get(url("deployment_detail", deployment_id=foreign.pk)).status_code == 404
    assert client.get(url("deployment_delete", deployment_id=foreign.pk)).status_code == 404
    assert client.get(url("route_detail", route_id=uuid.uuid4())).status_code == 404
    assert client.get("/orgs/acme/routes/12/").status_code == 404


# Deployments: create, edit, delete ---------------------------------------------------------


def test_create_deployment_through_the_page(org, credential, users, client_for):
    response = client_for("admin").post(url("deployment_list"), deployment_data(credential))
    deployment = Deployment.objects.get(org=org, name="Azure EU")
    assert response.status_code == 302
    assert response.url == url("deployment_detail", deployment_id=deployment.pk)
    assert deployment.input_price_per_mtok == Decimal("2.50")
    assert deployment.output_price_per_mtok == Decimal("10.000001")
    event = last_event(org, "deployment.created")
    assert event.actor_label == users["admin"].email
    assert event.target_id == str(deployment.pk)


@pytest.mark.parametrize(
    ("price", "message"),
    [
        ("-1", "Use a price from 0 to 10,000 dollars"),
        ("NaN", "Enter a number of dollars"),
        ("Infinity", "Enter a number of dollars"),
        ("1000000000000000000000000000000", "Use a price from 0 to 10,000 dollars"),
        ("1e30", "Use a price from 0 to 10,000 dollars"),
        ("two dollars", "Enter a number of dollars"),
        ("0.0000001", "at most 6 decimal places"),
        ("", "This field is required."),
    ],
)
def test_bad_prices_are_answered_next_to_the_field(org, credential, client_for, price, message):
    data = deployment_data(credential, input_price_per_mtok=price)
    response = client_for("admin").post(url("deployment_list"), data)
    assert response.status_code == 400
    assert message in field_error(response, "id_input_price_per_mtok")
    assert 'aria-invalid="true"' in text(response)
    assert not Deployment.objects.filter(org=org).exists()


def test_create_deployment_refuses_a_duplicate_name_next_to_the_field(org, deployments, credential, client_for):
    response = client_for("admin").post(url("deployment_list"), deployment_data(credential, name="primary"))
    assert response.status_code == 400
    assert "already exists" in field_error(response, "id_name")


def test_create_deployment_refuses_another_orgs_credential(org, other_org, credential, client_for):
    theirs = create_credential(actor=SYSTEM, org=other_org, name="T", provider="openai", secrets={"api_key": "sk-0"})
    for value in (str(theirs.pk), "not-a-uuid"):
        response = client_for("admin").post(url("deployment_list"), deployment_data(credential, credential=value))
        assert response.status_code == 400
        assert "provider credentials" in field_error(response, "id_credential")
    assert not Deployment.objects.filter(org=org).exists()


@pytest.mark.parametrize(("field", "value"), [("name", "x" * 101), ("upstream_model", "gpt\n4o"), ("name", "  ")])
def test_create_deployment_checks_names(org, credential, client_for, field, value):
    response = client_for("admin").post(url("deployment_list"), deployment_data(credential, **{field: value}))
    assert response.status_code == 400
    assert field_error(response, f"id_{field}")


@pytest.mark.parametrize("role", ["auditor", "finance", "viewer"])
def test_roles_without_routes_manage_cannot_write(org, route, credential, client_for, role):
    client = client_for(role)
    deployment = route.deployments.get(name="Primary")
    assert client.post(url("deployment_list"), deployment_data(credential)).status_code == 403
    assert client.post(url("deployment_detail", deployment_id=deployment.pk), {}).status_code == 403
    assert client.post(url("route_delete", route_id=route.pk)).status_code == 403
    assert client.get(url("deployment_delete", deployment_id=deployment.pk)).status_code == 403
    assert ModelRoute.objects.filter(pk=route.pk).exists()
    assert not Deployment.objects.filter(name="Azure EU").exists()


def test_edit_deployment_through_the_page(org, deployments, client_for, users):
    deployment = deployments[0]
    path = url("deployment_detail", deployment_id=deployment.pk)
    data = {
        "name": "Primary EU",
        "upstream_model": "gpt-4o",
        "input_price_per_mtok": "3",
        "output_price_per_mtok": "10",
    }
    response = client_for("admin").post(path, data)
    assert response.status_code == 302 and response.url == path
    deployment.refresh_from_db()
    assert (deployment.name, deployment.input_price_per_mtok) == ("Primary EU", Decimal(3))
    event = last_event(org, "deployment.updated")
    assert event.diff["input_price_per_mtok"] == {"before": "2.500000", "after": "3.000000"}
    assert event.actor_label == users["admin"].email
    assert "output_price_per_mtok" not in event.diff  # "10" is the 10.000000 already stored


def test_edit_deployment_shows_errors_next_to_fields(org, deployments, client_for):
    deployment = deployments[0]
    data = {"name": "Fallback", "upstream_model": "gpt-4o", "input_price_per_mtok": "1", "output_price_per_mtok": "-5"}
    response = client_for("admin").post(url("deployment_detail", deployment_id=deployment.pk), data)
    assert response.status_code == 400
    assert "Use a price from 0" in field_error(response, "id_output_price_per_mtok")
    data["output_price_per_mtok"] = "5"
    response = client_for("admin").post(url("deployment_detail", deployment_id=deployment.pk), data)
    assert response.status_code == 400
    assert "already exists" in field_error(response, "id_name")
    deployment.refresh_from_db()
    assert deployment.name == "Primary"


def test_delete_deployment_asks_first_then_deletes(org, deployments, client_for):
    deployment = deployments[2]
    path = url("deployment_delete", deployment_id=deployment.pk)
    client = client_for("admin")
    confirmation = client.get(path)
    assert confirmation.status_code == 200
    assert "Delete the deployment “Spare”?" in text(confirmation)
    assert Deployment.objects.filter(pk=deployment.pk).exists()
    response = client.post(path)
    assert response.status_code == 302 and response.url == url("deployment_list")
    assert not Deployment.objects.filter(pk=deployment.pk).exists()
    assert last_event(org, "deployment.deleted").target_id == str(deployment.pk)


def test_delete_deployment_a_route_uses_is_refused_with_an_error(org, route, client_for):
    deployment = route.deployments.get(name="Primary")
    path = url("deployment_delete", deployment_id=deployment.pk)
    client = client_for("admin")
    confirmation = text(client.get(path))
    assert "Routes send traffic to this deployment" in confirmation
    assert 'type="submit"' not in confirmation.split('class="card danger-zone"')[1]
    response = client.post(path)
    assert response.status_code == 400
    assert 'role="alert"' in text(response)
    assert "Routes use this deployment: gpt-4o. Change them first." in text(response)
    assert Deployment.objects.filter(pk=deployment.pk).exists()
    assert not AuditEvent.objects.filter(org=org, action="deployment.deleted").exists()


# Routes: create, edit, delete ----------------------------------------------------------------


def test_route_form_offers_ordered_choices(org, deployments, client_for):
    html = text(client_for("admin").get(url("route_list")))
    for ordinal in ("1st choice", "2nd choice", "3rd choice", "4th choice", "5th choice"):
        assert ordinal in html
    assert "<legend>Deployments, in priority order</legend>" in html


def test_create_route_through_the_page(org, deployments, users, client_for):
    data = {
        "alias": "chat-default",
        "description": "Everyday chat",
        "choice_1": str(deployments[1].pk),
        "choice_2": "",
        "choice_3": str(deployments[0].pk),
    }
    response = client_for("admin").post(url("route_list"), data)
    route = ModelRoute.objects.get(org=org, alias="chat-default")
    assert response.status_code == 302
    assert response.url == url("route_detail", route_id=route.pk)
    assert [t.deployment_id for t in route.targets.order_by("priority")] == [deployments[1].pk, deployments[0].pk]
    event = last_event(org, "route.created")
    assert event.diff["deployments"] == {"after": ["Fallback", "Primary"]}
    assert event.actor_label == users["admin"].email


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"alias": "gpt 4o", "choice_1": 0}, "id_alias", "without spaces"),
        ({"alias": "", "choice_1": 0}, "id_alias", "This field is required."),
        ({"alias": "x" * 101, "choice_1": 0}, "id_alias", "at most 100 characters"),
        ({"alias": "ok"}, "id_choice_1", "Choose the deployment tried first."),
        ({"alias": "ok", "choice_1": 0, "choice_2": 0}, "id_choice_2", "Already the 1st choice."),
        ({"alias": "ok", "choice_1": "junk"}, "id_choice_1", "Choose one of the organization's deployments."),
        ({"alias": "ok", "choice_1": 0, "description": "bad\x00"}, "id_description", "Null characters"),
    ],
)
def test_create_route_shows_errors_next_to_fields(org, deployments, client_for, data, field, message):
    data = {name: str(deployments[value].pk) if isinstance(value, int) else value for name, value in data.items()}
    response = client_for("admin").post(url("route_list"), data)
    assert response.status_code == 400
    assert message in field_error(response, field)
    assert not ModelRoute.objects.filter(org=org).exists()


def test_create_route_refuses_another_orgs_deployment_and_a_taken_alias(org, other_org, route, deployments, client_for):
    theirs = create_credential(actor=SYSTEM, org=other_org, name="T", provider="openai", secrets={"api_key": "sk-0"})
    foreign = make_deployment(other_org, theirs, "Theirs")
    response = client_for("admin").post(url("route_list"), {"alias": "new", "choice_1": str(foreign.pk)})
    assert response.status_code == 400
    assert "Choose one of the organization's deployments." in field_error(response, "id_choice_1")
    response = client_for("admin").post(url("route_list"), {"alias": "gpt-4o", "choice_1": str(deployments[2].pk)})
    assert response.status_code == 400
    assert "already exists" in field_error(response, "id_alias")


def test_edit_route_reorders_its_deployments(org, route, deployments, client_for):
    path = url("route_detail", route_id=route.pk)
    form_page = text(client_for("admin").get(path))
    assert f'<option value="{deployments[0].pk}" selected>' in form_page  # the current 1st choice
    data = {"description": "Fallback first", "choice_1": str(deployments[1].pk), "choice_2": str(deployments[0].pk)}
    response = client_for("admin").post(path, data)
    assert response.status_code == 302
    assert [t.deployment_id for t in route.targets.order_by("priority")] == [deployments[1].pk, deployments[0].pk]
    event = last_event(org, "route.updated")
    assert event.diff["deployments"] == {"before": ["Primary", "Fallback"], "after": ["Fallback", "Primary"]}


def test_edit_route_errors_keep_the_route(org, route, deployments, client_for):
    path = url("route_detail", route_id=route.pk)
    response = client_for("admin").post(path, {"choice_1": "", "choice_2": str(deployments[0].pk)})
    assert response.status_code == 400
    assert "Choose the deployment tried first." in field_error(response, "id_choice_1")
    assert route.targets.count() == 2


def test_edit_form_shows_every_deployment_of_a_long_route(org, credential, client_for):
    many = [make_deployment(org, credential, f"D{index}") for index in range(ROUTE_SLOTS + 2)]
    route = create_route(actor=SYSTEM, org=org, alias="long", deployments=many)
    path = url("route_detail", route_id=route.pk)
    assert "7th choice" in text(client_for("admin").get(path))
    data = {f"choice_{index + 1}": str(d.pk) for index, d in enumerate(many)}
    assert client_for("admin").post(path, {**data, "description": "kept"}).status_code == 302
    assert route.targets.count() == ROUTE_SLOTS + 2


def test_delete_route_asks_first_then_deletes(org, route, client_for):
    path = url("route_delete", route_id=route.pk)
    client = client_for("admin")
    confirmation = client.get(path)
    assert confirmation.status_code == 200
    assert "Callers asking for the model" in text(confirmation)
    assert ModelRoute.objects.filter(pk=route.pk).exists()
    response = client.post(path)
    assert response.status_code == 302 and response.url == url("route_list")
    assert not ModelRoute.objects.filter(pk=route.pk).exists()
    assert last_event(org, "route.deleted").diff == {"alias": {"before": "gpt-4o"}}


# Query counts -------------------------------------------------------------------------------


def count_queries(client, path: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(path).status_code == 200
    return len(queries)


@pytest.mark.parametrize("page", ["deployment_list", "route_list"])
def test_list_pages_cost_the_same_queries_for_3_and_30_rows(org, credential, client_for, page):
    client = client_for("admin")

    def add(start: int, count: int) -> None:
        for index in range(start, start + count):
            deployment = make_deployment(org, credential, f"Deployment {index:02}")
            create_route(actor=SYSTEM, org=org, alias=f"model-{index:02}", deployments=[deployment])

    add(0, 3)
    client.get(url(page))
    few = count_queries(client, url(page))
    add(3, 27)
    many = count_queries(client, url(page))
    assert few == many

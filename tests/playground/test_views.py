"""The playground page and its key minting, for each role (issue 15)."""

import json

import pytest
from django.urls import reverse

from audit.models import AuditEvent
from budgets.services import set_price
from keys.models import CallerKey
from keys.services import PLAYGROUND_TAG, issue_key
from orgs.services import create_team, set_team_admin, set_team_limits
from tests.budgets.test_views import rollup, this_hour
from tests.conftest import SYSTEM
from tests.factories import make_routes
from tests.sla.test_report_views import traffic

PAGE = reverse("playground:page", kwargs={"org_slug": "acme"})
MINT = reverse("playground:mint_key", kwargs={"org_slug": "acme"})


@pytest.fixture
def routes(org):
    return make_routes(org, SYSTEM)


def config_of(response) -> dict:
    return response.context["config"]


# The page ------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["owner", "admin", "developer"])
def test_those_who_may_issue_their_own_keys_get_the_page(client_for, team, routes, role):
    response = client_for(role).get(PAGE)
    assert response.status_code == 200
    assert b'id="playground-form"' in response.content


@pytest.mark.parametrize("role", ["finance", "auditor", "viewer"])
def test_roles_that_may_not_issue_keys_are_refused(client_for, team, routes, role):
    assert client_for(role).get(PAGE).status_code == 403


def test_outsiders_get_404(client_for, team, routes):
    assert client_for("outsider").get(PAGE).status_code == 404


def test_it_requires_sign_in(client, team):
    response = client.get(PAGE)
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_a_viewer_who_is_a_team_admin_may_use_it_for_that_team(client_for, team, users, routes):
    set_team_admin(actor=SYSTEM, team=team, user=users["viewer"], team_admin=True)
    response = client_for("viewer").get(PAGE)
    assert response.status_code == 200
    assert response.context["team"] == team


def test_a_developer_is_offered_only_their_teams(client_for, org, team, routes):
    create_team(actor=SYSTEM, org=org, name="Elsewhere")
    response = client_for("developer").get(PAGE)
    assert list(response.context["chooser"].fields["team"].queryset) == [team]


def test_a_team_the_developer_is_not_in_is_refused_next_to_the_field(client_for, org, team, routes):
    elsewhere = create_team(actor=SYSTEM, org=org, name="Elsewhere")
    response = client_for("developer").get(PAGE, {"team": elsewhere.pk})
    assert response.status_code == 400
    assert response.context["chooser"].errors["team"] == ["Choose one of the teams you may use the playground in."]
    assert response.context["team"] == team  # the page still works, for a team of theirs


def test_a_developer_in_no_team_is_told_so(client_for, org, routes):
    response = client_for("developer").get(PAGE)
    assert response.status_code == 200
    assert b"you belong to none" in response.content
    assert b'id="playground-form"' not in response.content


def test_it_offers_only_the_models_the_team_may_call(client_for, team, routes):
    set_team_limits(actor=SYSTEM, team=team, allowed_models=["gpt-4o", "o1"], rpm_limit=None, tpm_limit=None)
    response = client_for("developer").get(PAGE)
    assert response.context["models"] == ["gpt-4o", "o1"]
    assert set(config_of(response)["prices"]) == {str(routes[alias].deployments.get().pk) for alias in ("gpt-4o", "o1")}


def test_a_try_it_link_preselects_the_team_and_models(client_for, org, team, users, routes):
    response = client_for("developer").get(PAGE, {"team": team.pk, "model": ["o1", "claude-sonnet", "unknown"]})
    assert response.context["prompt"].initial["models"] == ["o1", "claude-sonnet"]
    assert b'value="o1"' in response.content and b'id="id_models_2" checked' in response.content


def test_a_try_it_link_with_only_a_model_picks_a_team_that_may_call_it(client_for, org, team, users, routes):
    narrow = create_team(actor=SYSTEM, org=org, name="A narrow team")  # first by name
    set_team_limits(actor=SYSTEM, team=narrow, allowed_models=["gpt-4o"], rpm_limit=None, tpm_limit=None)
    response = client_for("admin").get(PAGE, {"model": "o1"})
    assert response.context["team"] == team
    assert response.context["prompt"].initial["models"] == ["o1"]


def test_the_key_detail_page_links_to_the_playground_with_the_keys_team_and_models(client_for, team, users, routes):
    key, _ = issue_key(actor=SYSTEM, team=team, name="mine", user=users["developer"], allowed_models=["gpt-4o", "o1"])
    page = client_for("developer").get(reverse("keys:detail", kwargs={"org_slug": "acme", "key_id": key.pk}))
    assert f'href="{PAGE}?team={team.pk}&amp;model=gpt-4o&amp;model=o1"'.encode() in page.content


def test_the_model_leaderboard_offers_a_try_it_link_to_those_who_may_use_the_playground(client_for, org, team):
    traffic(org, team, requests=1, failing=0, alias="o1")
    link = f'href="{PAGE}?model=o1"'.encode()
    leaderboard = reverse("slo:leaderboard", kwargs={"org_slug": "acme"})
    assert link in client_for("admin").get(leaderboard).content
    assert link not in client_for("auditor").get(leaderboard).content


def test_the_usage_pages_models_offer_a_try_it_link_with_the_team(client_for, org, team, users):
    key, _ = issue_key(actor=SYSTEM, team=team, name="mine", user=users["developer"])
    rollup(org, hour=this_hour(), team=team, key=key, alias="o1")
    usage = client_for("developer").get(reverse("budgets:usage", kwargs={"org_slug": "acme"}), {"team": team.pk})
    assert f'href="{PAGE}?team={team.pk}&amp;model=o1"'.encode() in usage.content


def test_the_page_prices_each_deployment_at_its_current_price(client_for, org, team, users, actors, routes):
    deployment = routes["gpt-4o"].deployments.get()
    set_price(actor=actors["finance"], deployment=deployment, input_per_mtok="1.25", output_per_mtok="5")
    prices = config_of(client_for("developer").get(PAGE))["prices"]
    assert [float(value) for value in prices[str(deployment.pk)]] == [1.25, 5.0]
    assert [float(value) for value in prices[str(routes["o1"].deployments.get().pk)]] == [2.5, 10.0]


def test_the_page_carries_no_key(client_for, team, routes):
    response = client_for("developer").get(PAGE)
    assert b"gh_" not in response.content
    assert not CallerKey.objects.exists()


def test_without_a_gateway_url_it_says_the_playground_is_not_configured(client_for, team, routes, settings):
    settings.GATEHOUSE_PLAYGROUND_GATEWAY_URL = ""
    response = client_for("developer").get(PAGE)
    assert response.status_code == 200
    assert b"The playground is not configured" in response.content
    assert b'id="playground-form"' not in response.content


def test_the_page_tells_the_script_where_the_gateway_is(client_for, team, routes, settings):
    settings.GATEHOUSE_PLAYGROUND_GATEWAY_URL = "https://gateway.example.com/v1/"
    config = config_of(client_for("developer").get(PAGE))
    assert (config["gatewayUrl"], config["team"]) == ("https://gateway.example.com/v1", str(team.pk))
    assert (config["mintUrl"], config["maxModels"]) == (MINT, 4)


# Minting -------------------------------------------------------------------------------------


def test_minting_answers_a_key_for_the_team_once_and_uncached(client_for, org, team, users, routes):
    response = client_for("developer").post(MINT, {"team": team.pk})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    answer = json.loads(response.content)
    key = CallerKey.objects.get(tags__contains=[PLAYGROUND_TAG])
    assert answer["key"].startswith(key.prefix)
    assert (answer["team"], answer["models"]) == (str(team.pk), ["claude-sonnet", "gpt-4o", "o1"])
    assert (key.user, key.team) == (users["developer"], team)
    assert AuditEvent.objects.filter(org=org, action="key.issued", target_id=str(key.pk)).count() == 1


def test_minting_covers_only_the_teams_models(client_for, team, routes):
    set_team_limits(actor=SYSTEM, team=team, allowed_models=["o1"], rpm_limit=None, tpm_limit=None)
    response = client_for("developer").post(MINT, {"team": team.pk})
    assert json.loads(response.content)["models"] == ["o1"]


def test_minting_in_a_team_the_developer_is_not_in_is_refused(client_for, org, team, routes):
    elsewhere = create_team(actor=SYSTEM, org=org, name="Elsewhere")
    response = client_for("developer").post(MINT, {"team": elsewhere.pk})
    assert response.status_code == 400
    assert "team" in json.loads(response.content)["errors"]
    assert not CallerKey.objects.exists()


def test_minting_for_a_team_without_models_explains(client_for, org, users):
    team = create_team(actor=SYSTEM, org=org, name="Bare")
    response = client_for("admin").post(MINT, {"team": team.pk})
    assert response.status_code == 400
    assert json.loads(response.content)["errors"]["team"] == ["This team may call no model yet."]


def test_minting_only_answers_post(client_for, team, routes):
    assert client_for("developer").get(MINT).status_code == 405


@pytest.mark.parametrize("role", ["finance", "auditor", "viewer"])
def test_minting_is_refused_to_roles_that_may_not_issue_keys(client_for, team, routes, role):
    assert client_for(role).post(MINT, {"team": team.pk}).status_code == 403
    assert not CallerKey.objects.exists()


def test_minting_is_404_for_outsiders(client_for, team, routes):
    assert client_for("outsider").post(MINT, {"team": team.pk}).status_code == 404


def test_minting_checks_csrf(team, users, routes):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(users["developer"])
    assert client.post(MINT, {"team": team.pk}).status_code == 403
    assert not CallerKey.objects.exists()

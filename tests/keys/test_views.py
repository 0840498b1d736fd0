"""The portal pages of caller keys and provider credentials: each renders for a role allowed to
see it, each write works through the page and leaves its audit event, bad input is answered next
to its field with status 400, a key's plaintext is shown once, a provider secret never after it
was entered, and list pages cost the same number of queries for 3 rows as for 30."""

import hashlib
import re
import uuid
from datetime import timedelta
from html.parser import HTMLParser

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from keys.models import CallerKey, ProviderCredential
from keys.services import create_credential, issue_key, open_secret, revoke_key, rotate_key
from orgs.models import Team
from orgs.services import add_team_member, create_team, set_team_admin
from tests.conftest import SYSTEM
from tests.factories import make_routes

pytestmark = pytest.mark.django_db

CANARY = "sk-canary-page-7f3e19d2c4b8a605"


def url(name: str, **kwargs) -> str:
    kwargs.setdefault("org_slug", "acme")
    return reverse(f"keys:{name}", kwargs=kwargs)


def text(response) -> str:
    return response.content.decode()


def last_event(org, action: str) -> AuditEvent:
    event = AuditEvent.objects.filter(org=org, action=action).order_by("-sequence").first()
    assert event is not None, f"no {action} event"
    return event


def field_error(response, field_id: str) -> str:
    """The error list Django renders next to a field (id="<field id>_error"), as text."""
    match = re.search(rf'<ul class="errorlist" id="{field_id}_error">(.*?)</ul>', text(response), re.S)
    assert match, f"no error next to {field_id}"
    return re.sub(r"<[^>]+>", " ", match.group(1))


def form_error(response) -> str:
    match = re.search(r'<div class="form-errors" role="alert">(.*?)</div>', text(response), re.S)
    assert match, "no error above the form"
    return re.sub(r"<[^>]+>", " ", match.group(1))


class FormControls(HTMLParser):
    """Form controls and labels, to check that every visible control has a label."""

    def __init__(self):
        super().__init__()
        self.controls: list[dict] = []
        self.label_targets: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "label":
            self.label_targets.add(attributes.get("for"))
        if tag in {"input", "select", "textarea"} and attributes.get("type") not in {"hidden", "submit", "button"}:
            self.controls.append(attributes)


def assert_every_control_labelled(response) -> None:
    parser = FormControls()
    parser.feed(text(response))
    assert "" not in parser.label_targets and None not in parser.label_targets, "a label names no control"
    for control in parser.controls:
        assert control.get("id") in parser.label_targets, f"unlabelled control: {control}"


def shown_key(response) -> str:
    match = re.search(r'<code id="new-key">(gh_[^<]+)</code>', text(response))
    assert match, "plaintext not shown"
    return match.group(1)


def key_form(team, **overrides) -> dict:
    data = {"team": str(team.pk), "name": "Search backend", "owner": "", "tags": ""}
    data.update(overrides)
    return {name: value for name, value in data.items() if value is not None}


@pytest.fixture
def routes(org, actors, fresh_key_ring):
    return make_routes(org, actors["admin"])


@pytest.fixture
def limited_team(team, routes):
    Team.objects.filter(pk=team.pk).update(allowed_models=["gpt-4o", "claude-sonnet"], rpm_limit=100, tpm_limit=50_000)
    team.refresh_from_db()
    return team


@pytest.fixture
def data_team(org, users):
    """A second team of acme, with the finance person in it."""
    data = create_team(actor=SYSTEM, org=org, name="Data")
    add_team_member(actor=SYSTEM, team=data, user=users["finance"])
    return data


@pytest.fixture
def viewer_team_admin(team, users):
    """The viewer, made team admin of `team`: team-level rights without any org-level key right."""
    set_team_admin(actor=SYSTEM, team=team, user=users["viewer"], team_admin=True)
    return users["viewer"]


@pytest.fixture
def keys(team, data_team, users, actors):
    """The developer's key in Platform, a Platform service key, and a key of Data."""
    own, _ = issue_key(actor=actors["developer"], team=team, name="Dev laptop", user=users["developer"])
    service, _ = issue_key(actor=actors["admin"], team=team, name="Platform CI", tags=["ci"])
    data, _ = issue_key(actor=actors["admin"], team=data_team, name="Data notebook", user=users["finance"])
    return {"own": own, "service": service, "data": data}


def credential_form(**overrides) -> dict:
    data = {
        "name": "OpenAI production",
        "provider": "openai",
        "base_url": "",
        "azure_endpoint": "",
        "azure_api_version": "",
        "api_key": CANARY,
    }
    data.update(overrides)
    return data


@pytest.fixture
def credential(org, actors, fresh_key_ring, team):
    return create_credential(
        actor=actors["admin"],
        org=org,
        name="Claude production",
        provider="anthropic",
        secrets={"api_key": CANARY},
        teams=[team],
    )


# Navigation and rendering ------------------------------------------------------------------


@pytest.mark.parametrize("role", ["viewer", "developer", "finance", "auditor", "admin", "owner"])
def test_navigation_offers_keys_and_credentials_to_every_member(org, client_for, role):
    html = text(client_for(role).get(reverse("orgs:dashboard", kwargs={"org_slug": "acme"})))
    assert f'href="{url("list")}"' in html
    assert f'href="{url("credential_list")}"' in html


PAGES = [
    ("list", "viewer", "Caller keys"),
    ("list", "auditor", "Platform CI"),
    ("create", "developer", "Issue a caller key"),
    ("detail", "auditor", "Platform CI"),
    ("rotate", "admin", "Rotate the key"),
    ("revoke", "admin", "Revoke the key"),
    ("bulk_revoke", "admin", "Revoke keys in bulk"),
    ("credential_list", "viewer", "Claude production"),
    ("credential_create", "admin", "Add a provider credential"),
    ("credential_detail", "auditor", "Claude production"),
    ("credential_delete", "admin", "Delete the credential"),
]


def page_kwargs(name: str, keys, credential) -> dict:
    if name in {"detail", "rotate", "revoke"}:
        return {"key_id": keys["service"].pk}
    if name in {"credential_detail", "credential_delete", "credential_test"}:
        return {"credential_id": credential.pk}
    return {}


@pytest.mark.parametrize(("name", "role", "expected"), PAGES)
def test_page_renders_for_an_allowed_role(org, keys, credential, routes, client_for, name, role, expected):
    response = client_for(role).get(url(name, **page_kwargs(name, keys, credential)))
    assert response.status_code == 200
    assert expected in text(response)
    assert_every_control_labelled(response)


@pytest.mark.parametrize("name", sorted({page[0] for page in PAGES}))
def test_pages_label_every_control_for_admins(org, keys, credential, routes, client_for, name):
    response = client_for("admin").get(url(name, **page_kwargs(name, keys, credential)))
    assert response.status_code == 200
    assert_every_control_labelled(response)


# Access: the check comes before the method and the input -------------------------------------

# (url name, method, a role too low). The matrix in tests/test_route_matrix.py covers every role.
REFUSED = [
    ("create", "get", "viewer"),
    ("create", "post", "finance"),
    ("detail", "get", "developer"),
    ("detail", "post", "auditor"),
    ("rotate", "get", "finance"),
    ("rotate", "post", "developer"),
    ("revoke", "get", "auditor"),
    ("revoke", "post", "developer"),
    ("bulk_revoke", "get", "developer"),
    ("bulk_revoke", "post", "auditor"),
    ("credential_create", "get", "auditor"),
    ("credential_create", "post", "finance"),
    ("credential_detail", "get", "developer"),
    ("credential_detail", "post", "auditor"),
    ("credential_delete", "get", "finance"),
    ("credential_delete", "post", "auditor"),
    ("credential_test", "post", "auditor"),
]


@pytest.mark.parametrize(("name", "method", "role"), REFUSED)
def test_outsiders_get_404_and_roles_too_low_403(org, keys, credential, client_for, name, method, role):
    path = url(name, **page_kwargs(name, keys, credential))
    assert getattr(client_for("outsider"), method)(path).status_code == 404
    assert getattr(client_for(role), method)(path).status_code == 403
    assert (
        getattr(client_for("owner"), method)(
            url(name, org_slug="nope", **page_kwargs(name, keys, credential))
        ).status_code
        == 404
    )
    assert CallerKey.objects.filter(revoked_at=None).count() == 3
    assert ProviderCredential.objects.filter(name="Claude production").exists()


@pytest.mark.parametrize("name", ["list", "credential_list"])
def test_list_pages_answer_404_to_outsiders(org, client_for, name):
    assert client_for("outsider").get(url(name)).status_code == 404
    assert client_for("admin").get(url(name, org_slug="nope")).status_code == 404


def test_another_orgs_key_and_credential_answer_404(org, other_org, actors, fresh_key_ring, client_for):
    foreign_team = Team.objects.get(org=other_org)
    foreign_key, _ = issue_key(actor=SYSTEM, team=foreign_team, name="Theirs")
    foreign_credential = create_credential(
        actor=SYSTEM, org=other_org, name="Theirs", provider="openai", secrets={"api_key": CANARY}
    )
    client = client_for("owner")
    for name in ("detail", "rotate", "revoke"):
        assert client.get(url(name, key_id=foreign_key.pk)).status_code == 404
        assert client.post(url(name, key_id=foreign_key.pk)).status_code == 404
    for name in ("credential_detail", "credential_delete", "credential_test"):
        assert client.post(url(name, credential_id=foreign_credential.pk)).status_code == 404
    assert client.get(url("detail", key_id=uuid.uuid4())).status_code == 404
    assert client.get(f"/orgs/acme/keys/{foreign_key.pk}x/").status_code == 404
    assert CallerKey.objects.get(pk=foreign_key.pk).revoked_at is None


def test_credential_test_answers_405_to_get(org, credential, client_for):
    assert client_for("admin").get(url("credential_test", credential_id=credential.pk)).status_code == 405
    assert client_for("viewer").get(url("credential_test", credential_id=credential.pk)).status_code == 403


# Issuing keys --------------------------------------------------------------------------------


def test_admin_issues_a_key_and_sees_the_plaintext_once(org, team, routes, users, client_for, settings):
    settings.GATEHOUSE_GATEWAY_URL = "https://gateway.acme.test/v1"
    client = client_for("admin")
    expires = (timezone.now() + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M")
    response = client.post(
        url("create"),
        key_form(
            team,
            owner=str(users["developer"].uuid),
            expires_at=expires,
            allowed_models=["gpt-4o", "o1"],
            rpm_limit="60",
            tpm_limit="10000",
            tags="search, ci, search",
        ),
    )
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    plaintext = shown_key(response)
    key = CallerKey.objects.get(org=org, name="Search backend")
    assert key.digest == hashlib.sha256(plaintext.encode()).hexdigest()
    assert (key.team, key.user, key.created_by) == (team, users["developer"], users["admin"])
    assert (key.allowed_models, key.rpm_limit, key.tpm_limit, key.tags) == (
        ["gpt-4o", "o1"],
        60,
        10_000,
        ["ci", "search"],
    )
    assert key.expires_at.strftime("%Y-%m-%dT%H:%M") == expires
    html = text(response)
    assert 'base_url="https://gateway.acme.test/v1"' in html
    assert 'model="gpt-4o"' in html
    assert 'data-copy="new-key"' in html
    event = last_event(org, "key.issued")
    assert (event.actor_label, event.target_id) == ("admin@acme.test", str(key.pk))
    assert plaintext not in str(event.diff)
    for page in (url("list"), url("detail", key_id=key.pk)):
        later = text(client.get(page))
        assert key.prefix in later
        assert plaintext not in later


def test_the_snippet_defaults_to_the_local_gateway(org, team, client_for, settings):
    if hasattr(settings, "GATEHOUSE_GATEWAY_URL"):
        del settings.GATEHOUSE_GATEWAY_URL
    response = client_for("admin").post(url("create"), key_form(team))
    assert 'base_url="http://127.0.0.1:8080/v1"' in text(response)


def test_the_plaintext_never_travels_by_redirect_or_session(org, team, client_for):
    client = client_for("admin")
    response = client.post(url("create"), key_form(team))
    plaintext = shown_key(response)
    assert plaintext not in str(dict(client.session))
    assert plaintext not in text(client.get(url("list")))


def test_developer_issues_their_own_key_in_their_team(org, team, users, client_for):
    client = client_for("developer")
    form = text(client.get(url("create")))
    assert "developer@acme.test" in form and "finance@acme.test" not in form
    response = client.post(url("create"), key_form(team, owner=str(users["developer"].uuid)))
    assert response.status_code == 200
    key = CallerKey.objects.get(org=org)
    assert (key.user, key.team) == (users["developer"], team)
    assert last_event(org, "key.issued").actor_label == "developer@acme.test"


@pytest.mark.parametrize("owner", ["viewer", "nobody"])
def test_developer_cannot_issue_a_key_for_someone_else_or_nobody(org, team, users, client_for, owner):
    value = "" if owner == "nobody" else str(users[owner].uuid)
    response = client_for("developer").post(url("create"), key_form(team, owner=value))
    assert response.status_code == 400
    assert field_error(response, "id_owner").strip()
    assert not CallerKey.objects.exists()
    assert 'id="new-key"' not in text(response)


def test_developer_cannot_issue_in_a_team_they_are_not_in(org, team, data_team, users, client_for):
    response = client_for("developer").post(url("create"), key_form(data_team, owner=str(users["developer"].uuid)))
    assert response.status_code == 400
    assert "Choose one of the teams offered." in field_error(response, "id_team")
    assert not CallerKey.objects.exists()


def test_developer_in_no_team_is_told_so(org, client_for):
    response = client_for("developer").get(url("create"))
    assert response.status_code == 200
    assert "You are in no team" in text(response)


@pytest.mark.parametrize("role", ["viewer", "finance", "auditor"])
def test_roles_without_key_rights_cannot_issue(org, team, users, client_for, role):
    assert client_for(role).get(url("create")).status_code == 403
    response = client_for(role).post(url("create"), key_form(team, owner=str(users[role].uuid)))
    assert response.status_code == 403
    assert not CallerKey.objects.exists()


def test_owner_must_be_a_member_of_the_team(org, team, users, client_for):
    response = client_for("admin").post(url("create"), key_form(team, owner=str(users["finance"].uuid)))
    assert response.status_code == 400
    assert "not a member of the team" in field_error(response, "id_owner")


def test_team_admin_issues_keys_in_their_team_only(org, team, data_team, users, viewer_team_admin, client_for):
    client = client_for("viewer")
    response = client.post(url("create"), key_form(team, owner=str(users["developer"].uuid)))
    assert response.status_code == 200
    assert CallerKey.objects.get(org=org).user == users["developer"]
    response = client.post(url("create"), key_form(team, name="Service"))
    assert response.status_code == 200
    response = client.post(url("create"), key_form(data_team, name="Theirs"))
    assert response.status_code == 400
    assert "Choose one of the teams offered." in field_error(response, "id_team")
    assert CallerKey.objects.filter(org=org).count() == 2


def test_team_admin_may_name_only_people_of_their_teams(org, team, data_team, viewer_team_admin, client_for):
    html = text(client_for("viewer").get(url("create")))
    assert "developer@acme.test" in html and "viewer@acme.test" in html
    assert "finance@acme.test" not in html and "admin@acme.test" not in html
    assert ">Data<" not in html


def test_team_admin_sees_their_teams_keys_and_manages_them(org, keys, viewer_team_admin, client_for):
    client = client_for("viewer")
    listing = text(client.get(url("list")))
    assert "Dev laptop" in listing and "Platform CI" in listing and "Data notebook" not in listing
    assert client.get(url("detail", key_id=keys["data"].pk)).status_code == 403
    assert client.post(url("revoke", key_id=keys["service"].pk)).status_code == 302
    assert CallerKey.objects.get(pk=keys["service"].pk).revoked_at is not None


def test_delegation_beyond_the_teams_models_is_refused_next_to_the_field(org, limited_team, client_for):
    response = client_for("admin").post(url("create"), key_form(limited_team, allowed_models=["gpt-4o", "o1"]))
    assert response.status_code == 400
    assert "The team does not allow: o1." in field_error(response, "id_allowed_models")
    assert not CallerKey.objects.exists()


@pytest.mark.parametrize(("field", "value"), [("rpm_limit", "101"), ("tpm_limit", "50001")])
def test_delegation_beyond_the_teams_limits_is_refused_next_to_the_field(org, limited_team, client_for, field, value):
    response = client_for("admin").post(url("create"), key_form(limited_team, **{field: value}))
    assert response.status_code == 400
    assert "The team allows at most" in field_error(response, f"id_{field}")
    assert not CallerKey.objects.exists()


def test_a_key_without_limits_inherits_the_teams(org, limited_team, client_for):
    assert client_for("admin").post(url("create"), key_form(limited_team)).status_code == 200
    key = CallerKey.objects.get(org=org)
    assert (key.rpm_limit, key.tpm_limit) == (100, 50_000)


def in_the_past() -> str:
    return (timezone.now() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"name": ""}, "id_name", "required"),
        ({"name": "n" * 10_000}, "id_name", "at most 100 characters"),
        ({"name": "Bad\x1bname"}, "id_name", "Control"),
        ({"rpm_limit": "0"}, "id_rpm_limit", "greater than or equal to 1"),
        ({"rpm_limit": "-5"}, "id_rpm_limit", "greater than or equal to 1"),
        ({"tpm_limit": str(10**30)}, "id_tpm_limit", "less than or equal to 10000000"),
        ({"rpm_limit": "1.5"}, "id_rpm_limit", "whole number"),
        ({"expires_at": "2001-01-01T00:00"}, "id_expires_at", "in the future"),
        ({"expires_at": "9999-12-31T23:59"}, "id_expires_at", "within five years"),
        ({"expires_at": "tomorrow"}, "id_expires_at", "Enter a valid date/time."),
        ({"allowed_models": ["no-such-model"]}, "id_allowed_models", "Choose one of the options offered."),
        ({"tags": ",".join(f"t{n}" for n in range(21))}, "id_tags", "At most 20 tags."),
        ({"tags": "ok, " + "t" * 65}, "id_tags", "at most 64 characters"),
        ({"team": str(uuid.uuid4())}, "id_team", "Choose one of the teams offered."),
        ({"team": "not-a-uuid"}, "id_team", "Choose one of the teams offered."),
        ({"owner": "not-a-uuid"}, "id_owner", "Choose one of the people offered."),
    ],
)
def test_issue_key_errors_sit_next_to_their_field(org, team, routes, client_for, overrides, field, message):
    response = client_for("admin").post(url("create"), {**key_form(team), **overrides})
    assert response.status_code == 400
    assert message in field_error(response, field)
    assert 'aria-invalid="true"' in text(response) or field == "id_allowed_models"
    assert not CallerKey.objects.exists()


def test_issue_key_in_another_orgs_team_is_a_field_error(org, other_org, team, client_for):
    response = client_for("owner").post(url("create"), key_form(Team.objects.get(org=other_org)))
    assert response.status_code == 400
    assert "Choose one of the teams offered." in field_error(response, "id_team")
    assert not CallerKey.objects.exists()


def test_issue_key_offers_the_orgs_route_aliases(org, team, routes, other_org, client_for):
    make_routes(other_org, SYSTEM, aliases=("their-model",))
    html = text(client_for("admin").get(url("create")))
    for alias in ("gpt-4o", "claude-sonnet", "o1"):
        assert f'value="{alias}"' in html
    assert "their-model" not in html


# The key list ----------------------------------------------------------------------------------


def test_key_list_shows_developers_their_own_keys_only(org, keys, client_for):
    html = text(client_for("developer").get(url("list")))
    assert "Dev laptop" in html
    assert "Platform CI" not in html and "Data notebook" not in html


@pytest.mark.parametrize("role", ["auditor", "finance", "admin"])
def test_key_list_shows_every_key_to_readers(org, keys, client_for, role):
    html = text(client_for(role).get(url("list")))
    assert all(name in html for name in ("Dev laptop", "Platform CI", "Data notebook"))


def test_key_list_filters(org, team, data_team, keys, users, actors, client_for):
    issue_key(actor=SYSTEM, team=team, name="Short lived", expires_at=timezone.now() + timedelta(days=3))
    revoke_key(actor=SYSTEM, key=keys["service"])
    client = client_for("admin")

    def names(query: str) -> set[str]:
        response = client.get(url("list") + query)
        assert response.status_code == 200
        html = text(response)
        return {name for name in ("Dev laptop", "Platform CI", "Data notebook", "Short lived") if name in html}

    assert names("?q=laptop") == {"Dev laptop"}
    assert names(f"?q={keys['data'].prefix}") == {"Data notebook"}
    assert names(f"?team={data_team.pk}") == {"Data notebook"}
    assert names("?status=revoked") == {"Platform CI"}
    assert names("?status=active") == {"Dev laptop", "Data notebook", "Short lived"}
    assert names(f"?owner={users['developer'].uuid}") == {"Dev laptop"}
    assert names("?expiring=7") == {"Short lived"}
    assert names("?expiring=1") == set()
    assert names(f"?team={team.pk}&status=active") == {"Dev laptop", "Short lived"}


def test_key_list_survives_junk_query_strings(org, keys, client_for):
    response = client_for("admin").get(
        url("list") + "?q=" + "x" * 5000 + "&team=junk&status=nope&owner=1&expiring=-3&page=abc"
    )
    assert response.status_code == 200


def test_key_list_paginates_with_filters_in_the_query_string(org, team, client_for):
    for number in range(30):
        issue_key(actor=SYSTEM, team=team, name=f"Bulk {number:02d}")
    html = text(client_for("admin").get(url("list") + f"?team={team.pk}"))
    assert "Showing 1\u201325 of 30" in html
    assert f"?team={team.pk}&amp;page=2" in html


def add_keys(team, users, start: int, count: int) -> None:
    for number in range(start, start + count):
        owner = users["developer"] if number % 2 else None
        issue_key(actor=SYSTEM, team=team, name=f"Key {number}", user=owner, tags=["load"])


@pytest.mark.parametrize("role", ["admin", "developer", "viewer"])
def test_key_list_costs_the_same_queries_for_3_and_30_rows(org, team, users, viewer_team_admin, client_for, role):
    client = client_for(role)
    add_keys(team, users, 0, 3)
    client.get(url("list"))  # warm per-process caches (content types, sessions)
    few = count_queries(client, url("list"))
    add_keys(team, users, 3, 27)
    many = count_queries(client, url("list"))
    assert few == many


def count_queries(client, path) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(path)
    assert response.status_code == 200
    return len(queries)


# Key detail, edit, rotate, revoke ----------------------------------------------------------------


def test_key_detail_shows_settings_and_a_link_to_its_audit_history(org, keys, client_for):
    key = keys["own"]
    html = text(client_for("auditor").get(url("detail", key_id=key.pk)))
    assert key.prefix in html and "Dev laptop" in html and "developer@acme.test" in html
    assert f"{reverse('audit:list', kwargs={'org_slug': 'acme'})}?target={key.pk}" in html
    assert "Change the key" not in html  # auditors read


def test_owner_of_a_key_reads_and_edits_it(org, keys, client_for):
    client = client_for("developer")
    key = keys["own"]
    assert "Change the key" in text(client.get(url("detail", key_id=key.pk)))
    response = client.post(url("detail", key_id=key.pk), {"name": "Dev laptop 2", "tags": "a, b", "rpm_limit": "30"})
    assert response.status_code == 302
    key.refresh_from_db()
    assert (key.name, key.tags, key.rpm_limit) == ("Dev laptop 2", ["a", "b"], 30)
    event = last_event(org, "key.updated")
    assert event.diff["name"] == {"before": "Dev laptop", "after": "Dev laptop 2"}
    assert client.post(url("detail", key_id=keys["service"].pk), {"name": "Mine"}).status_code == 403


def test_saving_a_key_keeps_its_expiry_to_the_second(org, team, client_for):
    expires_at = timezone.now() + timedelta(days=3, seconds=17)
    key, _ = issue_key(actor=SYSTEM, team=team, name="Expiring", expires_at=expires_at)
    client = client_for("admin")
    page = text(client.get(url("detail", key_id=key.pk)))
    shown = re.search(r'name="expires_at" value="([^"]+)"', page).group(1)
    assert client.post(url("detail", key_id=key.pk), {"name": "Renamed", "expires_at": shown}).status_code == 302
    key.refresh_from_db()
    assert (key.name, key.expires_at) == ("Renamed", expires_at)
    assert set(last_event(org, "key.updated").diff) == {"name"}


def test_edit_key_errors_sit_next_to_their_field(org, keys, limited_team, client_for):
    path = url("detail", key_id=keys["service"].pk)
    client = client_for("admin")
    response = client.post(path, {"name": "x" * 10_000, "rpm_limit": "0"})
    assert response.status_code == 400
    assert "at most 100 characters" in field_error(response, "id_name")
    assert "greater than or equal to 1" in field_error(response, "id_rpm_limit")
    response = client.post(path, {"name": "CI", "rpm_limit": "1000"})
    assert response.status_code == 400
    assert "The team allows at most 100." in field_error(response, "id_rpm_limit")
    response = client.post(path, {"name": "CI", "expires_at": in_the_past()})
    assert response.status_code == 400
    assert "in the future" in field_error(response, "id_expires_at")
    assert CallerKey.objects.get(pk=keys["service"].pk).name == "Platform CI"


def test_a_revoked_key_cannot_be_edited(org, keys, client_for):
    revoke_key(actor=SYSTEM, key=keys["service"])
    client = client_for("admin")
    assert "Change the key" not in text(client.get(url("detail", key_id=keys["service"].pk)))
    response = client.post(url("detail", key_id=keys["service"].pk), {"name": "Again"})
    assert response.status_code == 400
    assert "revoked" in form_error(response)


def test_rotate_asks_for_a_grace_period_then_shows_the_successor_once(org, keys, client_for):
    client = client_for("admin")
    old = keys["service"]
    path = url("rotate", key_id=old.pk)
    confirmation = client.get(path)
    assert confirmation.status_code == 200
    assert 'value="24"' in text(confirmation)
    response = client.post(path, {"grace_hours": "0"})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    plaintext = shown_key(response)
    successor = CallerKey.objects.get(rotated_from=old)
    assert successor.digest == hashlib.sha256(plaintext.encode()).hexdigest()
    assert (successor.name, successor.team, successor.tags) == ("Platform CI", old.team, ["ci"])
    old.refresh_from_db()
    assert old.status == "expired"
    assert "has stopped working" in text(response)
    assert last_event(org, "key.rotated").target_id == str(successor.pk)
    successor_page = text(client.get(url("detail", key_id=successor.pk)))
    assert "Rotated from" in successor_page and old.prefix in successor_page
    old_page = text(client.get(url("detail", key_id=old.pk)))
    assert "Replaced by" in old_page and successor.prefix in old_page
    assert plaintext not in successor_page + old_page + text(client.get(url("list")))


def test_rotate_with_the_default_grace_keeps_the_old_key_for_a_day(org, keys, client_for):
    response = client_for("developer").post(url("rotate", key_id=keys["own"].pk), {"grace_hours": "24"})
    assert response.status_code == 200
    old = CallerKey.objects.get(pk=keys["own"].pk)
    assert old.status == "active"
    assert timedelta(hours=23) < old.expires_at - timezone.now() <= timedelta(hours=24)
    assert "keeps working until" in text(response)


@pytest.mark.parametrize(
    ("grace", "message"),
    [("-1", "greater than or equal to 0"), ("100000", "less than or equal to 720"), ("", "required"), ("x", "whole")],
)
def test_rotate_refuses_a_bad_grace_period_next_to_the_field(org, keys, client_for, grace, message):
    response = client_for("admin").post(url("rotate", key_id=keys["service"].pk), {"grace_hours": grace})
    assert response.status_code == 400
    assert message in field_error(response, "id_grace_hours")
    assert not CallerKey.objects.filter(rotated_from=keys["service"]).exists()


def test_a_key_is_rotated_once(org, keys, client_for):
    rotate_key(actor=SYSTEM, key=keys["service"])
    client = client_for("admin")
    assert "already rotated" in text(client.get(url("rotate", key_id=keys["service"].pk)))
    response = client.post(url("rotate", key_id=keys["service"].pk), {"grace_hours": "1"})
    assert response.status_code == 400
    assert "already rotated" in form_error(response)
    assert CallerKey.objects.filter(rotated_from=keys["service"]).count() == 1


def test_revoke_asks_for_confirmation_then_revokes(org, keys, client_for):
    client = client_for("developer")
    path = url("revoke", key_id=keys["own"].pk)
    response = client.get(path)
    assert response.status_code == 200
    assert "Revoke the key" in text(response)
    assert CallerKey.objects.get(pk=keys["own"].pk).revoked_at is None
    response = client.post(path)
    assert response.status_code == 302
    assert response.url == url("detail", key_id=keys["own"].pk)
    assert CallerKey.objects.get(pk=keys["own"].pk).status == "revoked"
    assert last_event(org, "key.revoked").actor_label == "developer@acme.test"
    # The truth (issue 11, observation 5): it takes effect when published, not at the click.
    shown = text(client.get(response.url))
    assert "as soon as the change is published" in shown and "immediately" not in shown
    assert "already revoked" in text(client.post(path, follow=True))


# Bulk revoke -----------------------------------------------------------------------------------


def test_bulk_revoke_counts_then_revokes_a_teams_keys(org, team, keys, client_for):
    client = client_for("admin")
    response = client.get(url("bulk_revoke") + f"?team={team.pk}")
    assert response.status_code == 200
    assert "Revoke 2 keys?" in text(response)
    assert CallerKey.objects.filter(revoked_at=None).count() == 3
    response = client.post(url("bulk_revoke"), {"team": str(team.pk)})
    assert response.status_code == 302
    assert set(CallerKey.objects.filter(revoked_at=None).values_list("name", flat=True)) == {"Data notebook"}
    event = last_event(org, "key.bulk_revoked")
    assert (event.target_id, event.diff["revoked"]["after"]) == (str(team.pk), 2)
    shown = text(client.get(response.url))
    assert "2 keys revoked" in shown and "as soon as the change is published" in shown


def test_bulk_revoke_a_persons_keys(org, keys, users, client_for):
    client = client_for("admin")
    response = client.get(url("bulk_revoke") + f"?user={users['finance'].uuid}")
    assert "Revoke 1 key?" in text(response)
    assert client.post(url("bulk_revoke"), {"user": str(users["finance"].uuid)}).status_code == 302
    assert CallerKey.objects.get(pk=keys["data"].pk).status == "revoked"
    assert CallerKey.objects.filter(revoked_at=None).count() == 2


def test_bulk_revoke_asks_first_without_counting(org, keys, client_for):
    response = client_for("admin").get(url("bulk_revoke") + "?page=2")
    assert response.status_code == 200
    assert "Whose keys?" in text(response)
    assert "errorlist" not in text(response) and "Revoke 3" not in text(response)


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({}, None, "Choose a team, a person, or both."),
        ({"team": str(uuid.uuid4())}, "id_team", "Choose one of the teams offered."),
        ({"user": "junk"}, "id_user", "Choose one of the people offered."),
    ],
)
def test_bulk_revoke_errors(org, keys, client_for, data, field, message):
    response = client_for("admin").post(url("bulk_revoke"), data)
    assert response.status_code == 400
    assert message in (field_error(response, field) if field else form_error(response))
    assert CallerKey.objects.filter(revoked_at=None).count() == 3


def test_team_admin_bulk_revokes_only_their_team(org, team, data_team, keys, viewer_team_admin, client_for):
    client = client_for("viewer")
    response = client.post(url("bulk_revoke"), {"team": str(data_team.pk)})
    assert response.status_code == 400
    assert "Choose one of the teams offered." in field_error(response, "id_team")
    response = client.post(url("bulk_revoke"), {})
    assert response.status_code == 400
    assert "Choose one of your teams." in field_error(response, "id_team")
    assert client.post(url("bulk_revoke"), {"team": str(team.pk)}).status_code == 302
    assert set(CallerKey.objects.filter(revoked_at=None).values_list("name", flat=True)) == {"Data notebook"}


# Provider credentials ----------------------------------------------------------------------------


def test_register_a_credential_through_the_page(org, team, fresh_key_ring, client_for):
    response = client_for("admin").post(url("credential_create"), credential_form(teams=[str(team.pk)]))
    assert response.status_code == 302
    credential = ProviderCredential.objects.get(org=org, name="OpenAI production")
    assert response.url == url("credential_detail", credential_id=credential.pk)
    assert open_secret(credential) == CANARY
    assert list(credential.teams.all()) == [team]
    event = last_event(org, "credential.created")
    assert (event.actor_label, event.target_id) == ("admin@acme.test", str(credential.pk))
    assert CANARY not in str(event.diff)


def test_register_an_openai_compatible_and_an_azure_credential(org, fresh_key_ring, client_for):
    client = client_for("admin")
    response = client.post(
        url("credential_create"),
        credential_form(name="Local vLLM", provider="openai_compatible", base_url="http://127.0.0.1:8000/v1"),
    )
    assert response.status_code == 302
    response = client.post(
        url("credential_create"),
        credential_form(
            name="Azure",
            provider="azure_openai",
            azure_endpoint="http://localhost:9001",
            azure_api_version="2024-10-21",
        ),
    )
    assert response.status_code == 302
    azure = ProviderCredential.objects.get(org=org, name="Azure")
    assert (azure.azure_endpoint, azure.azure_api_version) == ("http://localhost:9001", "2024-10-21")
    assert ProviderCredential.objects.get(org=org, name="Local vLLM").base_url == "http://127.0.0.1:8000/v1"


SSRF_URLS = ["http://169.254.169.254/", "http://[::1]/", "http://0x7f000001/", "file:///etc/passwd", "http://10.0.0.8/"]


@pytest.mark.parametrize("address", SSRF_URLS)
def test_ssrf_base_urls_are_refused_next_to_the_field(org, fresh_key_ring, client_for, address):
    response = client_for("admin").post(
        url("credential_create"), credential_form(provider="openai_compatible", base_url=address)
    )
    assert response.status_code == 400
    assert field_error(response, "id_base_url").strip()
    assert CANARY not in text(response)
    assert not ProviderCredential.objects.exists()


@pytest.mark.parametrize("address", SSRF_URLS)
def test_ssrf_azure_endpoints_are_refused_next_to_the_field(org, fresh_key_ring, client_for, address):
    data = credential_form(provider="azure_openai", azure_endpoint=address, azure_api_version="2024-10-21")
    response = client_for("admin").post(url("credential_create"), data)
    assert response.status_code == 400
    assert field_error(response, "id_azure_endpoint").strip()
    assert not ProviderCredential.objects.exists()


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"name": ""}, "id_name", "required"),
        ({"name": "n" * 10_000}, "id_name", "at most 100 characters"),
        ({"provider": CANARY}, "id_provider", "Choose one of the options offered."),
        ({"provider": "openai_compatible"}, "id_base_url", "needs a base URL"),
        ({"provider": "azure_openai"}, "id_azure_endpoint", "needs its endpoint"),
        ({"base_url": "h" * 600}, "id_base_url", "at most 500 characters"),
        ({"api_key": ""}, "id_api_key", "required"),
        ({"api_key": "k" * 9000}, "id_api_key", "at most 8192 characters"),
        ({"teams": [str(uuid.uuid4())]}, "id_teams", "Choose one of the options offered."),
        ({"teams": ["junk"]}, "id_teams", "Choose one of the options offered."),
        ({"provider": "openai_compatible", "base_url": "http://[::1"}, "id_base_url", "Enter a valid URL."),
        ({"base_url": "http://example.com:99999/"}, "id_base_url", "Enter a valid URL."),
    ],
)
def test_credential_form_errors_sit_next_to_their_field(org, fresh_key_ring, client_for, overrides, field, message):
    response = client_for("admin").post(url("credential_create"), credential_form(**overrides))
    assert response.status_code == 400
    assert message in field_error(response, field)
    assert CANARY not in text(response)
    assert not ProviderCredential.objects.exists()


def test_a_duplicate_name_is_refused_and_the_secret_field_comes_back_empty(org, credential, client_for):
    response = client_for("admin").post(url("credential_create"), credential_form(name="claude PRODUCTION"))
    assert response.status_code == 400
    assert "already exists" in field_error(response, "id_name")
    secret_input = re.search(r"<input[^>]*name=\"api_key\"[^>]*>", text(response)).group(0)
    assert 'type="password"' in secret_input and 'autocomplete="off"' in secret_input
    assert "value=" not in secret_input
    assert CANARY not in text(response)


def test_another_orgs_team_cannot_be_named(org, other_org, fresh_key_ring, client_for):
    foreign = Team.objects.get(org=other_org)
    response = client_for("admin").post(url("credential_create"), credential_form(teams=[str(foreign.pk)]))
    assert response.status_code == 400
    assert "Choose one of the options offered." in field_error(response, "id_teams")


def test_credential_list_shows_names_to_everyone_and_details_to_readers(org, credential, client_for):
    viewer = text(client_for("viewer").get(url("credential_list")))
    assert "Claude production" in viewer
    assert "…" + CANARY[-4:] not in viewer and "Platform" not in viewer
    assert credential.secret_hints["api_key"]["fingerprint"] not in viewer
    assert url("credential_detail", credential_id=credential.pk) not in viewer
    auditor = text(client_for("auditor").get(url("credential_list")))
    assert "…" + CANARY[-4:] in auditor
    assert credential.secret_hints["api_key"]["fingerprint"] in auditor
    assert "Platform" in auditor and "Not tested" in auditor
    assert "Add a credential" not in auditor
    assert "Add a credential" in text(client_for("admin").get(url("credential_list")))


def test_credential_list_filters(org, credential, actors, client_for):
    other = create_credential(
        actor=SYSTEM, org=org, name="GPT main", provider="openai", secrets={"api_key": "sk-other-1234567890"}
    )
    client = client_for("auditor")

    def shown(query: str) -> set[str]:
        html = text(client.get(url("credential_list") + query))
        return {c.name for c in (credential, other) if url("credential_detail", credential_id=c.pk) in html}

    assert shown("") == {"Claude production", "GPT main"}
    assert shown("?provider=anthropic") == {"Claude production"}
    assert shown("?q=gpt") == {"GPT main"}
    assert shown("?provider=nope") == {"Claude production", "GPT main"}


def test_credential_detail_edits_settings_and_keeps_the_secret_when_left_empty(org, credential, team, client_for):
    client = client_for("admin")
    path = url("credential_detail", credential_id=credential.pk)
    page = text(client.get(path))
    assert "Leave empty to keep the current key." in page
    assert 'name="azure_endpoint"' not in page and 'name="provider"' not in page
    response = client.post(path, {"name": "Claude main", "base_url": "", "api_key": ""})
    assert response.status_code == 302
    credential.refresh_from_db()
    assert credential.name == "Claude main"
    assert list(credential.teams.all()) == []
    assert open_secret(credential) == CANARY
    event = last_event(org, "credential.updated")
    assert event.diff["name"] == {"before": "Claude production", "after": "Claude main"}


def test_credential_detail_replaces_the_secret(org, credential, client_for):
    replacement = "sk-replacement-0123456789abcd"
    response = client_for("admin").post(
        url("credential_detail", credential_id=credential.pk), {"name": "Claude production", "api_key": replacement}
    )
    assert response.status_code == 302
    credential.refresh_from_db()
    assert open_secret(credential) == replacement
    assert credential.secret_hints["api_key"]["last4"] == "abcd"
    event = last_event(org, "credential.secret_replaced")
    assert replacement not in str(event.diff) and CANARY not in str(event.diff)
    assert replacement not in text(client_for("admin").get(url("credential_detail", credential_id=credential.pk)))


@pytest.mark.parametrize("address", SSRF_URLS)
def test_credential_edit_refuses_ssrf_urls(org, credential, client_for, address):
    response = client_for("admin").post(
        url("credential_detail", credential_id=credential.pk), {"name": "Claude production", "base_url": address}
    )
    assert response.status_code == 400
    assert field_error(response, "id_base_url").strip()
    credential.refresh_from_db()
    assert credential.base_url == ""


def test_delete_credential_asks_for_confirmation(org, credential, client_for):
    client = client_for("admin")
    path = url("credential_delete", credential_id=credential.pk)
    assert "Delete the credential" in text(client.get(path))
    assert ProviderCredential.objects.filter(pk=credential.pk).exists()
    response = client.post(path)
    assert response.status_code == 302
    assert response.url == url("credential_list")
    assert not ProviderCredential.objects.filter(pk=credential.pk).exists()
    assert last_event(org, "credential.deleted").target_id == str(credential.pk)


def test_a_credential_in_use_is_not_deleted(org, routes, client_for):
    credential = ProviderCredential.objects.get(org=org, name="Simulator")
    response = client_for("admin").post(url("credential_delete", credential_id=credential.pk))
    assert response.status_code == 400
    assert "Deployments use this credential" in text(response)
    assert ProviderCredential.objects.filter(pk=credential.pk).exists()


def test_testing_a_credential_reports_success(org, actors, fresh_key_ring, provider_simulator, client_for):
    credential = create_credential(
        actor=actors["admin"],
        org=org,
        name="Simulated",
        provider="openai_compatible",
        base_url=f"{provider_simulator.url}/v1",
        secrets={"api_key": CANARY},
    )
    response = client_for("admin").post(url("credential_test", credential_id=credential.pk), follow=True)
    assert response.status_code == 200
    html = text(response)
    assert "Test passed." in html and "Passed" in html
    assert CANARY not in html
    assert last_event(org, "credential.tested").diff["ok"]["after"] is True


def test_testing_a_credential_reports_the_failure_classified(
    org, actors, fresh_key_ring, provider_simulator, client_for
):
    credential = create_credential(
        actor=actors["admin"],
        org=org,
        name="Simulated",
        provider="openai_compatible",
        base_url=f"{provider_simulator.url}/v1",
        secrets={"api_key": CANARY},
    )
    provider_simulator.configure(rejected_keys=[CANARY])
    html = text(client_for("admin").post(url("credential_test", credential_id=credential.pk), follow=True))
    assert "Test failed. Authentication failed (401): the provider refused the key." in html
    assert "Incorrect API key" not in html  # the provider's own words are not kept
    assert CANARY not in html
    credential.refresh_from_db()
    assert credential.last_test_ok is False


def add_credentials(org, teams, start: int, count: int) -> None:
    for number in range(start, start + count):
        create_credential(
            actor=SYSTEM,
            org=org,
            name=f"Credential {number}",
            provider="openai",
            secrets={"api_key": f"sk-load-{number:04d}-abcdefgh"},
            teams=teams if number % 2 else [],
        )


@pytest.mark.parametrize("role", ["auditor", "viewer"])
def test_credential_list_costs_the_same_queries_for_3_and_30_rows(
    org, team, data_team, fresh_key_ring, client_for, role
):
    client = client_for(role)
    add_credentials(org, [team, data_team], 0, 3)
    client.get(url("credential_list"))
    few = count_queries(client, url("credential_list"))
    add_credentials(org, [team, data_team], 3, 27)
    many = count_queries(client, url("credential_list"))
    assert few == many


# The canary: a provider secret never appears on a page after it was entered ------------------------


def test_a_provider_secret_never_appears_on_any_page(org, team, routes, client_for):
    client = client_for("owner")
    responses = [
        client.post(url("credential_create"), credential_form(provider="openai_compatible", base_url="file:///x")),
        client.post(url("credential_create"), credential_form(name="")),
        client.post(url("credential_create"), credential_form(teams=["junk"])),
        client.post(url("credential_create"), credential_form()),
    ]
    assert [response.status_code for response in responses] == [400, 400, 400, 302]
    credential = ProviderCredential.objects.get(org=org, name="OpenAI production")
    assert open_secret(credential) == CANARY
    responses.append(client.post(url("credential_create"), credential_form()))  # a duplicate name
    assert responses[-1].status_code == 400
    detail = url("credential_detail", credential_id=credential.pk)
    responses.append(client.post(detail, {"name": "", "api_key": CANARY}))  # an invalid edit
    assert responses[-1].status_code == 400
    responses.append(client.post(detail, {"name": "OpenAI production", "api_key": CANARY}, follow=True))
    for path in (
        url("credential_list"),
        detail,
        url("credential_create"),
        url("credential_delete", credential_id=credential.pk),
        reverse("audit:list", kwargs={"org_slug": "acme"}),
        reverse("orgs:dashboard", kwargs={"org_slug": "acme"}),
    ):
        responses.append(client.get(path))
    for response in responses:
        assert CANARY not in text(response), response.request["PATH_INFO"]
    for event in AuditEvent.objects.filter(org=org):
        assert CANARY not in str(event.diff)

"""Every org-scoped route, page and API, generated from the URL conf (DESIGN.md promise 8).

For each route and method in ROUTE_CAPABILITIES: outsiders, members of another org, another
org's tokens and another org's object ids get 404; every role lacking the capability gets 403;
every role holding it gets in; nobody skips MFA set-up; anonymous callers are sent to sign in.
A new route with an `org_slug` fails `test_every_org_route_is_in_the_table` until it is declared
here, so nothing ships unchecked. Methods a route does not serve (405) are not listed.
"""

from dataclasses import dataclass

import pytest
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone
from rest_framework.views import APIView

from audit.export import run_export, start_export
from audit.models import AuditEvent
from budgets.models import UsageRecord
from budgets.services import create_budget
from fleet.compile import compile_entity
from fleet.models import PendingConfigChange
from keys.models import CallerKey
from keys.services import issue_key, revoke_key
from orgs.models import Membership, Organization, Team, User
from orgs.roles import CAPABILITIES, Role
from orgs.services import (
    add_team_member,
    change_role,
    create_api_token,
    create_org,
    create_team,
    invite_member,
    remove_member,
    set_team_admin,
    set_team_limits,
    update_org_settings,
)
from sla.policies import create_policy
from tests.conftest import ROLES, SYSTEM, actor_for, make_user
from tests.factories import make_routes

# What each route needs, read from its view: the capability passed to get_org_access /
# get_team_access for that method.
ROUTE_CAPABILITIES: dict[str, dict[str, str]] = {
    # Pages (orgs/views.py, audit/views.py)
    "orgs:dashboard": {"GET": "org.read"},
    "orgs:team_list": {"GET": "teams.read", "POST": "teams.manage"},
    "orgs:team_detail": {"GET": "teams.read"},
    "orgs:team_update": {"POST": "teams.manage"},
    "orgs:team_limits": {"POST": "teams.manage"},
    "orgs:team_delete": {"GET": "teams.manage", "POST": "teams.manage"},
    "orgs:team_member_add": {"POST": "teams.manage"},
    "orgs:team_member_remove": {"GET": "teams.manage", "POST": "teams.manage"},
    "orgs:team_member_admin": {"POST": "teams.manage"},
    "orgs:member_list": {"GET": "members.read"},
    "orgs:member_role": {"POST": "members.manage"},
    "orgs:member_remove": {"GET": "members.manage", "POST": "members.manage"},
    "orgs:invitation_list": {"GET": "invitations.read", "POST": "invitations.manage"},
    "orgs:invitation_revoke": {"POST": "invitations.manage"},
    "orgs:token_list": {"GET": "tokens.read", "POST": "tokens.manage"},
    "orgs:token_revoke": {"GET": "tokens.manage", "POST": "tokens.manage"},
    "orgs:settings": {"GET": "org.manage", "POST": "org.manage"},
    "audit:list": {"GET": "audit.read"},
    "audit:event_detail": {"GET": "audit.read"},
    "audit:export_list": {"GET": "audit.export", "POST": "audit.export"},
    "audit:export_download": {"GET": "audit.export"},
    "audit:integrity": {"GET": "audit.read"},
    "audit:verify": {"POST": "audit.read"},
    # keys/views.py: as for the key API below, the matrix key is a team key with no owner.
    "keys:list": {"GET": "org.read"},
    "keys:create": {"GET": "keys.own", "POST": "keys.own"},
    "keys:bulk_revoke": {"GET": "keys.manage", "POST": "keys.manage"},
    "keys:detail": {"GET": "keys.read", "POST": "keys.manage"},
    "keys:rotate": {"GET": "keys.manage", "POST": "keys.manage"},
    "keys:revoke": {"GET": "keys.manage", "POST": "keys.manage"},
    "keys:credential_list": {"GET": "org.read"},
    "keys:credential_create": {"GET": "credentials.manage", "POST": "credentials.manage"},
    "keys:credential_detail": {"GET": "credentials.read", "POST": "credentials.manage"},
    "keys:credential_delete": {"GET": "credentials.manage", "POST": "credentials.manage"},
    "keys:credential_test": {"POST": "credentials.manage"},
    # sla/views.py
    "sla:deployment_list": {"GET": "routes.read", "POST": "routes.manage"},
    "sla:deployment_detail": {"GET": "routes.read", "POST": "routes.manage"},
    "sla:deployment_delete": {"GET": "routes.manage", "POST": "routes.manage"},
    "sla:route_list": {"GET": "routes.read", "POST": "routes.manage"},
    "sla:route_detail": {"GET": "routes.read", "POST": "routes.manage"},
    "sla:route_delete": {"GET": "routes.manage", "POST": "routes.manage"},
    "sla:route_explain": {"GET": "routes.read"},
    "sla:policy_list": {"GET": "sla.read", "POST": "sla.manage"},
    "sla:policy_detail": {"GET": "sla.read", "POST": "sla.manage"},
    "sla:policy_delete": {"GET": "sla.manage", "POST": "sla.manage"},
    # budgets/views.py: the org's usage is for spend.read; others choose among their own teams.
    "budgets:usage": {"GET": "org.read"},
    "budgets:budget_list": {"GET": "budgets.read", "POST": "budgets.manage"},
    "budgets:budget_detail": {"GET": "budgets.read", "POST": "budgets.manage"},
    "budgets:budget_delete": {"GET": "budgets.manage", "POST": "budgets.manage"},
    "budgets:budget_reconcile": {"POST": "budgets.manage"},
    "budgets:price_list": {"GET": "budgets.read", "POST": "prices.manage"},
    "budgets:finance": {"GET": "spend.read"},
    "budgets:chargeback": {"GET": "spend.read"},
    "budgets:cost_center": {"POST": "budgets.manage"},
    # sla/report_views.py
    "slo:reports": {"GET": "sla.read"},
    "slo:leaderboard": {"GET": "sla.read"},
    # playground/views.py: whoever may issue keys for themselves (team admins too, in their teams).
    "playground:page": {"GET": "keys.own"},
    "playground:mint_key": {"POST": "keys.own"},
    # API (orgs/api.py, audit/api.py)
    "api:orgs:team-list": {"GET": "teams.read", "POST": "teams.manage"},
    "api:orgs:team-detail": {"GET": "teams.read", "PATCH": "teams.manage", "DELETE": "teams.manage"},
    "api:orgs:team-limits": {"PUT": "teams.manage"},
    "api:orgs:team-member-list": {"GET": "teams.read", "POST": "teams.manage"},
    "api:orgs:team-member-detail": {"PATCH": "teams.manage", "DELETE": "teams.manage"},
    "api:orgs:member-list": {"GET": "members.read"},
    "api:orgs:member-detail": {"GET": "members.read", "PATCH": "members.manage", "DELETE": "members.manage"},
    "api:orgs:invitation-list": {"GET": "invitations.read", "POST": "invitations.manage"},
    "api:orgs:invitation-revoke": {"POST": "invitations.manage"},
    "api:orgs:api-token-list": {"GET": "tokens.read", "POST": "tokens.manage"},
    "api:orgs:api-token-revoke": {"POST": "tokens.manage"},
    "api:audit:event-list": {"GET": "audit.read"},
    "api:audit:export": {"GET": "audit.export"},
    "api:audit:export-job": {"GET": "audit.export"},
    "api:audit:export-job-download": {"GET": "audit.export"},
    "api:audit:verify": {"POST": "audit.read"},
    "api:audit:checkpoints": {"GET": "audit.export"},
    # keys/api.py. Key routes also let a key's owner and its team's admins in; the matrix key is
    # a team key with no owner, so there the org capability alone decides.
    "api:keys:key-list": {"GET": "org.read", "POST": "keys.own"},
    "api:keys:key-bulk-revoke": {"POST": "keys.manage"},
    "api:keys:key-detail": {"GET": "keys.read", "PATCH": "keys.manage"},
    "api:keys:key-rotate": {"POST": "keys.manage"},
    "api:keys:key-revoke": {"POST": "keys.manage"},
    "api:keys:credential-list": {"GET": "org.read", "POST": "credentials.manage"},
    "api:keys:credential-detail": {
        "GET": "credentials.read",
        "PATCH": "credentials.manage",
        "DELETE": "credentials.manage",
    },
    "api:keys:credential-test": {"POST": "credentials.manage"},
    # sla/api.py
    "api:sla:deployment-list": {"GET": "routes.read", "POST": "routes.manage"},
    "api:sla:deployment-detail": {"GET": "routes.read", "PATCH": "routes.manage", "DELETE": "routes.manage"},
    "api:sla:route-list": {"GET": "routes.read", "POST": "routes.manage"},
    "api:sla:route-detail": {"GET": "routes.read", "PATCH": "routes.manage", "DELETE": "routes.manage"},
    "api:sla:route-explain": {"GET": "routes.read"},
    "api:sla:policy-list": {"GET": "sla.read", "POST": "sla.manage"},
    "api:sla:policy-detail": {"GET": "sla.read", "PATCH": "sla.manage", "DELETE": "sla.manage"},
    # budgets/api.py
    "api:budgets:budget-list": {"GET": "budgets.read", "POST": "budgets.manage"},
    "api:budgets:budget-detail": {"GET": "budgets.read", "PATCH": "budgets.manage", "DELETE": "budgets.manage"},
    "api:budgets:price-list": {"GET": "budgets.read", "POST": "prices.manage"},
    "api:budgets:spend": {"GET": "spend.read"},
    "api:budgets:team-cost-center": {"PUT": "budgets.manage"},
    "api:budgets:budget-fail-open": {"PUT": "org.manage"},
    "api:orgs:rate-limit-fail-open": {"PUT": "org.manage"},
    # sla/report_api.py
    "api:slo:reports": {"GET": "sla.read"},
    # requestlog/views.py and api.py: every role that reads keys reads the org's requests and
    # developers their own (queries.viewer_for), so only viewers, who may do neither, get 403:
    # members.read is held by exactly those roles. The matrix request is made with a key of the
    # developer, so every role that gets in sees it.
    "requestlog:list": {"GET": "members.read"},
    "requestlog:export": {"GET": "members.read"},
    "requestlog:detail": {"GET": "members.read"},
    "api:requestlog:request-list": {"GET": "members.read"},
    "api:requestlog:request-export": {"GET": "members.read"},
    "api:requestlog:request-detail": {"GET": "members.read"},
    # Captured content (a POST, audited): the requests one may see, for roles holding content.read.
    "requestlog:content": {"POST": "content.read"},
    "api:requestlog:request-content": {"POST": "content.read"},
    # capture/views.py
    "capture:settings": {"GET": "org.manage", "POST": "org.manage"},
    "capture:team": {"POST": "org.manage"},
}

# How each URL kwarg other than org_slug is filled from the org's objects (see `_objects_of`).
OBJECT_KWARGS = {
    "team_id": lambda objects: objects.team.pk,
    "user_id": lambda objects: objects.team_member.uuid,
    "membership_id": lambda objects: objects.membership.pk,
    "invitation_id": lambda objects: objects.invitation.pk,
    "token_id": lambda objects: objects.token.pk,
    "key_id": lambda objects: objects.key.pk,
    "credential_id": lambda objects: objects.credential.pk,
    "deployment_id": lambda objects: objects.deployment.pk,
    "route_id": lambda objects: objects.route.pk,
    "budget_id": lambda objects: objects.budget.pk,
    "policy_id": lambda objects: objects.policy.pk,
    "export_id": lambda objects: objects.export.pk,
    "event_uuid": lambda objects: objects.audit_event.uuid,
    "request_id": lambda objects: objects.usage_record.pk,
}


@dataclass(frozen=True)
class Route:
    name: str
    kwargs: tuple[str, ...]
    view: object

    @property
    def is_api(self) -> bool:
        return self.name.startswith("api:")


def _walk(patterns, namespaces=(), kwargs=()):
    for pattern in patterns:
        names = kwargs + tuple(getattr(pattern.pattern, "converters", {}))
        names += tuple(getattr(getattr(pattern.pattern, "regex", None), "groupindex", {}))
        if isinstance(pattern, URLResolver):
            yield from _walk(
                pattern.url_patterns, namespaces + ((pattern.namespace,) if pattern.namespace else ()), names
            )
        elif isinstance(pattern, URLPattern) and "org_slug" in names:
            yield Route(
                ":".join((*namespaces, pattern.name or "<unnamed>")), tuple(dict.fromkeys(names)), pattern.callback
            )


ORG_ROUTES = {route.name: route for route in _walk(get_resolver().url_patterns)}
CASES = [(name, method) for name, methods in ROUTE_CAPABILITIES.items() for method in methods]


def _case_id(name: str, method: str, *rest: str) -> str:
    return "-".join((name, method, *rest))


# The org's objects and the principals -----------------------------------------------------
#
# Built once for the module inside a transaction that is rolled back at its end; every test
# runs in a savepoint of it (pytest-django's `db`), so what one test changes the next never sees.


@dataclass(frozen=True)
class OrgObjects:
    org: Organization
    team: Team
    team_member: User
    membership: Membership
    invitation: object
    token: object
    key: object
    credential: object
    deployment: object
    route: object
    budget: object = None
    policy: object = None
    audit_event: object = None
    export: object = None
    usage_record: object = None


@dataclass(frozen=True)
class Matrix:
    objects: dict[str, OrgObjects]  # "acme" (under test) and "other"
    clients: dict[str, Client]  # each acme role, "outsider" (no org), "stranger" (owner of other)
    # Authorization headers: each acme role, "other owner", and admin tokens whose creators
    # changed since (see `_people_who_changed`).
    tokens: dict[str, dict]
    leavers_keys: dict[str, CallerKey]  # "own" and "service", of a team admin removed from acme


def _objects_of(org: Organization, team: Team, team_member: User, membership: Membership) -> OrgObjects:
    invitation, _token = invite_member(actor=SYSTEM, org=org, email=f"invitee@{org.slug}.test", role=Role.VIEWER)
    token, _plaintext = create_api_token(actor=SYSTEM, org=org, name="matrix", role=Role.VIEWER)
    route = make_routes(org, SYSTEM, aliases=("gpt-4o",))["gpt-4o"]
    deployment = route.deployments.get()
    # The key lives in a team of its own, with no owner: a team with active keys cannot be
    # deleted, and an owner or team admin would get in whatever their role.
    key_team = create_team(actor=SYSTEM, org=org, name="Key holders")
    key, _plaintext = issue_key(actor=SYSTEM, team=key_team, name="matrix team key")
    budget = create_budget(
        actor=SYSTEM, org=org, name="matrix budget", scope="team", team=team, amount="100", period="monthly"
    )
    policy = create_policy(actor=SYSTEM, org=org, name="matrix policy")
    # A finished export job, so that its download answers 200 to those who may have it.
    export = start_export(actor=SYSTEM, org=org, export_format="csv", filters={})
    run_export(export.pk)
    # A request made with the team member's own key (revoked, so the team can still be deleted):
    # the developer reads it in the request log like every role that reads keys.
    own_key, _plaintext = issue_key(actor=SYSTEM, team=team, name="matrix own key", user=team_member)
    revoke_key(actor=SYSTEM, key=own_key)
    usage_record = UsageRecord.objects.create(
        request_id=f"matrix-{org.slug}",
        org=org,
        team_id=team.pk,
        key_id=own_key.pk,
        alias="gpt-4o",
        deployment_id=deployment.pk,
        endpoint="chat.completions",
        input_tokens=1,
        output_tokens=1,
        cost=0,
        latency_ms=1.0,
        ttft_ms=1.0,
        status=200,
        occurred_at=timezone.now(),
    )
    return OrgObjects(
        org,
        team,
        team_member,
        membership,
        invitation,
        token,
        key,
        deployment.credential,
        deployment,
        route,
        budget,
        policy,
        audit_event=AuditEvent.objects.filter(org=org).order_by("-sequence").first(),
        export=export,
        usage_record=usage_record,
    )


def _bearer(org: Organization, role: str) -> dict:
    _token, plaintext = create_api_token(actor=SYSTEM, org=org, name=f"matrix {role}", role=role)
    return {"HTTP_AUTHORIZATION": f"Bearer {plaintext}"}


def _admin_token_of(org: Organization, email: str) -> tuple[Membership, dict]:
    """A new admin of `org` and the admin-role token they created (its Authorization header)."""
    user = make_user(email)
    admin = org.memberships.create(user=user, role=Role.ADMIN)
    _token, plaintext = create_api_token(actor=actor_for(user, admin.role), org=org, name=email, role=admin.role)
    return admin, {"HTTP_AUTHORIZATION": f"Bearer {plaintext}"}


def _people_who_changed(org: Organization, key_team: Team) -> tuple[dict[str, dict], dict[str, CallerKey]]:
    """Rights follow people (issue 12): an admin demoted to viewer, an admin removed from the org,
    an admin whose membership vanished without the removal service (as removals left tokens
    before they revoked them), each with the admin token they created; and a team admin of
    `key_team` removed from the org, with a key they held and a service key they issued."""
    tokens = {}
    demoted, tokens["demoted admin"] = _admin_token_of(org, "demoted@acme.test")
    change_role(actor=SYSTEM, membership=demoted, role=Role.VIEWER)
    departed, tokens["departed admin"] = _admin_token_of(org, "departed@acme.test")
    remove_member(actor=SYSTEM, membership=departed)
    vanished, tokens["vanished admin"] = _admin_token_of(org, "vanished@acme.test")
    vanished.delete()
    leaver = make_user("leaver@acme.test")
    membership = org.memberships.create(user=leaver, role=Role.DEVELOPER)
    add_team_member(actor=SYSTEM, team=key_team, user=leaver)
    set_team_admin(actor=SYSTEM, team=key_team, user=leaver, team_admin=True)
    issuer = actor_for(leaver, membership.role)
    keys = {
        "own": issue_key(actor=issuer, team=key_team, name="leaver's own", user=leaver)[0],
        "service": issue_key(actor=issuer, team=key_team, name="leaver's service key")[0],
    }
    remove_member(actor=SYSTEM, membership=membership)
    return tokens, keys


def _signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _build_matrix() -> Matrix:
    """acme with a user per role, "other" with its owner, and one of each object a URL can name
    in both: a team with a member, a membership (the viewer's: anyone allowed to manage members
    may act on it), an invitation, an API token, a team key, a credential, a deployment, a route."""
    people = {role: make_user(f"{role}@acme.test") for role in ROLES}
    acme = create_org(actor=SYSTEM, name="Acme", slug="acme", owner=people[Role.OWNER], require_mfa=False)
    for role in ROLES:
        if role != Role.OWNER:
            acme.memberships.create(user=people[role], role=role)
    team = create_team(actor=SYSTEM, org=acme, name="Platform")
    for role in (Role.DEVELOPER, Role.VIEWER):
        add_team_member(actor=SYSTEM, team=team, user=people[role])
    stranger = make_user("owner@other.test")
    other = create_org(actor=SYSTEM, name="Other", slug="other", owner=stranger, require_mfa=False)
    other_team = create_team(actor=SYSTEM, org=other, name="Other team")
    add_team_member(actor=SYSTEM, team=other_team, user=stranger)
    objects = {
        "acme": _objects_of(acme, team, people[Role.DEVELOPER], acme.memberships.get(user=people[Role.VIEWER])),
        "other": _objects_of(other, other_team, stranger, other.memberships.get()),
    }
    people["outsider"] = make_user("outsider@elsewhere.test")
    people["stranger"] = stranger
    tokens = {role: _bearer(acme, role) for role in ROLES}
    tokens["other owner"] = _bearer(other, Role.OWNER)
    changed_tokens, leavers_keys = _people_who_changed(acme, Team.objects.get(org=acme, name="Key holders"))
    tokens.update(changed_tokens)
    return Matrix(objects, {who: _signed_in(user) for who, user in people.items()}, tokens, leavers_keys)


@pytest.fixture(scope="module")
def matrix(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        outer = transaction.atomic()
        outer.__enter__()
        try:
            yield _build_matrix()
        finally:
            transaction.set_rollback(True)
            outer.__exit__(None, None, None)


def url_for(name: str, objects: OrgObjects, *, slug: str | None = None, **swapped) -> str:
    route = ORG_ROUTES[name]
    kwargs = {"org_slug": slug or objects.org.slug}
    for kwarg in route.kwargs:
        if kwarg != "org_slug":
            kwargs[kwarg] = swapped.get(kwarg, OBJECT_KWARGS[kwarg](objects))
    return reverse(name, kwargs=kwargs)


def send(client: Client, name: str, method: str, url: str, **headers):
    """The request a browser form or an API client would send, with an empty body."""
    if ORG_ROUTES[name].is_api:
        if method == "GET":
            return client.get(url, **headers)
        return client.generic(method, url, "{}", content_type="application/json", **headers)
    if method == "GET":
        return client.get(url, **headers)
    return client.post(url, {}, **headers)


def lacking(capability: str) -> list[str]:
    return [role for role in ROLES if capability not in CAPABILITIES[role]]


def holding(capability: str) -> list[str]:
    return [role for role in ROLES if capability in CAPABILITIES[role]]


# The table covers the URL conf --------------------------------------------------------------


def test_every_org_route_is_in_the_table():
    undeclared = sorted(set(ORG_ROUTES) - set(ROUTE_CAPABILITIES))
    assert not undeclared, f"declare the capability of these org routes in ROUTE_CAPABILITIES: {undeclared}"
    stale = sorted(set(ROUTE_CAPABILITIES) - set(ORG_ROUTES))
    assert not stale, f"these ROUTE_CAPABILITIES entries match no URL pattern any more: {stale}"


def test_every_capability_in_the_table_exists():
    known = set().union(*CAPABILITIES.values())
    assert {cap for methods in ROUTE_CAPABILITIES.values() for cap in methods.values()} <= known


def test_every_url_kwarg_can_be_filled():
    kwargs = {kwarg for route in ORG_ROUTES.values() for kwarg in route.kwargs} - {"org_slug"}
    missing = kwargs - set(OBJECT_KWARGS)
    assert not missing, f"teach OBJECT_KWARGS and _objects_of these kwargs: {missing}"


@pytest.mark.parametrize("name", sorted(name for name in ROUTE_CAPABILITIES if name.startswith("api:")))
def test_the_api_table_lists_exactly_the_methods_each_view_serves(name):
    view_class = ORG_ROUTES[name].view.view_class
    assert issubclass(view_class, APIView)
    served = {method.upper() for method in view_class.http_method_names if method not in {"options", "head"}}
    served = {method for method in served if hasattr(view_class, method.lower())}
    assert served == set(ROUTE_CAPABILITIES[name]), f"{name}: the view serves {sorted(served)}"


# Requests that are refused change nothing, so one test per route and method asks them all
# and compares {who: status} with what each should get.


@pytest.mark.parametrize(("name", "method"), CASES, ids=[_case_id(*case) for case in CASES])
def test_nobody_outside_the_org_learns_anything(db, matrix, name, method):
    """404 for an outsider, the owner of another org, another org's token, an unknown slug, and
    acme's owner holding one id of another org's object."""
    acme, other = matrix.objects["acme"], matrix.objects["other"]
    url = url_for(name, acme)
    owner = matrix.clients[Role.OWNER]
    answers = {
        "outsider": send(matrix.clients["outsider"], name, method, url),
        "owner of another org": send(matrix.clients["stranger"], name, method, url),
        "unknown slug": send(owner, name, method, url_for(name, acme, slug="no-such-org")),
    }
    if ORG_ROUTES[name].is_api:
        answers["owner token of another org"] = send(Client(), name, method, url, **matrix.tokens["other owner"])
    for kwarg in ORG_ROUTES[name].kwargs:
        if kwarg != "org_slug":
            foreign_url = url_for(name, acme, **{kwarg: OBJECT_KWARGS[kwarg](other)})
            answers[f"another org's {kwarg}"] = send(owner, name, method, foreign_url)
    statuses = {who: response.status_code for who, response in answers.items()}
    assert statuses == dict.fromkeys(answers, 404)


# Routes every role may use (org.read, teams.read) have nobody to refuse.
RESTRICTED_CASES = [case for case in CASES if lacking(ROUTE_CAPABILITIES[case[0]][case[1]])]


@pytest.mark.parametrize(("name", "method"), RESTRICTED_CASES, ids=[_case_id(*case) for case in RESTRICTED_CASES])
def test_every_role_lacking_the_capability_gets_403(db, matrix, name, method):
    roles = lacking(ROUTE_CAPABILITIES[name][method])
    url = url_for(name, matrix.objects["acme"])
    statuses = {role: send(matrix.clients[role], name, method, url).status_code for role in roles}
    if ORG_ROUTES[name].is_api:
        for role in roles:
            statuses[f"{role} token"] = send(Client(), name, method, url, **matrix.tokens[role]).status_code
    assert statuses == dict.fromkeys(statuses, 403)


@pytest.mark.parametrize(("name", "method"), CASES, ids=[_case_id(*case) for case in CASES])
def test_nobody_skips_sign_in_or_mfa_set_up(db, matrix, name, method):
    """Anonymous callers are sent to sign in (pages) or answered 401 (API); an owner of an org
    that requires MFA is sent to set it up (pages) or refused (API) until they have."""
    acme = matrix.objects["acme"]
    url = url_for(name, acme)
    anonymous = send(Client(), name, method, url)
    update_org_settings(actor=SYSTEM, org=acme.org, name=acme.org.name, require_mfa=True)
    needs_mfa = send(matrix.clients[Role.OWNER], name, method, url)
    if ORG_ROUTES[name].is_api:
        assert (anonymous.status_code, anonymous["WWW-Authenticate"]) == (401, "Bearer")
        assert needs_mfa.status_code == 403
        assert needs_mfa.json() == {"detail": "Set up two-factor authentication before using the API."}
    else:
        assert anonymous.status_code == 302
        assert anonymous["Location"].startswith("/accounts/login/?next=")
        assert needs_mfa.status_code == 302
        assert needs_mfa["Location"].startswith("/accounts/2fa/totp/activate/")


# The table is not too strict: every role holding the capability gets in -----------------

# An empty form or body may be refused (400), clash with what exists (409) or be acted on
# (200/201/204/302); never denied.
LET_IN = {200, 201, 204, 302, 400, 409}
READ_CASES = [case for case in CASES if case[1] == "GET"]
WRITE_CASES = [
    (name, method, role)
    for name, method in CASES
    if method != "GET"
    for role in holding(ROUTE_CAPABILITIES[name][method])
]


@pytest.mark.parametrize(("name", "method"), READ_CASES, ids=[_case_id(*case) for case in READ_CASES])
def test_every_role_holding_the_capability_reads(db, matrix, name, method):
    url = url_for(name, matrix.objects["acme"])
    roles = holding(ROUTE_CAPABILITIES[name][method])
    statuses = {role: send(matrix.clients[role], name, method, url).status_code for role in roles}
    assert statuses == dict.fromkeys(roles, 200)


@pytest.mark.parametrize(("name", "method", "role"), WRITE_CASES, ids=[_case_id(*case) for case in WRITE_CASES])
def test_every_role_holding_the_capability_may_write(db, matrix, name, method, role):
    """One role per test: a write that succeeds changes what the next request would find."""
    response = send(matrix.clients[role], name, method, url_for(name, matrix.objects["acme"]))
    assert response.status_code in LET_IN, response.status_code


# Rights follow people (issue 12) -----------------------------------------------------------

API_CASES = [case for case in CASES if ORG_ROUTES[case[0]].is_api]


@pytest.mark.parametrize(("name", "method"), API_CASES, ids=[_case_id(*case) for case in API_CASES])
def test_a_demoted_creators_token_gets_in_only_where_their_new_role_does(db, matrix, name, method):
    """An admin token whose creator is now a viewer acts as a viewer: reads what a viewer reads,
    403 everywhere else."""
    response = send(Client(), name, method, url_for(name, matrix.objects["acme"]), **matrix.tokens["demoted admin"])
    expected = 200 if ROUTE_CAPABILITIES[name][method] in CAPABILITIES[Role.VIEWER] else 403
    assert response.status_code == expected


@pytest.mark.parametrize(("name", "method"), API_CASES, ids=[_case_id(*case) for case in API_CASES])
def test_a_token_whose_creator_left_is_refused_on_every_route(db, matrix, name, method):
    url = url_for(name, matrix.objects["acme"])
    statuses = {
        who: send(Client(), name, method, url, **matrix.tokens[who]).status_code
        for who in ("departed admin", "vanished admin")
    }
    assert statuses == {"departed admin": 401, "vanished admin": 401}


def test_a_removed_key_issuers_own_key_is_revoked_and_pushed_and_their_service_key_stays(db, matrix):
    own, service = matrix.leavers_keys["own"], matrix.leavers_keys["service"]
    assert CallerKey.objects.get(pk=own.pk).revoked_at is not None
    assert compile_entity("key", own.digest) is None
    assert PendingConfigChange.objects.filter(entity_type="key", entity_id=own.digest).count() == 2  # issued, revoked
    assert CallerKey.objects.get(pk=service.pk).revoked_at is None
    assert compile_entity("key", service.digest) is not None


def test_a_narrowed_teams_ceiling_binds_its_keys_on_every_key_route(db, matrix):
    """A team narrowed after its key was issued (issue 12): no role that may change keys can lift
    the key above the team's new ceiling, and the team change is what the gateways receive."""
    key = matrix.objects["acme"].key
    url = url_for("api:keys:key-detail", matrix.objects["acme"])
    with transaction.atomic():  # the module's matrix stays as it was for the other tests
        set_team_limits(actor=SYSTEM, team=key.team, allowed_models=["gpt-4o"], rpm_limit=5, tpm_limit=None)
        for role in holding("keys.manage"):
            client = matrix.clients[role]
            too_fast = client.patch(url, {"rpm_limit": 10}, content_type="application/json")
            assert too_fast.status_code == 400 and "rpm_limit" in too_fast.json(), role
            outside = client.patch(url, {"allowed_models": ["claude-sonnet"]}, content_type="application/json")
            assert outside.status_code == 400 and "allowed_models" in outside.json(), role
            token = matrix.tokens[role]
            assert Client().generic("PATCH", url, '{"rpm_limit": 10}', "application/json", **token).status_code == 400
        assert CallerKey.objects.get(pk=key.pk).rpm_limit in (None, 5)
        team_config = compile_entity("team", str(key.team_id))
        assert team_config["rpm_limit"] == 5 and team_config["allowed_models"] == ["gpt-4o"]
        assert PendingConfigChange.objects.filter(entity_type="team", entity_id=str(key.team_id)).exists()
        transaction.set_rollback(True)


# Found by the matrix ------------------------------------------------------------------------


def test_deleting_a_team_with_active_keys_on_the_page_explains_instead_of_crashing(db, matrix):
    key = matrix.objects["acme"].key
    client = Client(raise_request_exception=False)
    client.force_login(User.objects.get(email="admin@acme.test"))
    response = client.post(reverse("orgs:team_delete", kwargs={"org_slug": "acme", "team_id": key.team_id}))
    assert response.status_code == 400
    assert "Revoke them first" in response.content.decode()
    assert Team.objects.filter(pk=key.team_id).exists()

"""The one place that answers "may this principal do this in this org (or team)".

Outsiders, including another org's API tokens, get 404 so that org and object ids leak
nothing; members whose role lacks the capability get 403. Pages and the API both call these.
"""

from dataclasses import dataclass

from django.core.exceptions import PermissionDenied
from django.http import Http404

from audit.context import Actor

from .models import ApiToken, Membership, Organization, Team
from .roles import CAPABILITIES

TEAM_ADMIN_PERMISSION = "orgs.admin_team"
# What a team admin may do in their own team without the org-level capability.
TEAM_ADMIN_CAPABILITIES = frozenset({"teams.manage", "keys.manage"})


@dataclass(frozen=True)
class OrgAccess:
    org: Organization
    role: str
    actor: Actor

    def can(self, capability: str) -> bool:
        return capability in self.actor.capabilities

    def require(self, capability: str) -> None:
        if not self.can(capability):
            raise PermissionDenied(f"Your role ({self.role}) may not do this.")


def _principal_role(request, org: Organization) -> tuple[str, Actor] | None:
    token = getattr(request, "auth", None)
    if isinstance(token, ApiToken):
        if token.org_id != org.pk or not token.is_usable:
            return None
        actor = Actor(
            kind="token",
            id=str(token.pk),
            label=f"API token {token.name}",
            role=token.role,
            capabilities=CAPABILITIES[token.role],
        )
        return token.role, actor
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    membership = Membership.objects.filter(org=org, user=user).only("role").first()
    if membership is None:
        return None
    actor = Actor(
        kind="user",
        id=str(user.uuid),
        label=user.email,
        role=membership.role,
        user_id=user.pk,
        capabilities=CAPABILITIES[membership.role],
    )
    return membership.role, actor


def get_org_access(request, org_slug: str, capability: str = "org.read") -> OrgAccess:
    """The org named by `org_slug` if the request's principal may `capability` there."""
    org = Organization.objects.filter(slug=org_slug).first()
    if org is None:
        raise Http404("No such organization.")
    found = _principal_role(request, org)
    if found is None:
        raise Http404("No such organization.")
    role, actor = found
    access = OrgAccess(org=org, role=role, actor=actor)
    access.require(capability)
    return access


def is_team_admin(user, team: Team) -> bool:
    """Team admin is a django-guardian object permission on the team."""
    return bool(user and user.is_authenticated and user.has_perm(TEAM_ADMIN_PERMISSION, team))


def get_team_access(request, org_slug: str, team_id, capability: str = "teams.read") -> tuple[OrgAccess, Team]:
    """A team of the org. Org-level `capability` suffices; for "teams.manage" and
    "keys.manage" a team admin of this team qualifies too."""
    access = get_org_access(request, org_slug, "org.read")
    team = Team.objects.filter(org=access.org, pk=team_id).first()
    if team is None:
        raise Http404("No such team.")
    if access.can(capability):
        return access, team
    if capability in TEAM_ADMIN_CAPABILITIES and is_team_admin(request.user, team):
        return access, team
    raise PermissionDenied(f"Your role ({access.role}) may not do this.")


def orgs_for_user(user):
    """The orgs a signed-in user belongs to, for the org switcher."""
    if not user.is_authenticated:
        return Organization.objects.none()
    return Organization.objects.filter(memberships__user=user).order_by("name")

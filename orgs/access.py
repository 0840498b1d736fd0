"""The one place that answers "may this principal do this in this org (or team)".

Outsiders, including another org's API tokens, get 404 so that org and object ids leak
nothing; members whose role lacks the capability get 403. Pages and the API both call these.
"""

from dataclasses import dataclass

from django.core.exceptions import PermissionDenied
from django.db.models import OuterRef, Q, Subquery
from django.http import Http404
from guardian.models import UserObjectPermission
from guardian.shortcuts import get_objects_for_user

from audit.context import Actor

from .models import ApiToken, Membership, Organization, Team, User
from .roles import CAPABILITIES, lower_role

TEAM_ADMIN_CODENAME = "admin_team"
TEAM_ADMIN_PERMISSION = f"orgs.{TEAM_ADMIN_CODENAME}"
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


# Management API tokens -------------------------------------------------------------------
# A token made by a person acts for them: never with more than they hold now. Tokens made by
# the system (manage.py create_api_token) have no creator and act with their own role.


def acting_role(token_role: str, created_by_id: int | None, creator_role: str | None) -> str | None:
    """What a token acts as: its own role capped by its creator's current role in the org
    (`creator_role`); None, refused, once its creator is no longer a member."""
    if created_by_id is None:
        return token_role
    if creator_role is None:
        return None
    return lower_role(token_role, creator_role)


def with_creator_role(tokens):
    """Annotate an ApiToken queryset with `creator_role`: its creator's current role in the
    token's org, None when they are not a member (or there is no creator)."""
    creator = Membership.objects.filter(org_id=OuterRef("org_id"), user_id=OuterRef("created_by_id"))
    return tokens.annotate(creator_role=Subquery(creator.values("role")[:1]))


def token_role(token: ApiToken) -> str | None:
    """`acting_role` of a token, reading its creator's membership now."""
    creator_role = None
    if token.created_by_id is not None:
        creator_role = (
            Membership.objects.filter(org_id=token.org_id, user_id=token.created_by_id)
            .values_list("role", flat=True)
            .first()
        )
    return acting_role(token.role, token.created_by_id, creator_role)


def _principal_role(request, org: Organization) -> tuple[str, Actor] | None:
    token = getattr(request, "auth", None)
    if isinstance(token, ApiToken):
        if token.org_id != org.pk or not token.is_usable:
            return None
        role = token_role(token)
        if role is None:
            return None
        actor = Actor(
            kind="token",
            id=str(token.pk),
            label=f"API token {token.name}",
            role=role,
            capabilities=CAPABILITIES[role],
        )
        return role, actor
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
    # API tokens act through their org role only; team admin belongs to people. The grant is
    # read directly: guardian's has_perm says yes to superusers, and platform staff are not
    # team admins by being staff.
    if not isinstance(user, User) or not user.is_authenticated:
        return False
    return UserObjectPermission.objects.filter(
        user=user,
        permission__codename=TEAM_ADMIN_CODENAME,
        permission__content_type__app_label="orgs",
        content_type__model="team",
        object_pk=str(team.pk),
    ).exists()


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


# Caller keys -------------------------------------------------------------------------------
# Admins manage every key; team admins their team's keys; developers their own keys in
# teams they belong to.


def administered_teams(request, access: OrgAccess):
    """The org's teams this person is team admin of (none for API tokens, or for platform
    staff by being staff)."""
    if not isinstance(request.user, User):
        return Team.objects.none()
    teams = Team.objects.filter(org=access.org)
    return get_objects_for_user(request.user, TEAM_ADMIN_PERMISSION, teams, with_superuser=False)


def require_key_rights(request, access: OrgAccess, *, own_keys_suffice: bool) -> None:
    """Refuse at once whoever may not issue or manage any key, before a form or body names a
    team: finance, auditors and viewers read, and a role too low is a 403 whatever they send."""
    if access.can("keys.manage") or (own_keys_suffice and access.can("keys.own")):
        return
    if administered_teams(request, access).exists():
        return
    raise PermissionDenied(f"Your role ({access.role}) may not do this.")


def may_manage_key(request, access: OrgAccess, key) -> bool:
    """Its team's admins and admins manage a key; a developer manages the keys they hold."""
    return may_manage_team_keys(request, access, key.team) or (
        access.can("keys.own") and key.user_id is not None and key.user_id == access.actor.user_id
    )


def may_manage_team_keys(request, access: OrgAccess, team: Team) -> bool:
    return access.can("keys.manage") or is_team_admin(request.user, team)


def may_issue_key(request, access: OrgAccess, team: Team, for_user_id: int | None) -> bool:
    """Whether this principal may issue a key in `team` owned by `for_user_id` (None: no owner)."""
    if may_manage_team_keys(request, access, team):
        return True
    return (
        access.can("keys.own")
        and access.actor.user_id is not None
        and for_user_id == access.actor.user_id
        and team.members.filter(pk=access.actor.user_id).exists()
    )


def visible_keys(request, access: OrgAccess, keys):
    """Narrow a CallerKey queryset of the org to what this principal may see."""
    if access.can("keys.read"):
        return keys
    if not isinstance(request.user, User):
        return keys.none()
    admin_teams = administered_teams(request, access)
    return keys.filter(Q(user_id=access.actor.user_id) | Q(team__in=admin_teams))


def get_key_access(request, org_slug: str, key_id, capability: str = "read"):
    """(access, key) for a caller key of the org. `capability` is "read" or "manage"."""
    from keys.models import CallerKey

    access = get_org_access(request, org_slug, "org.read")
    key = CallerKey.objects.select_related("team", "user", "org").filter(org=access.org, pk=key_id).first()
    if key is None:
        raise Http404("No such key.")
    may_manage = may_manage_key(request, access, key)
    if capability == "manage" and not may_manage:
        raise PermissionDenied(f"Your role ({access.role}) may not change this key.")
    if capability == "read" and not (may_manage or access.can("keys.read")):
        raise PermissionDenied(f"Your role ({access.role}) may not see this key.")
    return access, key

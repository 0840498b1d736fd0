"""State changes of orgs, teams, memberships, invitations and API tokens.

Each function is one change plus its audit event in one transaction (DESIGN.md promise 4).
Rule violations raise ValidationError keyed by the offending field.
"""

import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.text import slugify
from guardian.shortcuts import assign_perm, remove_perm

from audit.context import Actor
from audit.services import changes, record_event
from fleet.changes import record_config_change

from .access import is_team_admin
from .models import ApiToken, Invitation, Membership, Organization, Team, TeamMembership, User
from .roles import CAPABILITIES, Role, can_grant, lower_role
from .tokens import digest, new_api_token, new_invitation_token

TEAM_ADMIN_CODENAME = "admin_team"


def _require_grantable(actor: Actor, role: str, field: str = "role") -> None:
    if role not in Role.values:
        raise ValidationError({field: [f"Unknown role {role!r}."]})
    if actor.kind != "system" and not CAPABILITIES[role] <= actor.capabilities:
        raise ValidationError({field: ["You cannot grant a role with more rights than your own."]})


def _unique_slug(value: str, field: str = "slug", *, derived: bool = False) -> str:
    """A URL-safe slug. One derived from a name with no ASCII letters or digits (say "数据")
    gets a random one instead of an error; a slug typed by a person must be valid."""
    slug = slugify(value)[:50].strip("-")
    if not slug:
        if derived and any(character.isalnum() for character in value):
            return f"team-{secrets.token_hex(4)}"
        raise ValidationError({field: ["Use at least one letter or digit."]})
    return slug


# Organizations ---------------------------------------------------------------------------


@transaction.atomic
def create_org(*, actor: Actor, name: str, slug: str, owner: User, require_mfa: bool = True) -> Organization:
    """Create an org with its first owner."""
    slug = _unique_slug(slug or name)
    if Organization.objects.filter(slug=slug).exists():
        raise ValidationError({"slug": ["An organization with this slug already exists."]})
    org = Organization.objects.create(name=name.strip(), slug=slug, require_mfa=require_mfa)
    Membership.objects.create(org=org, user=owner, role=Role.OWNER)
    event = record_event(
        actor=actor,
        org=org,
        action="org.created",
        target=org,
        diff={"name": {"after": org.name}, "slug": {"after": slug}, "owner": {"after": owner.email}},
    )
    record_config_change("org", org.pk, cause=event)
    return org


@transaction.atomic
def update_org_settings(
    *,
    actor: Actor,
    org: Organization,
    name: str,
    require_mfa: bool,
    budget_fail_open: bool | None = None,
    rate_limit_fail_open: bool | None = None,
) -> Organization:
    """Rename the org, change whether owners and admins must use MFA, and (when given) what the
    gateway does while Redis is unreachable. Each kind of change is its own audit event."""
    org = Organization.objects.select_for_update().get(pk=org.pk)
    before = {"name": org.name, "require_mfa": org.require_mfa}
    org.name, org.require_mfa = name.strip(), require_mfa
    diff = changes(before, {"name": org.name, "require_mfa": org.require_mfa})
    if diff:
        org.save(update_fields=["name", "require_mfa"])
        record_event(actor=actor, org=org, action="org.settings_changed", target=org, diff=diff)
    if budget_fail_open is not None:
        org = set_budget_fail_open(actor=actor, org=org, fail_open=budget_fail_open)
    if rate_limit_fail_open is not None:
        org = set_rate_limit_fail_open(actor=actor, org=org, fail_open=rate_limit_fail_open)
    return org


def set_budget_fail_open(*, actor: Actor, org: Organization, fail_open: bool) -> Organization:
    """Whether budget-bound requests are admitted (True) or refused while the gateway cannot
    reach Redis to check budgets."""
    return _set_outage_choice(actor=actor, org=org, field="budget_fail_open", fail_open=fail_open)


def set_rate_limit_fail_open(*, actor: Actor, org: Organization, fail_open: bool) -> Organization:
    """Whether requests of keys with an RPM/TPM limit are admitted (True, uncounted) or refused
    while the gateway cannot reach Redis to count them."""
    return _set_outage_choice(actor=actor, org=org, field="rate_limit_fail_open", fail_open=fail_open)


@transaction.atomic
def _set_outage_choice(*, actor: Actor, org: Organization, field: str, fail_open: bool) -> Organization:
    """One fail-open choice: an audit event `org.<field>_changed` and a config change, if it changed."""
    org = Organization.objects.select_for_update().get(pk=org.pk)
    if getattr(org, field) != fail_open:
        diff = changes({field: getattr(org, field)}, {field: fail_open})
        setattr(org, field, fail_open)
        org.save(update_fields=[field])
        event = record_event(actor=actor, org=org, action=f"org.{field}_changed", target=org, diff=diff)
        record_config_change("org", org.pk, cause=event)
    return org


# Teams -----------------------------------------------------------------------------------


@transaction.atomic
def create_team(*, actor: Actor, org: Organization, name: str, slug: str = "", description: str = "") -> Team:
    """Create a team in the org."""
    name = name.strip()
    slug_field = "slug" if slug else "name"  # a slug derived from the name is the name's problem
    slug = _unique_slug(slug or name, slug_field, derived=not slug)
    if Team.objects.filter(org=org, slug=slug).exists():
        raise ValidationError({slug_field: ["A team with this slug already exists."]})
    if Team.objects.filter(org=org, name__iexact=name).exists():
        raise ValidationError({"name": ["A team with this name already exists."]})
    try:
        with transaction.atomic():
            team = Team.objects.create(org=org, name=name, slug=slug, description=description.strip())
    except IntegrityError:
        # A concurrent create of the same team won the race.
        raise ValidationError({"name": ["A team with this name already exists."]}) from None
    event = record_event(
        actor=actor,
        org=org,
        action="team.created",
        target=team,
        diff=changes({}, {"name": team.name, "slug": team.slug, "description": team.description}),
    )
    record_config_change("team", team.pk, cause=event)
    return team


@transaction.atomic
def update_team(*, actor: Actor, team: Team, name: str, description: str) -> Team:
    """Rename a team or change its description."""
    team = Team.objects.select_for_update().get(pk=team.pk)
    name = name.strip()
    if Team.objects.filter(org_id=team.org_id, name__iexact=name).exclude(pk=team.pk).exists():
        raise ValidationError({"name": ["A team with this name already exists."]})
    before = {"name": team.name, "description": team.description}
    team.name, team.description = name, description.strip()
    diff = changes(before, {"name": team.name, "description": team.description})
    if diff:
        team.save(update_fields=["name", "description"])
        record_event(actor=actor, org=team.org, action="team.updated", target=team, diff=diff)
    return team


@transaction.atomic
def set_team_limits(
    *, actor: Actor, team: Team, allowed_models: list[str], rpm_limit: int | None, tpm_limit: int | None
) -> Team:
    """Set the ceiling for the team's caller keys: models (empty = all) and per-key limits."""
    from keys.services import MAX_LIMIT, unknown_aliases

    errors: dict[str, list[str]] = {}
    for field, value in (("rpm_limit", rpm_limit), ("tpm_limit", tpm_limit)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT):
            errors[field] = [f"Use a whole number from 1 to {MAX_LIMIT:,}, or leave it empty for no limit."]
    unknown = unknown_aliases(team.org_id, allowed_models)
    if unknown:
        errors["allowed_models"] = [f"No route has the alias: {', '.join(unknown)}."]
    if errors:
        raise ValidationError(errors)
    team = Team.objects.select_for_update().get(pk=team.pk)
    before = {"allowed_models": sorted(team.allowed_models), "rpm_limit": team.rpm_limit, "tpm_limit": team.tpm_limit}
    team.allowed_models, team.rpm_limit, team.tpm_limit = sorted(set(allowed_models)), rpm_limit, tpm_limit
    diff = changes(before, {"allowed_models": team.allowed_models, "rpm_limit": rpm_limit, "tpm_limit": tpm_limit})
    if diff:
        team.save(update_fields=["allowed_models", "rpm_limit", "tpm_limit"])
        event = record_event(actor=actor, org=team.org, action="team.limits_changed", target=team, diff=diff)
        record_config_change("team", team.pk, cause=event)
    return team


@transaction.atomic
def delete_team(*, actor: Actor, team: Team) -> None:
    """Delete a team; its members stay in the org. Refused while it has active keys."""
    active = team.caller_keys.active().count()
    if active:
        raise ValidationError({"team": [f"The team has {active} active key(s). Revoke them first."]})
    event = record_event(
        actor=actor, org=team.org, action="team.deleted", target=team, diff=changes({"name": team.name}, {})
    )
    record_config_change("team", team.pk, cause=event)
    team.delete()


@transaction.atomic
def add_team_member(*, actor: Actor, team: Team, user: User, team_admin: bool = False) -> TeamMembership:
    """Add an org member to a team, optionally as its team admin."""
    if not Membership.objects.filter(org_id=team.org_id, user=user).exists():
        raise ValidationError({"user": ["Only members of the organization can join its teams."]})
    try:
        with transaction.atomic():
            link = TeamMembership.objects.create(team=team, user=user)
    except IntegrityError:
        raise ValidationError({"user": ["This person is already in the team."]}) from None
    if team_admin:
        assign_perm(TEAM_ADMIN_CODENAME, user, team)
    record_event(
        actor=actor,
        org=team.org,
        action="team.member_added",
        target=team,
        diff={"member": {"after": user.email}, "team_admin": {"after": team_admin}},
    )
    return link


@transaction.atomic
def set_team_admin(*, actor: Actor, team: Team, user: User, team_admin: bool) -> None:
    """Grant or withdraw the team-admin object permission."""
    if not TeamMembership.objects.filter(team=team, user=user).exists():
        raise ValidationError({"user": ["Only members of the team can be its admins."]})
    was_admin = is_team_admin(user, team)
    if was_admin == team_admin:
        return
    if team_admin:
        assign_perm(TEAM_ADMIN_CODENAME, user, team)
    else:
        remove_perm(TEAM_ADMIN_CODENAME, user, team)
    record_event(
        actor=actor,
        org=team.org,
        action="team.admin_granted" if team_admin else "team.admin_revoked",
        target=team,
        diff={"member": {"after": user.email}, "team_admin": {"before": was_admin, "after": team_admin}},
    )


@transaction.atomic
def remove_team_member(*, actor: Actor, team: Team, user: User) -> None:
    """Take a person out of a team, with its team-admin permission and the keys they hold in it;
    the team's service keys, whoever issued them, stay with the team."""
    from keys.services import revoke_personal_keys

    deleted, _ = TeamMembership.objects.filter(team=team, user=user).delete()
    if not deleted:
        raise ValidationError({"user": ["This person is not in the team."]})
    remove_perm(TEAM_ADMIN_CODENAME, user, team)
    record_event(
        actor=actor, org=team.org, action="team.member_removed", target=team, diff={"member": {"before": user.email}}
    )
    revoke_personal_keys(actor=actor, org=team.org, user=user, team=team, reason=f"They left the team {team.name}.")


# Members and roles -----------------------------------------------------------------------


def _owner_count(org_id) -> int:
    return Membership.objects.filter(org_id=org_id, role=Role.OWNER).count()


@transaction.atomic
def change_role(*, actor: Actor, membership: Membership, role: str) -> Membership:
    """Change a member's role: never your own, never above yours, never the last owner away."""
    # The org row first, then the membership: every membership change in an org queues on
    # the same lock in the same order, so two owners demoting each other cannot deadlock.
    Organization.objects.select_for_update().filter(pk=membership.org_id).exists()
    membership = Membership.objects.select_for_update(of=("self",)).select_related("org", "user").get(pk=membership.pk)
    if actor.user_id is not None and membership.user_id == actor.user_id:
        raise ValidationError({"role": ["You cannot change your own role."]})
    _require_grantable(actor, role)
    if actor.kind != "system" and not can_grant(actor.role, membership.role):
        raise ValidationError({"role": ["You cannot change the role of someone with more rights than you."]})
    if membership.role == role:
        return membership
    if membership.role == Role.OWNER and _owner_count(membership.org_id) <= 1:
        raise ValidationError({"role": ["The organization must keep at least one owner."]})
    before = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    record_event(
        actor=actor,
        org=membership.org,
        action="member.role_changed",
        target=membership.user,
        target_type="member",
        target_id=str(membership.pk),
        diff={"role": {"before": before, "after": role}},
    )
    # Their tokens keep working, but never above the role they hold now (orgs/access.py).
    for token in _active_tokens_of(membership.org, membership.user):
        acted_as, acts_as = lower_role(token.role, before), lower_role(token.role, role)
        if acted_as != acts_as:
            record_event(
                actor=actor,
                org=membership.org,
                action="api_token.acting_role_changed",
                target=token,
                target_type="api_token",
                diff={
                    "acts_as": {"before": acted_as, "after": acts_as},
                    "reason": {"after": f"Its creator's role changed from {before} to {role}."},
                },
            )
    return membership


@transaction.atomic
def remove_member(*, actor: Actor, membership: Membership) -> None:
    """Remove someone from the org and its teams, with the caller keys they hold and the API
    tokens they created; the service keys they issued stay with their teams."""
    Organization.objects.select_for_update().filter(pk=membership.org_id).exists()
    membership = Membership.objects.select_for_update(of=("self",)).select_related("org", "user").get(pk=membership.pk)
    if actor.kind != "system" and not can_grant(actor.role, membership.role):
        raise ValidationError({"member": ["You cannot remove someone with more rights than you."]})
    if membership.role == Role.OWNER and _owner_count(membership.org_id) <= 1:
        raise ValidationError({"member": ["The organization must keep at least one owner."]})
    from keys.services import revoke_personal_keys

    # Someone who leaves the org takes none of its access along: their keys and tokens stop now.
    left = "They left the organization."
    revoke_personal_keys(actor=actor, org=membership.org, user=membership.user, reason=left)
    for token in _active_tokens_of(membership.org, membership.user):
        _revoke_token(actor=actor, token=token, reason="Its creator left the organization.")
    for team in Team.objects.filter(org_id=membership.org_id, members=membership.user):
        remove_perm(TEAM_ADMIN_CODENAME, membership.user, team)
    TeamMembership.objects.filter(team__org_id=membership.org_id, user=membership.user).delete()
    record_event(
        actor=actor,
        org=membership.org,
        action="member.removed",
        target=membership.user,
        target_type="member",
        target_id=str(membership.pk),
        diff={"email": {"before": membership.user.email}, "role": {"before": membership.role}},
    )
    membership.delete()


# Invitations -----------------------------------------------------------------------------


@transaction.atomic
def invite_member(
    *, actor: Actor, org: Organization, email: str, role: str, team: Team | None = None
) -> tuple[Invitation, str]:
    """Invite someone by email; returns the invitation and its one-time token."""
    from .tasks import send_invitation_email

    email = email.strip().lower()
    _require_grantable(actor, role)
    if team is not None and team.org_id != org.pk:
        raise ValidationError({"team": ["No such team."]})
    if Membership.objects.filter(org=org, user__email__iexact=email).exists():
        raise ValidationError({"email": ["This person is already a member."]})
    now = timezone.now()
    if Invitation.objects.filter(
        org=org, email__iexact=email, accepted_at=None, revoked_at=None, expires_at__gt=now
    ).exists():
        raise ValidationError(
            {"email": ["This address already has a pending invitation. Revoke it to send a new one."]}
        )
    token, token_digest = new_invitation_token()
    invitation = Invitation.objects.create(
        org=org,
        email=email,
        role=role,
        team=team,
        token_digest=token_digest,
        invited_by_id=actor.user_id,
        expires_at=now + timedelta(hours=settings.INVITATION_TTL_HOURS),
    )
    record_event(
        actor=actor,
        org=org,
        action="member.invited",
        target=invitation,
        target_type="invitation",
        target_label=email,
        diff={"email": {"after": email}, "role": {"after": role}, "team": {"after": team.name if team else None}},
    )
    send_invitation_email.delay_on_commit(str(invitation.pk), token)
    return invitation, token


@transaction.atomic
def revoke_invitation(*, actor: Actor, invitation: Invitation) -> Invitation:
    """Withdraw a pending invitation so its link stops working."""
    invitation = Invitation.objects.select_for_update().select_related("org").get(pk=invitation.pk)
    if invitation.status != "pending":
        raise ValidationError({"invitation": [f"This invitation is already {invitation.status}."]})
    invitation.revoked_at = timezone.now()
    invitation.save(update_fields=["revoked_at"])
    record_event(
        actor=actor,
        org=invitation.org,
        action="member.invitation_revoked",
        target=invitation,
        target_type="invitation",
        target_label=invitation.email,
    )
    return invitation


def find_invitation(token: str) -> Invitation | None:
    return Invitation.objects.select_related("org", "team").filter(token_digest=digest(token)).first()


@transaction.atomic
def accept_invitation(*, token: str, user: User | None = None, password: str = "", full_name: str = "") -> Membership:
    """Join the org of an invitation: as the signed-in `user`, or as a new account."""
    invitation = Invitation.objects.select_for_update().filter(token_digest=digest(token)).first()
    if invitation is None:
        raise ValidationError({"token": ["This invitation link is not valid."]})
    if invitation.status != "pending":
        raise ValidationError({"token": [f"This invitation is {invitation.status}."]})
    if user is None:
        if User.objects.filter(email__iexact=invitation.email).exists():
            raise ValidationError({"token": ["An account with this email exists: sign in first, then open the link."]})
        user = User.objects.create_user(email=invitation.email, password=password, full_name=full_name.strip())
    elif user.email.lower() != invitation.email.lower():
        raise ValidationError(
            {"token": [f"This invitation is for {invitation.email}; you are signed in as {user.email}."]}
        )
    if Membership.objects.filter(org_id=invitation.org_id, user=user).exists():
        raise ValidationError({"token": ["You are already a member of this organization."]})
    membership = Membership.objects.create(org_id=invitation.org_id, user=user, role=invitation.role)
    if invitation.team_id:
        TeamMembership.objects.create(team_id=invitation.team_id, user=user)
    invitation.accepted_at = timezone.now()
    invitation.save(update_fields=["accepted_at"])
    actor = Actor(kind="user", id=str(user.uuid), label=user.email, role=invitation.role, user_id=user.pk)
    record_event(
        actor=actor,
        org=invitation.org,
        action="member.joined",
        target=user,
        target_type="member",
        target_id=str(membership.pk),
        diff={"email": {"after": user.email}, "role": {"after": invitation.role}},
    )
    return membership


# Management API tokens -------------------------------------------------------------------


@transaction.atomic
def create_api_token(
    *, actor: Actor, org: Organization, name: str, role: str, expires_at: datetime | None = None
) -> tuple[ApiToken, str]:
    """Create a management API token; returns it and its plaintext, shown once."""
    _require_grantable(actor, role)
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError({"expires_at": ["The expiry must be in the future."]})
    created_by_id = actor.user_id
    if actor.kind == "token":
        # A token made by a token acts for the same person: capped by their role, gone with them.
        created_by_id = ApiToken.objects.filter(pk=actor.id).values_list("created_by_id", flat=True).first()
    plaintext, prefix, token_digest = new_api_token()
    token = ApiToken.objects.create(
        org=org,
        name=name.strip(),
        role=role,
        prefix=prefix,
        digest=token_digest,
        created_by_id=created_by_id,
        expires_at=expires_at,
    )
    record_event(
        actor=actor,
        org=org,
        action="api_token.created",
        target=token,
        target_type="api_token",
        diff={
            "name": {"after": token.name},
            "role": {"after": role},
            "prefix": {"after": prefix},
            "expires_at": {"after": expires_at.isoformat() if expires_at else None},
        },
    )
    return token, plaintext


@transaction.atomic
def revoke_api_token(*, actor: Actor, token: ApiToken) -> ApiToken:
    """Revoke a management API token; it stops working at once."""
    token = ApiToken.objects.select_for_update().select_related("org").get(pk=token.pk)
    if token.revoked_at:
        raise ValidationError({"token": ["This token is already revoked."]})
    _revoke_token(actor=actor, token=token)
    return token


def _active_tokens_of(org: Organization, user: User) -> list[ApiToken]:
    """The usable API tokens `user` created in `org`, locked for the caller's transaction."""
    now = timezone.now()
    tokens = ApiToken.objects.select_for_update().filter(org=org, created_by=user, revoked_at=None)
    tokens = list(tokens.filter(Q(expires_at=None) | Q(expires_at__gt=now)).order_by("created_at", "id"))
    for token in tokens:
        token.org = org
    return tokens


def _revoke_token(*, actor: Actor, token: ApiToken, reason: str = "") -> None:
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])
    diff = {"reason": {"after": reason}} if reason else {}
    record_event(
        actor=actor, org=token.org, action="api_token.revoked", target=token, target_type="api_token", diff=diff
    )

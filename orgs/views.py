"""Portal pages of orgs, teams, members, invitations, API tokens and org settings.

Every org page starts with one access check (orgs/access.py: 404 for outsiders, 403 for a role
too low), before it looks at the method or the input, so that both answer the same for GET and
POST. Writes go through orgs/services.py with the access's actor.
"""

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import Count, Exists, OuterRef, Prefetch, Q
from django.http import HttpResponseNotAllowed
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from guardian.shortcuts import get_users_with_perms

from audit.models import AuditEvent
from keys.models import CallerKey
from sla.models import ModelRoute

from . import services
from .access import (
    acting_role,
    get_org_access,
    get_team_access,
    is_team_admin,
    visible_keys,
    with_creator_role,
)
from .forms import (
    AcceptInvitationForm,
    AddTeamMemberForm,
    ApiTokenFilterForm,
    ApiTokenForm,
    InvitationFilterForm,
    InvitationForm,
    MemberFilterForm,
    OrgSettingsForm,
    RoleChangeForm,
    TeamForm,
    TeamLimitsForm,
    TeamSearchForm,
    apply_service_errors,
    grantable_roles,
)
from .models import ApiToken, Invitation, Membership, Team, TeamMembership, User
from .roles import Role, can_grant

PAGE_SIZE = 25
# A removal page lists at most this many keys of each kind, and counts the rest.
KEYS_SHOWN = 50
RECENT_EVENTS = 8
# Invitation tokens are 43 characters; anything much longer is not one of ours.
MAX_INVITATION_TOKEN_LENGTH = 128


def paginate(request, queryset):
    """One page of `queryset` for ?page= (out-of-range and junk pages fall back sensibly)."""
    return Paginator(queryset, PAGE_SIZE).get_page(request.GET.get("page"))


def post_only(request):
    """A 405 for anything but POST; called after the access check so outsiders still see 404."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    return None


def posted(request):
    """The submitted data of a POST (even an empty one, so that it shows "required"), else None."""
    return request.POST if request.method == "POST" else None


def list_url(name: str, org_slug: str, request) -> str:
    """The list page, keeping the filters and page the action was submitted from."""
    url = reverse(name, kwargs={"org_slug": org_slug})
    query = request.GET.urlencode()
    return f"{url}?{query}" if query else url


# Home and dashboard ----------------------------------------------------------------------


@login_required
def home(request):
    membership = Membership.objects.filter(user=request.user).select_related("org").order_by("org__name").first()
    if membership is not None:
        # Finance people come for the numbers: they land on the finance overview.
        if membership.role == Role.FINANCE:
            return redirect("budgets:finance", org_slug=membership.org.slug)
        return redirect("orgs:dashboard", org_slug=membership.org.slug)
    return render(request, "orgs/no_org.html")


@login_required
def dashboard(request, org_slug):
    access = get_org_access(request, org_slug, "org.read")
    org = access.org
    now = timezone.now()
    context = {
        "section": "dashboard",
        "team_count": Team.objects.filter(org=org).count(),
        "member_count": Membership.objects.filter(org=org).count(),
        # The keys this person may see (all of them for roles that read every key).
        "key_count": visible_keys(request, access, CallerKey.objects.filter(org=org).active()).count(),
        "my_teams": Team.objects.filter(org=org, members=request.user).order_by("name")[:10],
        "pending_invitation_count": (
            Invitation.objects.filter(org=org, accepted_at=None, revoked_at=None, expires_at__gt=now).count()
            if access.can("invitations.read")
            else None
        ),
        "active_token_count": (
            ApiToken.objects.filter(org=org, revoked_at=None).filter(Q(expires_at=None) | Q(expires_at__gt=now)).count()
            if access.can("tokens.read")
            else None
        ),
        "recent_events": (
            list(AuditEvent.objects.filter(org=org).order_by("-sequence")[:RECENT_EVENTS])
            if access.can("audit.read")
            else None
        ),
    }
    return render(request, "orgs/dashboard.html", context)


# Teams -----------------------------------------------------------------------------------


@login_required
def team_list(request, org_slug):
    access = get_org_access(request, org_slug, "teams.manage" if request.method == "POST" else "teams.read")
    form = TeamForm(posted(request))
    if request.method == "POST" and form.is_valid():
        try:
            team = services.create_team(
                actor=access.actor,
                org=access.org,
                name=form.cleaned_data["name"],
                description=form.cleaned_data["description"],
            )
        except ValidationError as error:
            apply_service_errors(form, error, aliases={"slug": "name"})
        else:
            messages.success(request, f"Team “{team.name}” created.")
            return redirect("orgs:team_detail", org_slug=org_slug, team_id=team.pk)
    search = TeamSearchForm(request.GET)
    teams = (
        Team.objects.filter(org=access.org)
        .annotate(
            member_count=Count("team_memberships", distinct=True),
            is_mine=Exists(TeamMembership.objects.filter(team=OuterRef("pk"), user=request.user)),
        )
        .order_by("name")
    )
    if search.is_valid():
        query = search.cleaned_data["q"]
        if query:
            teams = teams.filter(Q(name__icontains=query) | Q(description__icontains=query))
        if search.cleaned_data["mine"]:
            teams = teams.filter(is_mine=True)
    context = {
        "section": "teams",
        "page": paginate(request, teams),
        "search": search,
        "form": form,
        "can_manage": access.can("teams.manage"),
    }
    return render(request, "orgs/team_list.html", context, status=400 if form.errors else 200)


def _limits_form(team, data=None) -> TeamLimitsForm:
    aliases = list(ModelRoute.objects.filter(org_id=team.org_id).order_by("alias").values_list("alias", flat=True))
    initial = {"allowed_models": team.allowed_models, "rpm_limit": team.rpm_limit, "tpm_limit": team.tpm_limit}
    return TeamLimitsForm(data, aliases=aliases, initial=initial)


def _render_team_detail(request, access, team, *, edit_form=None, add_form=None, limits_form=None, status=200):
    can_manage = access.can("teams.manage") or is_team_admin(request.user, team)
    links = TeamMembership.objects.filter(team=team).select_related("user").order_by("user__email")
    admin_ids = set(
        get_users_with_perms(team, only_with_perms_in=["admin_team"], with_group_users=False).values_list(
            "pk", flat=True
        )
    )
    page = paginate(request, links)
    for link in page:
        link.is_team_admin = link.user_id in admin_ids
    context = {
        "section": "teams",
        "team": team,
        "page": page,
        "admin_count": len(admin_ids),
        "can_manage": can_manage,
        "can_delete": access.can("teams.manage"),
        "edit_form": edit_form or TeamForm(initial={"name": team.name, "description": team.description}),
        "add_form": add_form or AddTeamMemberForm(team=team),
        "limits_form": limits_form or _limits_form(team),
        "can_set_limits": access.can("teams.manage"),
    }
    return render(request, "orgs/team_detail.html", context, status=status)


@login_required
def team_detail(request, org_slug, team_id):
    access, team = get_team_access(request, org_slug, team_id, "teams.read")
    return _render_team_detail(request, access, team)


@login_required
def team_update(request, org_slug, team_id):
    access, team = get_team_access(request, org_slug, team_id, "teams.manage")
    if not_allowed := post_only(request):
        return not_allowed
    form = TeamForm(request.POST)
    if form.is_valid():
        try:
            services.update_team(
                actor=access.actor,
                team=team,
                name=form.cleaned_data["name"],
                description=form.cleaned_data["description"],
            )
        except ValidationError as error:
            apply_service_errors(form, error)
        else:
            messages.success(request, "Team details saved.")
            return redirect("orgs:team_detail", org_slug=org_slug, team_id=team.pk)
    return _render_team_detail(request, access, team, edit_form=form, status=400)


@login_required
def team_limits(request, org_slug, team_id):
    # The ceiling for the team's keys is the org's decision: a team admin cannot raise it.
    access = get_org_access(request, org_slug, "teams.manage")
    team = get_object_or_404(Team, org=access.org, pk=team_id)
    if not_allowed := post_only(request):
        return not_allowed
    form = _limits_form(team, request.POST)
    if form.is_valid():
        try:
            services.set_team_limits(
                actor=access.actor,
                team=team,
                allowed_models=form.cleaned_data["allowed_models"],
                rpm_limit=form.cleaned_data["rpm_limit"],
                tpm_limit=form.cleaned_data["tpm_limit"],
            )
        except ValidationError as error:
            apply_service_errors(form, error)
        else:
            messages.success(request, "Team limits saved. Gateway workers apply them within a second.")
            return redirect("orgs:team_detail", org_slug=org_slug, team_id=team.pk)
    return _render_team_detail(request, access, team, limits_form=form, status=400)


@login_required
def team_delete(request, org_slug, team_id):
    # Deleting a team is an org-level decision: team admins manage a team, they do not delete it.
    access = get_org_access(request, org_slug, "teams.manage")
    team = get_object_or_404(Team, org=access.org, pk=team_id)
    error = None
    if request.method == "POST":
        try:
            services.delete_team(actor=access.actor, team=team)
        except ValidationError as refused:
            error = " ".join(refused.messages)
        else:
            messages.success(request, f"Team “{team.name}” deleted. Its members stay in the organization.")
            return redirect("orgs:team_list", org_slug=org_slug)
    context = {
        "section": "teams",
        "team": team,
        "error": error,
        "member_count": TeamMembership.objects.filter(team=team).count(),
    }
    return render(request, "orgs/team_confirm_delete.html", context, status=400 if error else 200)


@login_required
def team_member_add(request, org_slug, team_id):
    access, team = get_team_access(request, org_slug, team_id, "teams.manage")
    if not_allowed := post_only(request):
        return not_allowed
    form = AddTeamMemberForm(request.POST, team=team)
    if form.is_valid():
        user = form.cleaned_data["user"]
        try:
            services.add_team_member(
                actor=access.actor, team=team, user=user, team_admin=form.cleaned_data["team_admin"]
            )
        except ValidationError as error:
            apply_service_errors(form, error)
        else:
            messages.success(request, f"{user.display_name} added to {team.name}.")
            return redirect("orgs:team_detail", org_slug=org_slug, team_id=team.pk)
    return _render_team_detail(request, access, team, add_form=form, status=400)


def _team_member(team, user_id):
    return get_object_or_404(User, uuid=user_id, team_memberships__team=team)


def _keys_on_leaving(org, user, team=None) -> dict:
    """What a removal page shows before it is confirmed: the keys `user` holds (revoked with
    them) and the keys they issued for the team or for others (which stay), in the org or in
    `team`. The service (keys.services.revoke_personal_keys) applies the same rule."""
    keys = CallerKey.objects.filter(org=org).active().select_related("team", "user").order_by("team__name", "name")
    if team is not None:
        keys = keys.filter(team=team)
    revoked = keys.filter(user=user)
    staying = keys.filter(created_by=user).exclude(user=user)
    return {
        "revoked_keys": revoked[:KEYS_SHOWN],
        "revoked_key_count": revoked.count(),
        "staying_keys": staying[:KEYS_SHOWN],
        "staying_key_count": staying.count(),
    }


@login_required
def team_member_remove(request, org_slug, team_id, user_id):
    access, team = get_team_access(request, org_slug, team_id, "teams.manage")
    user = _team_member(team, user_id)
    if request.method == "POST":
        try:
            services.remove_team_member(actor=access.actor, team=team, user=user)
        except ValidationError as error:
            messages.error(request, " ".join(error.messages))
        else:
            messages.success(request, f"{user.display_name} removed from {team.name}.")
        return redirect("orgs:team_detail", org_slug=org_slug, team_id=team.pk)
    context = {
        "section": "teams",
        "team": team,
        "member": user,
        "is_me": user.pk == request.user.pk,
        **_keys_on_leaving(access.org, user, team),
    }
    return render(request, "orgs/team_member_confirm_remove.html", context)


@login_required
def team_member_admin(request, org_slug, team_id, user_id):
    access, team = get_team_access(request, org_slug, team_id, "teams.manage")
    if not_allowed := post_only(request):
        return not_allowed
    user = _team_member(team, user_id)
    team_admin = request.POST.get("team_admin") == "1"
    try:
        services.set_team_admin(actor=access.actor, team=team, user=user, team_admin=team_admin)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        verb = "is now" if team_admin else "is no longer"
        messages.success(request, f"{user.display_name} {verb} a team admin of {team.name}.")
    return redirect("orgs:team_detail", org_slug=org_slug, team_id=team.pk)


# Members ---------------------------------------------------------------------------------


def _render_member_list(request, access, *, failed=None, status=200):
    """The member list; `failed` is (membership id, bound role form) after a refused role change."""
    filters = MemberFilterForm(request.GET)
    memberships = (
        Membership.objects.filter(org=access.org)
        .select_related("user")
        .prefetch_related(
            Prefetch(
                "user__team_memberships",
                queryset=TeamMembership.objects.filter(team__org=access.org)
                .select_related("team")
                .order_by("team__name"),
                to_attr="org_team_links",
            )
        )
        .order_by("user__email")
    )
    if filters.is_valid():
        query, role = filters.cleaned_data["q"], filters.cleaned_data["role"]
        if query:
            memberships = memberships.filter(Q(user__email__icontains=query) | Q(user__full_name__icontains=query))
        if role:
            memberships = memberships.filter(role=role)
    page = paginate(request, memberships)
    can_manage = access.can("members.manage")
    grantable = grantable_roles(access.actor.capabilities)
    for membership in page:
        membership.is_me = membership.user_id == request.user.pk
        membership.can_change = can_manage and not membership.is_me and can_grant(access.role, membership.role)
        membership.can_remove = can_manage and can_grant(access.role, membership.role)
        if failed is not None and failed[0] == membership.pk:
            membership.role_form = failed[1]
        elif membership.can_change:
            membership.role_form = RoleChangeForm(
                initial={"role": membership.role}, grantable=grantable, auto_id=f"id_{membership.pk}_%s"
            )
    context = {
        "section": "members",
        "page": page,
        "filters": filters,
        "can_manage": can_manage,
        "can_invite": access.can("invitations.manage"),
        "failed_form": failed[1] if failed is not None else None,
    }
    return render(request, "orgs/member_list.html", context, status=status)


@login_required
def member_list(request, org_slug):
    access = get_org_access(request, org_slug, "members.read")
    return _render_member_list(request, access)


@login_required
def member_role(request, org_slug, membership_id):
    access = get_org_access(request, org_slug, "members.manage")
    if not_allowed := post_only(request):
        return not_allowed
    membership = get_object_or_404(Membership.objects.select_related("user"), org=access.org, pk=membership_id)
    grantable = grantable_roles(access.actor.capabilities)
    form = RoleChangeForm(request.POST, grantable=grantable, auto_id=f"id_{membership.pk}_%s")
    if form.is_valid():
        try:
            services.change_role(actor=access.actor, membership=membership, role=form.cleaned_data["role"])
        except ValidationError as error:
            apply_service_errors(form, error)
        else:
            role = Role(form.cleaned_data["role"]).label
            messages.success(request, f"{membership.user.display_name} is now {role}.")
            return redirect(list_url("orgs:member_list", org_slug, request))
    # Redisplay the role the member still has, not the refused one, with the errors beside it.
    shown = RoleChangeForm({"role": membership.role}, grantable=grantable, auto_id=f"id_{membership.pk}_%s")
    shown.is_valid()
    for message in form.errors.get("role", []) + form.non_field_errors():
        shown.add_error("role", message)
    shown.member = membership
    return _render_member_list(request, access, failed=(membership.pk, shown), status=400)


@login_required
def member_remove(request, org_slug, membership_id):
    access = get_org_access(request, org_slug, "members.manage")
    membership = get_object_or_404(Membership.objects.select_related("user"), org=access.org, pk=membership_id)
    error = None
    if request.method == "POST":
        try:
            services.remove_member(actor=access.actor, membership=membership)
        except ValidationError as refused:
            error = " ".join(refused.messages)
        else:
            messages.success(request, f"{membership.user.display_name} removed from {access.org.name}.")
            if membership.user_id == request.user.pk:
                return redirect("orgs:home")
            return redirect("orgs:member_list", org_slug=org_slug)
    context = {
        "section": "members",
        "membership": membership,
        "is_me": membership.user_id == request.user.pk,
        "error": error,
        "team_count": TeamMembership.objects.filter(team__org=access.org, user=membership.user).count(),
        "token_count": ApiToken.objects.filter(org=access.org, created_by=membership.user, revoked_at=None)
        .filter(Q(expires_at=None) | Q(expires_at__gt=timezone.now()))
        .count(),
        **_keys_on_leaving(access.org, membership.user),
    }
    return render(request, "orgs/member_confirm_remove.html", context, status=400 if error else 200)


# Invitations -----------------------------------------------------------------------------


def _filter_invitations(queryset, status: str):
    now = timezone.now()
    pending = Q(accepted_at=None, revoked_at=None)
    if status == "pending":
        return queryset.filter(pending, expires_at__gt=now)
    if status == "expired":
        return queryset.filter(pending, expires_at__lte=now)
    if status == "accepted":
        return queryset.exclude(accepted_at=None)
    if status == "revoked":
        return queryset.filter(accepted_at=None).exclude(revoked_at=None)
    return queryset


@login_required
def invitation_list(request, org_slug):
    access = get_org_access(request, org_slug, "invitations.manage" if request.method == "POST" else "invitations.read")
    form = InvitationForm(posted(request), org=access.org, capabilities=access.actor.capabilities)
    if request.method == "POST" and form.is_valid():
        try:
            invitation, _token = services.invite_member(
                actor=access.actor,
                org=access.org,
                email=form.cleaned_data["email"],
                role=form.cleaned_data["role"],
                team=form.cleaned_data["team"],
            )
        except ValidationError as error:
            apply_service_errors(form, error)
        else:
            # The link goes only to the invitee's mailbox: accepting it proves they own the address.
            messages.success(request, f"Invitation sent to {invitation.email}.")
            return redirect("orgs:invitation_list", org_slug=org_slug)
    filters = InvitationFilterForm(request.GET)
    invitations = Invitation.objects.filter(org=access.org).select_related("team", "invited_by").order_by("-created_at")
    if filters.is_valid():
        invitations = _filter_invitations(invitations, filters.cleaned_data["status"])
    context = {
        "section": "invitations",
        "ttl_hours": settings.INVITATION_TTL_HOURS,
        "page": paginate(request, invitations),
        "filters": filters,
        "form": form,
        "can_manage": access.can("invitations.manage"),
    }
    return render(request, "orgs/invitation_list.html", context, status=400 if form.errors else 200)


@login_required
def invitation_revoke(request, org_slug, invitation_id):
    access = get_org_access(request, org_slug, "invitations.manage")
    if not_allowed := post_only(request):
        return not_allowed
    invitation = get_object_or_404(Invitation, org=access.org, pk=invitation_id)
    try:
        services.revoke_invitation(actor=access.actor, invitation=invitation)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, f"Invitation for {invitation.email} revoked.")
    return redirect(list_url("orgs:invitation_list", org_slug, request))


def invitation_accept(request, token):
    """Join an org from an invitation link, as the signed-in person or as a new account."""
    invitation = services.find_invitation(token) if len(token) <= MAX_INVITATION_TOKEN_LENGTH else None
    if invitation is None or invitation.status != "pending":
        context = {"invitation": invitation, "status": invitation.status if invitation else "invalid"}
        return render(request, "orgs/invitation_unusable.html", context, status=404 if invitation is None else 410)
    user = request.user if request.user.is_authenticated else None
    account_exists = user is None and User.objects.filter(email__iexact=invitation.email).exists()
    form = None
    if user is None and not account_exists:
        form = AcceptInvitationForm(posted(request), email=invitation.email)
    error = None
    if request.method == "POST":
        try:
            if user is not None:
                membership = services.accept_invitation(token=token, user=user)
            elif form is not None and form.is_valid():
                membership = services.accept_invitation(
                    token=token, password=form.cleaned_data["password1"], full_name=form.cleaned_data["full_name"]
                )
                login(request, membership.user, backend="django.contrib.auth.backends.ModelBackend")
            else:
                membership = None
        except ValidationError as refused:
            error = " ".join(refused.messages)
            membership = None
        if membership is not None:
            messages.success(request, f"Welcome to {invitation.org.name}.")
            return redirect("orgs:dashboard", org_slug=invitation.org.slug)
    context = {
        "invitation": invitation,
        "form": form,
        "error": error,
        "account_exists": account_exists,
        "email_matches": user is not None and user.email.lower() == invitation.email.lower(),
        "login_url": reverse("account_login") + "?next=" + request.path,
    }
    invalid = error or (form is not None and form.errors)
    return render(request, "orgs/invitation_accept.html", context, status=400 if invalid else 200)


# Management API tokens -------------------------------------------------------------------


def _filter_tokens(queryset, status: str):
    now = timezone.now()
    if status == "active":
        return queryset.filter(revoked_at=None).filter(Q(expires_at=None) | Q(expires_at__gt=now))
    if status == "expired":
        return queryset.filter(revoked_at=None, expires_at__lte=now)
    if status == "revoked":
        return queryset.exclude(revoked_at=None)
    return queryset


@login_required
def token_list(request, org_slug):
    access = get_org_access(request, org_slug, "tokens.manage" if request.method == "POST" else "tokens.read")
    form = ApiTokenForm(posted(request), capabilities=access.actor.capabilities)
    created = plaintext = None
    if request.method == "POST" and form.is_valid():
        try:
            created, plaintext = services.create_api_token(
                actor=access.actor,
                org=access.org,
                name=form.cleaned_data["name"],
                role=form.cleaned_data["role"],
                expires_at=form.expires_at,
            )
        except ValidationError as error:
            apply_service_errors(form, error, aliases={"expires_at": "expires_on"})
        else:
            form = ApiTokenForm(capabilities=access.actor.capabilities)
    filters = ApiTokenFilterForm(request.GET)
    tokens = with_creator_role(ApiToken.objects.filter(org=access.org)).select_related("created_by")
    tokens = tokens.order_by("-created_at")
    if filters.is_valid():
        tokens = _filter_tokens(tokens, filters.cleaned_data["status"])
    page = paginate(request, tokens)
    for token in page:
        token.acts_as = acting_role(token.role, token.created_by_id, token.creator_role)
    context = {
        "section": "tokens",
        "page": page,
        "filters": filters,
        "form": form,
        "can_manage": access.can("tokens.manage"),
        "created": created,
        "plaintext": plaintext,
    }
    response = render(request, "orgs/token_list.html", context, status=400 if form.errors else 200)
    if plaintext:
        # The page holding the plaintext must not linger in any cache or the back-button history.
        add_never_cache_headers(response)
    return response


@login_required
def token_revoke(request, org_slug, token_id):
    access = get_org_access(request, org_slug, "tokens.manage")
    token = get_object_or_404(ApiToken.objects.select_related("created_by"), org=access.org, pk=token_id)
    if request.method == "POST":
        try:
            services.revoke_api_token(actor=access.actor, token=token)
        except ValidationError as error:
            messages.error(request, " ".join(error.messages))
        else:
            messages.success(request, f"Token “{token.name}” revoked. It stopped working immediately.")
        return redirect("orgs:token_list", org_slug=org_slug)
    return render(request, "orgs/token_confirm_revoke.html", {"section": "tokens", "token": token})


# Settings --------------------------------------------------------------------------------


@login_required
def org_settings(request, org_slug):
    access = get_org_access(request, org_slug, "org.manage")
    org = access.org
    initial = {
        "name": org.name,
        "require_mfa": org.require_mfa,
        "budget_fail_open": org.budget_fail_open,
        "rate_limit_fail_open": org.rate_limit_fail_open,
    }
    form = OrgSettingsForm(posted(request), initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            services.update_org_settings(
                actor=access.actor,
                org=org,
                name=data["name"],
                require_mfa=data["require_mfa"],
                budget_fail_open=data["budget_fail_open"],
                rate_limit_fail_open=data["rate_limit_fail_open"],
            )
        except ValidationError as error:
            apply_service_errors(form, error)
        else:
            messages.success(request, "Settings saved.")
            return redirect("orgs:settings", org_slug=org_slug)
    context = {"section": "settings", "form": form}
    return render(request, "orgs/settings.html", context, status=400 if form.errors else 200)

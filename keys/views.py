"""Portal pages of caller keys and provider credentials.

As in orgs/views.py, every page starts with one access check (orgs/access.py: 404 for outsiders,
403 for a role too low) before it looks at the method or the input, and writes go through
keys/services.py with the access's actor. A key's plaintext appears in exactly one response, the
one that issues it (never through a redirect or the session); a provider secret in none.
"""

from datetime import timedelta

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db.models import Count, Prefetch, Q
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.cache import add_never_cache_headers

from fleet.selectors import entity_publish_pending
from orgs.access import (
    OrgAccess,
    administered_teams,
    get_key_access,
    get_org_access,
    may_issue_key,
    may_manage_key,
    require_key_rights,
    visible_keys,
)
from orgs.forms import apply_service_errors
from orgs.models import Team, User
from orgs.views import paginate, post_only, posted

from . import crypto, services
from .forms import (
    BulkRevokeForm,
    CredentialFilterForm,
    CredentialForm,
    KeyCreateForm,
    KeyFilterForm,
    KeySettingsForm,
    RotateKeyForm,
    model_aliases,
)
from .models import CallerKey, ProviderCredential

DEFAULT_GATEWAY_URL = "http://127.0.0.1:8080/v1"
# What a revocation does, truthfully: the gateways refuse a key once the change is published to
# them (a Celery task on commit; the beat sweep if the broker was down), not at the click.
TAKES_EFFECT = (
    "The gateways refuse it as soon as the change is published to them, normally within a second; "
    "the Fleet page shows the revision each worker runs."
)


def gateway_url() -> str:
    return getattr(settings, "GATEHOUSE_GATEWAY_URL", DEFAULT_GATEWAY_URL)


# Who may do what with keys: compositions of orgs/access.py ----------------------------------


def issuable_teams(request, access: OrgAccess):
    """Admins: every team; team admins: their teams; developers: the teams they belong to."""
    teams = Team.objects.filter(org=access.org).order_by("name")
    if access.can("keys.manage"):
        return teams
    mine = Q(pk__in=administered_teams(request, access).values("pk"))
    if access.can("keys.own") and access.actor.user_id is not None:
        mine |= Q(pk__in=Team.objects.filter(org=access.org, members=access.actor.user_id).values("pk"))
    return teams.filter(mine)


def org_people(org):
    """People a key of `org` may name: its members, and former members who still hold keys."""
    return User.objects.filter(
        Q(pk__in=org.memberships.values("user_id")) | Q(pk__in=org.caller_keys.values("user_id"))
    ).order_by("email")


def key_owner_choices(request, access: OrgAccess):
    """Admins may name any member; team admins the members of their teams (the form then checks
    the chosen team); developers only themselves."""
    if access.can("keys.manage"):
        return User.objects.filter(memberships__org=access.org).order_by("email")
    administered = administered_teams(request, access)
    return (
        User.objects.filter(Q(team_memberships__team__in=administered) | Q(pk=access.actor.user_id))
        .distinct()
        .order_by("email")
    )


def keys_of(org):
    return CallerKey.objects.filter(org=org).select_related("team", "user").order_by("-created_at", "id")


def _shown_once(request, access: OrgAccess, key: CallerKey, plaintext: str, *, rotated_from=None):
    """The one response that carries a key's plaintext; no cache may keep it."""
    models = key.allowed_models or key.team.allowed_models or [alias for alias, _ in model_aliases(access.org)]
    example_model = models[0] if models else "gpt-4o"
    context = {
        "section": "keys",
        "key": key,
        "plaintext": plaintext,
        "rotated_from": rotated_from,
        "gateway_url": gateway_url(),
        "example_model": example_model,
    }
    response = render(request, "keys/key_created.html", context)
    add_never_cache_headers(response)
    return response


# Caller keys ---------------------------------------------------------------------------------


@login_required
def key_list(request, org_slug):
    access = get_org_access(request, org_slug, "org.read")
    org = access.org
    owners = org_people(org) if access.can("members.read") else User.objects.filter(pk=access.actor.user_id)
    filters = KeyFilterForm(request.GET, teams=Team.objects.filter(org=org).order_by("name"), owners=owners)
    filters.is_valid()  # a bad filter shows its error and is ignored; the others still apply
    chosen = filters.cleaned_data
    keys = visible_keys(request, access, keys_of(org))
    if chosen.get("q"):
        keys = keys.filter(Q(name__icontains=chosen["q"]) | Q(prefix__icontains=chosen["q"]))
    if chosen.get("team"):
        keys = keys.filter(team=chosen["team"])
    if chosen.get("status"):
        keys = keys.with_status(chosen["status"])
    if chosen.get("owner"):
        keys = keys.filter(user=chosen["owner"])
    if chosen.get("expiring") is not None:
        now = timezone.now()
        keys = keys.filter(
            revoked_at=None, expires_at__gt=now, expires_at__lte=now + timedelta(days=chosen["expiring"])
        )
    page = paginate(request, keys)
    manages_all = access.can("keys.manage")
    admin_team_ids = set() if manages_all else set(administered_teams(request, access).values_list("pk", flat=True))
    owns = access.can("keys.own")
    for key in page:
        key.can_manage = (
            manages_all
            or key.team_id in admin_team_ids
            or (owns and key.user_id is not None and key.user_id == access.actor.user_id)
        )
    context = {
        "section": "keys",
        "page": page,
        "filters": filters,
        "filtered": any(request.GET.get(name) for name in filters.fields),
        "can_issue": manages_all or owns or bool(admin_team_ids),
        "can_bulk_revoke": manages_all or bool(admin_team_ids),
    }
    return render(request, "keys/key_list.html", context)


@login_required
def key_create(request, org_slug):
    access = get_org_access(request, org_slug, "org.read")
    require_key_rights(request, access, own_keys_suffice=True)
    owners = key_owner_choices(request, access)
    initial = {} if access.can("keys.manage") else {"owner": request.user.uuid}
    teams = issuable_teams(request, access)
    form = KeyCreateForm(posted(request), org=access.org, teams=teams, owners=owners, initial=initial)
    if request.method == "POST" and form.is_valid():
        team, owner = form.cleaned_data["team"], form.cleaned_data["owner"]
        if not may_issue_key(request, access, team, owner.pk if owner else None):
            form.add_error("owner", "You may issue keys in this team only for yourself.")
        else:
            try:
                key, plaintext = services.issue_key(
                    actor=access.actor,
                    team=team,
                    name=form.cleaned_data["name"],
                    user=owner,
                    expires_at=form.cleaned_data["expires_at"],
                    allowed_models=form.cleaned_data["allowed_models"],
                    rpm_limit=form.cleaned_data["rpm_limit"],
                    tpm_limit=form.cleaned_data["tpm_limit"],
                    tags=form.cleaned_data["tags"],
                )
            except ValidationError as error:
                apply_service_errors(form, error, aliases={"user": "owner"})
            else:
                return _shown_once(request, access, key, plaintext)
    context = {"section": "keys", "form": form, "has_teams": teams.exists()}
    return render(request, "keys/key_form.html", context, status=400 if form.errors else 200)


@login_required
def key_detail(request, org_slug, key_id):
    access, key = get_key_access(request, org_slug, key_id, "manage" if request.method == "POST" else "read")
    can_manage = may_manage_key(request, access, key)
    form = KeySettingsForm(
        posted(request), org=access.org, current_expiry=key.expires_at, initial=KeySettingsForm.initial_for(key)
    )
    if request.method == "POST" and form.is_valid():
        try:
            services.update_key(
                actor=access.actor,
                key=key,
                name=form.cleaned_data["name"],
                allowed_models=form.cleaned_data["allowed_models"],
                rpm_limit=form.cleaned_data["rpm_limit"],
                tpm_limit=form.cleaned_data["tpm_limit"],
                tags=form.cleaned_data["tags"],
                expires_at=form.cleaned_data["expires_at"],
            )
        except ValidationError as error:
            apply_service_errors(form, error)
        else:
            messages.success(request, "Key settings saved.")
            return redirect("keys:detail", org_slug=org_slug, key_id=key.pk)
    context = {
        "section": "keys",
        "key": key,
        "rotated_from": keys_of(access.org).filter(pk=key.rotated_from_id).first() if key.rotated_from_id else None,
        "successor": keys_of(access.org).filter(rotated_from=key).first(),
        "can_manage": can_manage,
        "can_read_audit": access.can("audit.read"),
        "form": form,
        "publish_pending": entity_publish_pending("key", key.pk),
    }
    return render(request, "keys/key_detail.html", context, status=400 if form.errors else 200)


@login_required
def key_rotate(request, org_slug, key_id):
    access, key = get_key_access(request, org_slug, key_id, "manage")
    form = RotateKeyForm(posted(request))
    if request.method == "POST" and form.is_valid():
        try:
            successor, plaintext = services.rotate_key(
                actor=access.actor, key=key, grace_hours=form.cleaned_data["grace_hours"]
            )
        except ValidationError as error:
            apply_service_errors(form, error)
        else:
            # The service changed the old key's expiry (the grace period) on its own copy.
            old = keys_of(access.org).get(pk=key.pk)
            return _shown_once(request, access, successor, plaintext, rotated_from=old)
    context = {
        "section": "keys",
        "key": key,
        "form": form,
        "successor": CallerKey.objects.filter(rotated_from=key).first(),
    }
    return render(request, "keys/key_confirm_rotate.html", context, status=400 if form.errors else 200)


@login_required
def key_revoke(request, org_slug, key_id):
    access, key = get_key_access(request, org_slug, key_id, "manage")
    if request.method == "POST":
        try:
            services.revoke_key(actor=access.actor, key=key)
        except ValidationError as error:
            messages.error(request, " ".join(error.messages))
        else:
            messages.success(request, f"Key “{key.name}” revoked. {TAKES_EFFECT}")
        return redirect("keys:detail", org_slug=org_slug, key_id=key.pk)
    return render(request, "keys/key_confirm_revoke.html", {"section": "keys", "key": key})


@login_required
def key_bulk_revoke(request, org_slug):
    access = get_org_access(request, org_slug, "org.read")
    require_key_rights(request, access, own_keys_suffice=False)
    manages_all = access.can("keys.manage")
    if manages_all:
        teams, people = Team.objects.filter(org=access.org).order_by("name"), org_people(access.org)
    else:
        teams = administered_teams(request, access).order_by("name")
        people = User.objects.filter(team_memberships__team__in=teams).distinct().order_by("email")
    # The choice arrives by GET (to show what would go) and by POST (to do it).
    asked = request.GET if {"team", "user"} & set(request.GET) else None
    chosen = request.POST if request.method == "POST" else asked
    form = BulkRevokeForm(chosen, teams=teams, people=people, team_required=not manages_all)
    counts = None
    if form.is_bound and form.is_valid():
        team, user = form.cleaned_data["team"], form.cleaned_data["user"]
        if request.method == "POST":
            revoked = services.revoke_keys(actor=access.actor, org=access.org, team=team, user=user)
            messages.success(request, f"{revoked} key{'s' if revoked != 1 else ''} revoked. {TAKES_EFFECT}")
            return redirect("keys:list", org_slug=org_slug)
        unrevoked = CallerKey.objects.filter(org=access.org, revoked_at=None)
        if team is not None:
            unrevoked = unrevoked.filter(team=team)
        if user is not None:
            unrevoked = unrevoked.filter(user=user)
        now = timezone.now()
        counts = unrevoked.aggregate(
            total=Count("pk"), active=Count("pk", filter=Q(expires_at=None) | Q(expires_at__gt=now))
        )
    context = {"section": "keys", "form": form, "counts": counts, "manages_all": manages_all}
    return render(request, "keys/key_bulk_revoke.html", context, status=400 if form.errors else 200)


# Provider credentials ------------------------------------------------------------------------


def credentials_of(org):
    teams = Prefetch("teams", queryset=Team.objects.order_by("name", "id"))
    return ProviderCredential.objects.filter(org=org).prefetch_related(teams).order_by("name", "id")


def credential_error_aliases(provider: str) -> dict[str, str]:
    """The service names the secrets "secrets"; the form shows that next to the provider's secret."""
    return {"secrets": services.SECRET_FIELDS[provider][0]}


@login_required
def credential_list(request, org_slug):
    access = get_org_access(request, org_slug, "org.read")
    can_read = access.can("credentials.read")
    filters = CredentialFilterForm(request.GET)
    filters.is_valid()
    chosen = filters.cleaned_data
    # Members without credentials.read see names and providers only: nothing else is fetched.
    credentials = (
        credentials_of(access.org)
        if can_read
        else (ProviderCredential.objects.filter(org=access.org).only("id", "name", "provider").order_by("name", "id"))
    )
    if chosen.get("q"):
        credentials = credentials.filter(name__icontains=chosen["q"])
    if chosen.get("provider"):
        credentials = credentials.filter(provider=chosen["provider"])
    context = {
        "section": "credentials",
        "page": paginate(request, credentials),
        "filters": filters,
        "filtered": any(request.GET.get(name) for name in filters.fields),
        "can_read": can_read,
        "can_manage": access.can("credentials.manage"),
    }
    return render(request, "keys/credential_list.html", context)


@login_required
def credential_create(request, org_slug):
    access = get_org_access(request, org_slug, "credentials.manage")
    form = CredentialForm(posted(request), org=access.org)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            credential = services.create_credential(
                actor=access.actor,
                org=access.org,
                name=data["name"],
                provider=data["provider"],
                secrets=form.secrets_for(data["provider"]),
                teams=list(data["teams"]),
                **form.connection(),
            )
        except ValidationError as error:
            apply_service_errors(form, error, aliases=credential_error_aliases(data["provider"]))
        else:
            messages.success(request, f"Credential “{credential.name}” registered. Its key is sealed.")
            return redirect("keys:credential_detail", org_slug=org_slug, credential_id=credential.pk)
    context = {"section": "credentials", "form": form}
    return render(request, "keys/credential_form.html", context, status=400 if form.errors else 200)


@login_required
def credential_detail(request, org_slug, credential_id):
    access = get_org_access(request, org_slug, "credentials.manage" if request.method == "POST" else "credentials.read")
    credential = get_object_or_404(credentials_of(access.org).select_related("created_by"), pk=credential_id)
    form = CredentialForm(
        posted(request), org=access.org, credential=credential, initial=CredentialForm.initial_for(credential)
    )
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        replacing = {name: value for name, value in form.secrets_for(credential.provider).items() if value}
        try:
            services.update_credential(
                actor=access.actor,
                credential=credential,
                name=data["name"],
                teams=list(data["teams"]),
                secrets=replacing or None,
                **form.connection(),
            )
        except ValidationError as error:
            apply_service_errors(form, error, aliases=credential_error_aliases(credential.provider))
        else:
            names = " and ".join(services.SECRET_LABELS[name] for name in replacing)
            replaced = f" The {names} was replaced." if replacing else ""
            messages.success(request, f"Credential settings saved.{replaced}")
            return redirect("keys:credential_detail", org_slug=org_slug, credential_id=credential.pk)
    context = {
        "section": "credentials",
        "credential": credential,
        "deployments": list(credential.deployments.order_by("name").values_list("name", flat=True)),
        "can_manage": access.can("credentials.manage"),
        "can_read_audit": access.can("audit.read"),
        "form": form,
    }
    return render(request, "keys/credential_detail.html", context, status=400 if form.errors else 200)


@login_required
def credential_delete(request, org_slug, credential_id):
    access = get_org_access(request, org_slug, "credentials.manage")
    credential = get_object_or_404(ProviderCredential.objects.select_related("org"), org=access.org, pk=credential_id)
    error = None
    if request.method == "POST":
        try:
            services.delete_credential(actor=access.actor, credential=credential)
        except ValidationError as refused:
            error = " ".join(refused.messages)
        else:
            messages.success(request, f"Credential “{credential.name}” deleted with its sealed key.")
            return redirect("keys:credential_list", org_slug=org_slug)
    context = {
        "section": "credentials",
        "credential": credential,
        "deployment_count": credential.deployments.count(),
        "error": error,
    }
    return render(request, "keys/credential_confirm_delete.html", context, status=400 if error else 200)


@login_required
def credential_test(request, org_slug, credential_id):
    access = get_org_access(request, org_slug, "credentials.manage")
    if not_allowed := post_only(request):
        return not_allowed
    credential = get_object_or_404(ProviderCredential, org=access.org, pk=credential_id)
    try:
        credential = services.run_credential_check(actor=access.actor, credential=credential)
    except (crypto.DecryptionError, crypto.KeyRingError) as error:
        messages.error(request, f"The key could not be opened, so nothing was sent: {error}")
    else:
        if credential.last_test_ok:
            messages.success(request, f"Test passed. {credential.last_test_message}")
        else:
            messages.error(request, f"Test failed. {credential.last_test_message}")
    return redirect("keys:credential_detail", org_slug=org_slug, credential_id=credential.pk)

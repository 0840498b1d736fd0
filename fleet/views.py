"""Fleet pages: gateway nodes, config revisions, diffs, rollback and republish.

The fleet is platform-wide, so these pages are for platform staff (Django superusers) only:
signed-out visitors are sent to sign in, everyone else gets 403, before anything is read.
Nodes come from their heartbeats in Redis (fleet/selectors.py); writes go through
fleet/services.py, which records the audit event.
"""

import json

import redis
from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse

from audit.context import Actor
from orgs.validators import validate_display_name
from orgs.views import paginate, posted

from . import services
from .models import ConfigRevision
from .selectors import STALE_AFTER, fleet_nodes, newest_revision_number

# A worker heartbeats every few seconds; a minute of silence means it is gone or stuck.
BIGINT_MAX = 2**63 - 1
SHORT_HASH = 12
REDIS_DOWN_AFTER_SAVE = (
    "The new revision is saved in PostgreSQL, but Redis cannot be reached: the gateways keep their current config "
    "and get the new one when Redis is back (the periodic compaction copies it there)."
)


def require_platform_staff(request) -> None:
    if not request.user.is_superuser:
        raise PermissionDenied("Only platform staff may see and change the gateway fleet.")


def staff_actor(user) -> Actor:
    return Actor(kind="user", id=str(user.uuid), label=user.email, user_id=user.pk)


def existing_revision(number: int) -> ConfigRevision:
    """The revision numbered `number` (without its envelope), or 404."""
    revision = None
    if 0 < number <= BIGINT_MAX:
        fields = ("number", "kind", "sha256", "size", "summary", "created_at")
        revision = ConfigRevision.objects.filter(number=number).only(*fields).first()
    if revision is None:
        raise Http404(f"There is no revision {number}.")
    return revision


def revision_number_field(label: str, **kwargs) -> forms.IntegerField:
    return forms.IntegerField(
        label=label,
        min_value=1,
        max_value=BIGINT_MAX,
        error_messages={"invalid": "Enter a revision number, e.g. 42."},
        **kwargs,
    )


class CompareForm(forms.Form):
    revision = revision_number_field("Revision")
    against = revision_number_field("Compared with")

    def clean(self):
        cleaned = super().clean()
        numbers = {cleaned[name] for name in ("revision", "against") if cleaned.get(name)}
        known = set(ConfigRevision.objects.filter(number__in=numbers).values_list("number", flat=True))
        for name in ("revision", "against"):
            if cleaned.get(name) and cleaned[name] not in known:
                self.add_error(name, f"There is no revision {cleaned[name]}.")
        return cleaned


class DiffForm(forms.Form):
    against = revision_number_field("Compared with", required=False, help_text="Default: the revision before.")


class RepublishForm(forms.Form):
    reason = forms.CharField(
        label="Reason",
        max_length=300,
        required=False,
        validators=[validate_display_name],
        help_text="Recorded in the audit log, e.g. “Redis was restored from an old backup”.",
    )


# Nodes -------------------------------------------------------------------------------------


@login_required
def node_list(request):
    require_platform_staff(request)
    error = None
    try:
        nodes = fleet_nodes()
    except redis.RedisError:
        nodes, error = [], "Redis cannot be reached, so the nodes' heartbeats cannot be read. Workers keep serving."
    rows = [
        {
            "node": node,
            "stale": node.stale,
            "hash": node.config_hash[:SHORT_HASH],
        }
        for node in nodes
    ]
    context = {
        "section": "nodes",
        "rows": rows,
        "error": error,
        "newest": newest_revision_number(),
        "stale_count": sum(row["stale"] for row in rows),
        "behind_count": sum(1 for row in rows if row["node"].lag),
        "stale_after": int(STALE_AFTER.total_seconds()),
    }
    return render(request, "fleet/node_list.html", context, status=503 if error else 200)


# Revisions ---------------------------------------------------------------------------------


@login_required
def revision_list(request):
    require_platform_staff(request)
    comparing = "revision" in request.GET or "against" in request.GET
    compare = CompareForm(request.GET if comparing else None)
    if comparing and compare.is_valid():
        path = reverse("fleet:revision_diff", kwargs={"number": compare.cleaned_data["revision"]})
        return redirect(f"{path}?against={compare.cleaned_data['against']}")
    revisions = (
        ConfigRevision.objects.select_related("cause", "cause__org")
        .only(
            "number",
            "kind",
            "sha256",
            "size",
            "summary",
            "created_at",
            "cause",
            "cause__action",
            "cause__actor_label",
            "cause__org",
            "cause__org__slug",
            "cause__org__name",
        )
        .order_by("-number")
    )
    page = paginate(request, revisions)
    context = {"section": "revisions", "page": page, "compare": compare, "newest": newest_revision_number()}
    return render(request, "fleet/revision_list.html", context, status=400 if compare.errors else 200)


def _json_text(value) -> str | None:
    return None if value is None else json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


@login_required
def revision_diff(request, number):
    require_platform_staff(request)
    revision = existing_revision(number)
    form = DiffForm(request.GET)
    against = older = newer = changes = None
    if form.is_valid():
        against = form.cleaned_data["against"]
        if against is None:
            earlier = ConfigRevision.objects.filter(number__lt=revision.number).order_by("-number")
            against = earlier.values_list("number", flat=True).first()
        elif not ConfigRevision.objects.filter(number=against).exists():
            form.add_error("against", f"There is no revision {against}.")
    if not form.errors:
        older, newer = sorted((against or 0, revision.number))
        changes = [
            {**change, "before_text": _json_text(change["before"]), "after_text": _json_text(change["after"])}
            for change in services.diff_revisions(older, newer)
        ]
    context = {
        "section": "revisions",
        "revision": revision,
        "against": against,
        "older": older,
        "newer": newer,
        "form": form,
        "changes": changes,
        "newest": newest_revision_number(),
    }
    return render(request, "fleet/revision_diff.html", context, status=400 if form.errors else 200)


@login_required
def rollback(request, number):
    require_platform_staff(request)
    revision = existing_revision(number)
    error = None
    if request.method == "POST":
        try:
            created = services.roll_back_to(actor=staff_actor(request.user), number=revision.number)
        except ValidationError as refused:
            error = " ".join(refused.messages)
        except redis.RedisError:
            # roll_back_to commits before it copies to Redis: the rollback stands.
            messages.warning(request, REDIS_DOWN_AFTER_SAVE)
            return redirect("fleet:revision_list")
        else:
            messages.success(
                request, f"Revision {created.number} published with the content of revision {revision.number}."
            )
            return redirect("fleet:revision_list")
    newest = newest_revision_number()
    context = {"section": "revisions", "revision": revision, "newest": newest, "error": error}
    return render(request, "fleet/rollback_confirm.html", context, status=400 if error else 200)


@login_required
def republish(request):
    require_platform_staff(request)
    form = RepublishForm(posted(request))
    if request.method == "POST" and form.is_valid():
        try:
            created = services.republish_all(actor=staff_actor(request.user), reason=form.cleaned_data["reason"])
        except ValidationError as error:
            form.add_error(None, error)
        except redis.RedisError:
            messages.warning(request, REDIS_DOWN_AFTER_SAVE)
            return redirect("fleet:revision_list")
        else:
            messages.success(request, f"Revision {created.number} published: every config, fresh from the database.")
            return redirect("fleet:revision_list")
    context = {"section": "republish", "form": form, "newest": newest_revision_number()}
    return render(request, "fleet/republish_confirm.html", context, status=400 if form.errors else 200)

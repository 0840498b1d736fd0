"""The org's content-capture settings page (owners and admins: org.manage)."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpResponseNotAllowed
from django.shortcuts import get_object_or_404, redirect, render

from orgs.access import get_org_access
from orgs.forms import apply_service_errors
from orgs.models import Team

from . import services
from .forms import CaptureSettingsForm, TeamCaptureForm
from .redact import BUILT_IN


@login_required
def capture_settings(request, org_slug):
    access = get_org_access(request, org_slug, "org.manage")
    org = access.org
    initial = {
        "enabled": org.capture_enabled,
        "max_bytes": org.capture_max_bytes,
        "retention_days": org.capture_retention_days,
        "redact_patterns": "\n".join(org.capture_redact_patterns),
    }
    form = CaptureSettingsForm(request.POST if request.method == "POST" else None, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            services.update_capture_settings(actor=access.actor, org=org, **data)
        except ValidationError as error:
            apply_service_errors(form, error)
        else:
            messages.success(request, "Capture settings saved. Gateways apply them within seconds.")
            return redirect("capture:settings", org_slug=org_slug)
    teams = Team.objects.filter(org=org).order_by("name")
    context = {
        "section": "settings",
        "form": form,
        "teams": teams,
        "built_in_count": len(BUILT_IN),
        "max_retention_days": services.max_retention_days(),
    }
    return render(request, "capture/settings.html", context, status=400 if form.errors else 200)


@login_required
def team_capture(request, org_slug, team_id):
    access = get_org_access(request, org_slug, "org.manage")
    team = get_object_or_404(Team, org=access.org, pk=team_id)
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    form = TeamCaptureForm(request.POST)
    if form.is_valid():
        services.set_team_capture(actor=access.actor, team=team, capture=form.cleaned_data["capture"])
        messages.success(request, f"Capture for {team.name} saved.")
    else:
        messages.error(request, "Choose as the org, on or off.")
    return redirect("capture:settings", org_slug=org_slug)

"""The playground: send one prompt to up to four models side by side, from the browser, through
the real gateway.

The page holds no key. When the person sends, static/js/playground.js asks `mint_key` for a key
of their own (keys.services.mint_playground_key: one of their teams, its models, 15 minutes, an
audit event) and keeps it in memory only; the browser then calls the gateway itself (CORS:
GATEWAY_CORS_ORIGINS), so the key's allow-list, limits, budgets, SLA policy and the usage ledger
apply as to any caller. Who may: whoever may issue a key for themselves in a team
(orgs/access.py), in those teams.
"""

from decimal import Decimal

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import JsonResponse
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers

from budgets.models import Price
from keys import services
from keys.views import issuable_teams
from orgs.access import get_org_access, require_key_rights
from orgs.models import Team
from orgs.views import post_only
from sla.models import Deployment, ModelRoute

from .forms import MAX_MODELS, PromptForm, TeamChoiceForm

KEY_MINUTES = 15


def callable_models(team: Team) -> list[str]:
    """The aliases a key of `team` may call: the team's list, or every route of the org."""
    routes = ModelRoute.objects.filter(org_id=team.org_id).order_by("alias")
    if team.allowed_models:
        routes = routes.filter(alias__in=team.allowed_models)
    return list(routes.values_list("alias", flat=True))


def first_team_calling(teams, alias: str) -> Team | None:
    """The first of `teams` whose keys may call `alias` (a "Try it" link names no team), else
    the first team."""
    teams = list(teams)
    if teams and ModelRoute.objects.filter(org_id=teams[0].org_id, alias=alias).exists():
        return next((team for team in teams if not team.allowed_models or alias in team.allowed_models), teams[0])
    return teams[0] if teams else None


def current_prices(team: Team, aliases: list[str]) -> dict[str, list[str]]:
    """Deployment id -> [input, output] USD per million tokens now, for the deployments behind
    `aliases`: the browser prices each answer by the deployment that served it (the gateway's
    x-gatehouse-deployment header), as the gateway does (fleet/compile.py deployment_value)."""
    deployments = Deployment.objects.filter(routes__org_id=team.org_id, routes__alias__in=aliases).distinct()
    prices: dict[str, tuple[Decimal, Decimal]] = {
        str(pk): (input_price, output_price)
        for pk, input_price, output_price in deployments.values_list(
            "pk", "input_price_per_mtok", "output_price_per_mtok"
        )
    }
    newest = (
        Price.objects.filter(deployment_id__in=list(prices), effective_from__lte=timezone.now())
        .order_by("deployment_id", "-effective_from")
        .distinct("deployment_id")
        .values_list("deployment_id", "input_per_mtok", "output_per_mtok")
    )
    for deployment_id, input_price, output_price in newest:
        prices[str(deployment_id)] = (input_price, output_price)
    return {pk: [str(input_price), str(output_price)] for pk, (input_price, output_price) in prices.items()}


def request_log_url(org_slug: str) -> str:
    """The request log's detail URL with REQUEST_ID to fill in; empty without the request log."""
    try:
        return reverse("requestlog:detail", kwargs={"org_slug": org_slug, "request_id": "REQUEST_ID"})
    except NoReverseMatch:
        return ""


@login_required
def playground(request, org_slug):
    access = get_org_access(request, org_slug, "org.read")
    require_key_rights(request, access, own_keys_suffice=True)
    teams = issuable_teams(request, access)
    asked = list(dict.fromkeys(request.GET.getlist("model")))
    chooser = TeamChoiceForm(request.GET if "team" in request.GET else None, teams=teams)
    if chooser.is_bound:
        team = chooser.cleaned_data["team"] if chooser.is_valid() else teams.first()
    else:
        team = first_team_calling(teams, asked[0]) if asked else teams.first()
        chooser = TeamChoiceForm(initial={"team": team.pk if team else None}, teams=teams)
    models = callable_models(team) if team else []
    chosen = [alias for alias in asked if alias in models][:MAX_MODELS]
    prompt = PromptForm(initial={"models": chosen or models[:1]}, models=models)
    gateway_url = settings.GATEHOUSE_PLAYGROUND_GATEWAY_URL.rstrip("/")
    context = {
        "section": "playground",
        "chooser": chooser,
        "prompt": prompt,
        "team": team,
        "models": models,
        "gateway_url": gateway_url,
        "max_models": MAX_MODELS,
        "key_minutes": KEY_MINUTES,
        "config": {
            "gatewayUrl": gateway_url,
            "mintUrl": reverse("playground:mint_key", kwargs={"org_slug": org_slug}),
            "team": str(team.pk) if team else "",
            "org": access.org.slug,
            "maxModels": MAX_MODELS,
            "prices": current_prices(team, models) if team else {},
            "requestUrl": request_log_url(org_slug),
        },
    }
    return render(request, "playground/playground.html", context, status=400 if chooser.errors else 200)


@login_required
def mint_key(request, org_slug):
    """POST team=<uuid>: a playground key of the person's own, as JSON, for playground.js only."""
    access = get_org_access(request, org_slug, "org.read")
    require_key_rights(request, access, own_keys_suffice=True)
    refused = post_only(request)
    if refused is not None:
        return refused
    form = TeamChoiceForm(request.POST, teams=issuable_teams(request, access))
    if not form.is_valid():
        return JsonResponse({"errors": {field: list(errors) for field, errors in form.errors.items()}}, status=400)
    team = form.cleaned_data["team"]
    models = callable_models(team)
    if not models:
        return JsonResponse({"errors": {"team": ["This team may call no model yet."]}}, status=400)
    try:
        key, plaintext = services.mint_playground_key(
            actor=access.actor, team=team, user=request.user, models=models, minutes=KEY_MINUTES
        )
    except ValidationError as error:
        errors = error.message_dict if hasattr(error, "error_dict") else {"team": error.messages}
        return JsonResponse({"errors": errors}, status=400)
    response = JsonResponse(
        {
            "key": plaintext,
            "name": key.name,
            "team": str(team.pk),
            "models": key.allowed_models,
            "expires_at": key.expires_at.isoformat(),
            "detail_url": reverse("keys:detail", kwargs={"org_slug": org_slug, "key_id": key.pk}),
        }
    )
    add_never_cache_headers(response)  # the plaintext must stay in this one response
    return response

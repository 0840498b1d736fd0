"""Portal pages of provider deployments, model routes and SLA policies.

Each page starts with its access check (routes.read to look at deployments and routes,
routes.manage to change them; sla.read and sla.manage for policies), then reads the form and
writes through sla/services.py or sla/policies.py with the access's actor, as orgs/views.py does.
"""

from decimal import Decimal

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db.models import Count, F, Prefetch, Q
from django.shortcuts import get_object_or_404, redirect, render

from keys.models import CallerKey
from orgs.access import get_org_access
from orgs.forms import apply_service_errors
from orgs.views import paginate, posted

from . import policies, services
from .explain import effective_policy, explain_route, strategy_for
from .forms import DeploymentForm, ExplainForm, PolicyForm, RouteForm, SearchForm
from .models import Deployment, ModelRoute, RouteTarget, SlaPolicy

PRICE_FIELDS = ("input_price_per_mtok", "output_price_per_mtok")


def price_text(price: Decimal) -> str:
    """A price as people write it: at least two decimals, no trailing zeros beyond them."""
    text = f"{price:.6f}".rstrip("0")
    whole, _, decimals = text.partition(".")
    return f"{int(whole):,}.{decimals.ljust(2, '0')}"


def _with_prices(deployment: Deployment) -> Deployment:
    deployment.input_price_text = price_text(deployment.input_price_per_mtok)
    deployment.output_price_text = price_text(deployment.output_price_per_mtok)
    return deployment


def _access_for(request, org_slug):
    """Reading needs routes.read; any write routes.manage."""
    return get_org_access(request, org_slug, "routes.manage" if request.method == "POST" else "routes.read")


# Deployments -------------------------------------------------------------------------------


@login_required
def deployment_list(request, org_slug):
    access = _access_for(request, org_slug)
    form = DeploymentForm(posted(request), org=access.org)
    if request.method == "POST" and form.is_valid():
        try:
            deployment = services.create_deployment(actor=access.actor, org=access.org, **form.cleaned_data)
        except ValidationError as error:
            apply_service_errors(form, error)
        else:
            messages.success(request, f"Deployment “{deployment.name}” created.")
            return redirect("sla:deployment_detail", org_slug=org_slug, deployment_id=deployment.pk)
    search = SearchForm(request.GET)
    deployments = (
        Deployment.objects.filter(org=access.org)
        .select_related("credential")
        .annotate(route_count=Count("targets"))
        .order_by("name", "id")
    )
    if search.is_valid() and search.cleaned_data["q"]:
        query = search.cleaned_data["q"]
        deployments = deployments.filter(Q(name__icontains=query) | Q(upstream_model__icontains=query))
    page = paginate(request, deployments)
    for deployment in page:
        _with_prices(deployment)
    can_manage = access.can("routes.manage")
    context = {
        "section": "deployments",
        "page": page,
        "search": search,
        "form": form,
        "can_manage": can_manage,
        "has_credentials": can_manage and form.fields["credential"].queryset.exists(),
    }
    return render(request, "sla/deployment_list.html", context, status=400 if form.errors else 200)


def _deployment(access, deployment_id) -> Deployment:
    return get_object_or_404(Deployment.objects.select_related("credential"), org=access.org, pk=deployment_id)


def _routes_using(deployment: Deployment) -> list[RouteTarget]:
    return list(RouteTarget.objects.filter(deployment=deployment).select_related("route").order_by("route__alias"))


@login_required
def deployment_detail(request, org_slug, deployment_id):
    access = _access_for(request, org_slug)
    deployment = _deployment(access, deployment_id)
    initial = {
        "name": deployment.name,
        "upstream_model": deployment.upstream_model,
        "region": deployment.region,
        **{field: getattr(deployment, field) for field in PRICE_FIELDS},
    }
    form = DeploymentForm(posted(request), org=access.org, with_credential=False, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            services.update_deployment(actor=access.actor, deployment=deployment, **form.cleaned_data)
        except ValidationError as error:
            apply_service_errors(form, error)
        else:
            messages.success(request, "Deployment saved. Gateways pick the change up within seconds.")
            return redirect("sla:deployment_detail", org_slug=org_slug, deployment_id=deployment.pk)
    context = {
        "section": "deployments",
        "deployment": _with_prices(deployment),
        "targets": _routes_using(deployment),
        "form": form,
        "can_manage": access.can("routes.manage"),
    }
    return render(request, "sla/deployment_detail.html", context, status=400 if form.errors else 200)


@login_required
def deployment_delete(request, org_slug, deployment_id):
    access = get_org_access(request, org_slug, "routes.manage")
    deployment = _deployment(access, deployment_id)
    error = None
    if request.method == "POST":
        try:
            services.delete_deployment(actor=access.actor, deployment=deployment)
        except ValidationError as refused:
            error = " ".join(refused.messages)
        else:
            messages.success(request, f"Deployment “{deployment.name}” deleted.")
            return redirect("sla:deployment_list", org_slug=org_slug)
    context = {
        "section": "deployments",
        "deployment": deployment,
        "targets": _routes_using(deployment),
        "error": error,
    }
    return render(request, "sla/deployment_confirm_delete.html", context, status=400 if error else 200)


# Routes ------------------------------------------------------------------------------------


def _targets_in_order():
    return Prefetch("targets", queryset=RouteTarget.objects.select_related("deployment").order_by("priority"))


def _route_service_errors(form: RouteForm, error: ValidationError) -> None:
    apply_service_errors(form, error, aliases={"deployments": form.slot_names[0], "weights": form.weight_names[0]})


@login_required
def route_list(request, org_slug):
    access = _access_for(request, org_slug)
    form = RouteForm(posted(request), org=access.org)
    if request.method == "POST" and form.is_valid():
        try:
            route = services.create_route(
                actor=access.actor,
                org=access.org,
                alias=form.cleaned_data["alias"],
                description=form.cleaned_data["description"],
                deployments=form.cleaned_data["deployments"],
                weights=form.cleaned_data["weights"],
            )
        except ValidationError as error:
            _route_service_errors(form, error)
        else:
            messages.success(request, f"Route “{route.alias}” created.")
            return redirect("sla:route_detail", org_slug=org_slug, route_id=route.pk)
    search = SearchForm(request.GET)
    routes = ModelRoute.objects.filter(org=access.org).prefetch_related(_targets_in_order()).order_by("alias", "id")
    if search.is_valid() and search.cleaned_data["q"]:
        query = search.cleaned_data["q"]
        routes = routes.filter(Q(alias__icontains=query) | Q(description__icontains=query))
    context = {
        "section": "routes",
        "page": paginate(request, routes),
        "search": search,
        "form": form,
        "can_manage": access.can("routes.manage"),
    }
    return render(request, "sla/route_list.html", context, status=400 if form.errors else 200)


def _route(access, route_id) -> ModelRoute:
    return get_object_or_404(ModelRoute.objects.prefetch_related(_targets_in_order()), org=access.org, pk=route_id)


@login_required
def route_detail(request, org_slug, route_id):
    access = _access_for(request, org_slug)
    route = _route(access, route_id)
    targets = list(route.targets.all())
    form = RouteForm(
        posted(request),
        org=access.org,
        with_alias=False,
        slots=len(targets),
        initial=RouteForm.initial_for(route, targets),
    )
    if request.method == "POST" and form.is_valid():
        try:
            services.update_route(
                actor=access.actor,
                route=route,
                deployments=form.cleaned_data["deployments"],
                description=form.cleaned_data["description"],
                weights=form.cleaned_data["weights"],
            )
        except ValidationError as error:
            _route_service_errors(form, error)
        else:
            messages.success(request, "Route saved. Gateways pick the change up within seconds.")
            return redirect("sla:route_detail", org_slug=org_slug, route_id=route.pk)
    for target in targets:
        _with_prices(target.deployment)
    context = {
        "section": "routes",
        "route": route,
        "targets": targets,
        "form": form,
        "explain_form": ExplainForm(),
        "can_manage": access.can("routes.manage"),
    }
    return render(request, "sla/route_detail.html", context, status=400 if form.errors else 200)


@login_required
def route_delete(request, org_slug, route_id):
    access = get_org_access(request, org_slug, "routes.manage")
    route = _route(access, route_id)
    error = None
    if request.method == "POST":
        try:
            services.delete_route(actor=access.actor, route=route)
        except ValidationError as refused:
            error = " ".join(refused.messages)
        else:
            messages.success(request, f"Route “{route.alias}” deleted. Callers asking for it are now refused.")
            return redirect("sla:route_list", org_slug=org_slug)
    context = {"section": "routes", "route": route, "targets": list(route.targets.all()), "error": error}
    return render(request, "sla/route_confirm_delete.html", context, status=400 if error else 200)


@login_required
def route_explain(request, org_slug, route_id):
    """Which deployments a request with ?key= may reach for this route, in which order, and why."""
    access = get_org_access(request, org_slug, "routes.read")
    route = _route(access, route_id)
    form = ExplainForm(request.GET if "key" in request.GET else None)
    rows, policy, key = None, None, None
    if form.is_valid():
        key = CallerKey.objects.filter(org=access.org, pk=form.cleaned_data["key"]).select_related("team").first()
        if key is None:
            form.add_error("key", "No key of this organization has this ID.")
        else:
            rows = explain_route(access.org, key, route.alias)
            policy = effective_policy(access.org, key)
    context = {
        "section": "routes",
        "route": route,
        "form": form,
        "key": key,
        "rows": rows,
        "policy": policy,
        "strategy": SlaPolicy.Strategy(strategy_for(policy, route.alias)).label if key else None,
    }
    return render(request, "sla/route_explain.html", context, status=400 if form.errors else 200)


# SLA policies ------------------------------------------------------------------------------


def _policy_access(request, org_slug):
    """Reading needs sla.read; any write sla.manage."""
    return get_org_access(request, org_slug, "sla.manage" if request.method == "POST" else "sla.read")


def _policy_service_errors(form: PolicyForm, error: ValidationError) -> None:
    apply_service_errors(form, error)
    if hasattr(error, "error_dict") and "route_strategies" in error.error_dict:
        form.add_error(None, error.error_dict["route_strategies"])


@login_required
def policy_list(request, org_slug):
    access = _policy_access(request, org_slug)
    initial = PolicyForm.initial_for(None, policies.default_settings())
    form = PolicyForm(posted(request), org=access.org, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            policy = policies.create_policy(actor=access.actor, org=access.org, **form.service_arguments())
        except ValidationError as error:
            _policy_service_errors(form, error)
        else:
            messages.success(request, f"Policy “{policy.name}” created. Gateways pick it up within seconds.")
            return redirect("sla:policy_detail", org_slug=org_slug, policy_id=policy.pk)
    rows = SlaPolicy.objects.filter(org=access.org).select_related("team")
    context = {
        "section": "policies",
        "page": paginate(request, rows.order_by(F("team__name").asc(nulls_first=True), "name", "id")),
        "form": form,
        "can_manage": access.can("sla.manage"),
    }
    return render(request, "sla/policy_list.html", context, status=400 if form.errors else 200)


def _policy(access, policy_id) -> SlaPolicy:
    return get_object_or_404(SlaPolicy.objects.select_related("team", "org"), org=access.org, pk=policy_id)


@login_required
def policy_detail(request, org_slug, policy_id):
    access = _policy_access(request, org_slug)
    policy = _policy(access, policy_id)
    aliases = list(ModelRoute.objects.filter(org=access.org).order_by("alias").values_list("alias", flat=True))
    initial = PolicyForm.initial_for(policy, policies.policy_settings(policy), aliases)
    form = PolicyForm(posted(request), org=access.org, with_team=False, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            policies.update_policy(actor=access.actor, policy=policy, **form.service_arguments())
        except ValidationError as error:
            _policy_service_errors(form, error)
        else:
            messages.success(request, "Policy saved. Gateways pick the change up within seconds.")
            return redirect("sla:policy_detail", org_slug=org_slug, policy_id=policy.pk)
    context = {
        "section": "policies",
        "policy": policy,
        "form": form,
        "can_manage": access.can("sla.manage"),
    }
    return render(request, "sla/policy_detail.html", context, status=400 if form.errors else 200)


@login_required
def policy_delete(request, org_slug, policy_id):
    access = get_org_access(request, org_slug, "sla.manage")
    policy = _policy(access, policy_id)
    error = None
    if request.method == "POST":
        try:
            policies.delete_policy(actor=access.actor, policy=policy)
        except ValidationError as refused:
            error = " ".join(refused.messages)
        else:
            messages.success(request, f"Policy “{policy.name}” deleted.")
            return redirect("sla:policy_list", org_slug=org_slug)
    context = {"section": "policies", "policy": policy, "error": error}
    return render(request, "sla/policy_confirm_delete.html", context, status=400 if error else 200)

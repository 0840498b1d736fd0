"""Forms of the deployment and route pages. They check shape; the rules live in sla/services.py."""

from decimal import Decimal

from django import forms

from keys.models import Provider, ProviderCredential
from orgs.forms import UuidChoiceField
from orgs.models import Team
from orgs.validators import validate_display_name

from .models import REGIONS, Deployment, ModelRoute, SlaPolicy
from .services import MAX_PRICE_PER_MTOK, MAX_TARGETS, MAX_WEIGHT

ROUTE_SLOTS = 5  # choice fields a route form offers; more only when a route already has more
ORDINALS = ["1st", "2nd", "3rd", "4th", "5th", "6th", "7th", "8th", "9th", "10th"]
PRICE_QUANTUM = Decimal("0.000001")
PRICE_MESSAGE = f"Use a price from 0 to {MAX_PRICE_PER_MTOK:,} dollars per million tokens."


def price_field(label: str, example: str) -> forms.DecimalField:
    # No max_digits: the bounds and 6 decimal places fit the column, and one message is clearer.
    return forms.DecimalField(
        label=label,
        min_value=0,
        max_value=MAX_PRICE_PER_MTOK,
        decimal_places=6,
        help_text=f"USD per million tokens, e.g. {example}.",
        error_messages={
            "invalid": "Enter a number of dollars, e.g. 2.50.",
            "min_value": PRICE_MESSAGE,
            "max_value": PRICE_MESSAGE,
            "max_decimal_places": "Use at most 6 decimal places.",
        },
    )


class DeploymentForm(forms.Form):
    """Create a deployment, or (with `credential` left out) edit one: a deployment's credential
    cannot change."""

    name = forms.CharField(max_length=100, validators=[validate_display_name])
    credential = UuidChoiceField(
        queryset=ProviderCredential.objects.none(),
        label="Provider credential",
        empty_label="Choose a credential",
        error_messages={"invalid_choice": "Choose one of the organization's provider credentials."},
    )
    upstream_model = forms.CharField(
        label="Upstream model",
        max_length=200,
        validators=[validate_display_name],
        help_text="The provider's model name, e.g. gpt-4o or claude-sonnet-4-5.",
    )
    input_price_per_mtok = price_field("Input price", "2.50")
    output_price_per_mtok = price_field("Output price", "10.00")
    region = forms.ChoiceField(
        choices=REGIONS,
        initial="global",
        required=False,
        help_text="Where the provider serves this deployment; SLA policies may allow only some regions.",
        error_messages={"invalid_choice": "Choose one of the listed regions."},
    )

    def __init__(self, *args, org, with_credential: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if with_credential:
            credential = self.fields["credential"]
            credential.queryset = ProviderCredential.objects.filter(org=org).order_by("name")
            credential.label_from_instance = lambda item: f"{item.name} ({item.get_provider_display()})"
        else:
            del self.fields["credential"]

    # Stored prices have six decimal places: "2.5" and "2.500000" are the same price, and the
    # audit diff compares their text, so an unchanged price must not read as a change.
    def clean_input_price_per_mtok(self) -> Decimal:
        return self.cleaned_data["input_price_per_mtok"].quantize(PRICE_QUANTUM)

    def clean_output_price_per_mtok(self) -> Decimal:
        return self.cleaned_data["output_price_per_mtok"].quantize(PRICE_QUANTUM)

    def clean_region(self) -> str | None:
        # Left out: "global" for a new deployment, unchanged for an edited one.
        return self.cleaned_data["region"] or None


class RouteForm(forms.Form):
    """A route's alias (when creating), description and deployments in priority order, as
    "1st choice", "2nd choice", ... selects. Blank choices are skipped."""

    alias = forms.CharField(
        max_length=100,
        help_text="The model name callers send, e.g. gpt-4o. No spaces; it cannot change later.",
    )
    description = forms.CharField(max_length=300, required=False, validators=[validate_display_name])

    def __init__(self, *args, org, with_alias: bool = True, slots: int = ROUTE_SLOTS, **kwargs):
        super().__init__(*args, **kwargs)
        if not with_alias:
            del self.fields["alias"]
        # One query for every select, rather than one per select.
        self.deployments = {
            str(deployment.pk): deployment
            for deployment in Deployment.objects.filter(org=org).only("id", "name", "upstream_model").order_by("name")
        }
        choices = [("", "None")] + [(pk, f"{d.name} ({d.upstream_model})") for pk, d in self.deployments.items()]
        self.slot_names = []
        self.weight_names = []
        for index in range(min(max(slots, ROUTE_SLOTS), MAX_TARGETS)):
            name = f"choice_{index + 1}"
            self.slot_names.append(name)
            self.fields[name] = forms.ChoiceField(
                label=f"{ORDINALS[index]} choice",
                choices=choices,
                required=index == 0,
                help_text="Tried first." if index == 0 else "Tried when the choices above fail.",
                error_messages={
                    "required": "Choose the deployment tried first.",
                    "invalid_choice": "Choose one of the organization's deployments.",
                },
            )
            weight = f"weight_{index + 1}"
            self.weight_names.append(weight)
            self.fields[weight] = forms.IntegerField(
                label=f"Weight of the {ORDINALS[index]} choice",
                min_value=0,
                max_value=MAX_WEIGHT,
                initial=1,
                required=False,
                help_text="Share of traffic under the weighted strategy.",
                error_messages={
                    "invalid": "Enter a whole number.",
                    "min_value": f"Use a weight from 0 to {MAX_WEIGHT}.",
                    "max_value": f"Use a weight from 0 to {MAX_WEIGHT}.",
                },
            )

    @property
    def slot_fields(self):
        return [self[name] for name in self.slot_names]

    @property
    def slot_pairs(self):
        """(choice, weight) bound fields, one pair per slot."""
        return [(self[c], self[w]) for c, w in zip(self.slot_names, self.weight_names, strict=True)]

    @property
    def detail_fields(self):
        return [self[name] for name in ("alias", "description") if name in self.fields]

    def clean(self):
        cleaned = super().clean()
        chosen: list[Deployment] = []
        weights: list[int] = []
        seen: dict[str, str] = {}
        for name, weight_name in zip(self.slot_names, self.weight_names, strict=True):
            value = cleaned.get(name)
            if not value:
                continue
            if value in seen:
                self.add_error(name, f"Already the {self.fields[seen[value]].label.lower()}.")
                continue
            seen[value] = name
            chosen.append(self.deployments[value])
            weight = cleaned.get(weight_name)
            weights.append(1 if weight is None else weight)
        cleaned["deployments"] = chosen
        cleaned["weights"] = weights
        if chosen and not self.errors and sum(weights) == 0:
            self.add_error(
                self.weight_names[0], "The weights sum to zero: give at least one deployment a weight above 0."
            )
        return cleaned

    @classmethod
    def initial_for(cls, route, targets) -> dict:
        initial = {"description": route.description}
        for index, target in enumerate(targets):
            initial[f"choice_{index + 1}"] = str(target.deployment_id)
            initial[f"weight_{index + 1}"] = target.weight
        return initial


class SearchForm(forms.Form):
    q = forms.CharField(label="Search", max_length=100, required=False)


# SLA policies --------------------------------------------------------------------------------

MAX_LINES = 4000  # characters of a one-per-line field


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def whole_number(label: str, help_text: str) -> forms.IntegerField:
    # Bounds are the service's, with its messages; the form only reads a number.
    return forms.IntegerField(label=label, help_text=help_text, error_messages={"invalid": "Enter a whole number."})


class PolicyForm(forms.Form):
    """Every setting of an SLA policy. The team is chosen when creating and cannot change later.
    A route-strategy select appears per route of the org; "" follows the policy's strategy."""

    name = forms.CharField(max_length=100, validators=[validate_display_name])
    team = UuidChoiceField(
        queryset=Team.objects.none(),
        required=False,
        label="Applies to",
        empty_label="The whole organization (default policy)",
        help_text="A team's policy overrides the default for the team's keys.",
        error_messages={"invalid_choice": "Choose one of the organization's teams."},
    )
    strategy = forms.ChoiceField(
        label="Routing strategy", choices=SlaPolicy.Strategy.choices, initial=SlaPolicy.Strategy.PRIORITY
    )
    connect_timeout_ms = whole_number("Connect timeout (ms)", "100 to 60000.")
    first_token_timeout_ms = whole_number(
        "Time to first token timeout (ms)", "100 to 600000; at least the connect timeout."
    )
    total_timeout_ms = whole_number("Total timeout (ms)", "1000 to 3600000; at least the time to first token.")
    max_retries = whole_number("Retries", "0 to 5 further attempts after the first.")
    retry_on = forms.MultipleChoiceField(
        label="Retry on",
        required=False,
        choices=[("timeout", "Timeouts"), ("429", "429 Too Many Requests"), ("5xx", "5xx server errors")],
        widget=forms.CheckboxSelectMultiple,
    )
    backoff_base_ms = whole_number("First backoff (ms)", "10 to 10000; doubles each retry, with jitter.")
    backoff_max_ms = whole_number("Longest backoff (ms)", "Up to 60000; a Retry-After header is honoured.")
    breaker_failure_rate = whole_number("Breaker failure rate (%)", "1 to 100: opens the circuit of a deployment.")
    breaker_window_seconds = whole_number("Breaker window (s)", "10 to 3600: the failure rate is measured over it.")
    breaker_min_requests = whole_number("Breaker minimum requests", "1 to 1000 in the window before it may open.")
    breaker_cooldown_seconds = whole_number("Breaker cool-down (s)", "1 to 3600 before trial requests.")
    allowed_providers = forms.MultipleChoiceField(
        label="Allowed providers",
        required=False,
        choices=Provider.choices,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every provider.",
    )
    allowed_regions = forms.MultipleChoiceField(
        label="Allowed regions",
        required=False,
        choices=REGIONS,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every region.",
    )
    slo_availability = forms.CharField(label="Availability target (%)", max_length=20, help_text="50 to 99.999.")
    slo_p95_latency_ms = whole_number("p95 latency target (ms)", "1 to 600000.")
    slo_p95_ttft_ms = whole_number("p95 time to first token target (ms)", "1 to 600000.")
    slo_window_days = whole_number("SLO window (days)", "1 to 90.")
    alert_emails = forms.CharField(
        label="Alert emails",
        required=False,
        max_length=MAX_LINES,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="One address per line; told when the burn rate says the SLO will be missed.",
    )
    alert_webhooks = forms.CharField(
        label="Alert webhooks",
        required=False,
        max_length=MAX_LINES,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="One https URL per line.",
    )

    GROUPS = (
        ("Policy", ("name", "team", "strategy")),
        ("Timeouts", ("connect_timeout_ms", "first_token_timeout_ms", "total_timeout_ms")),
        ("Retries", ("max_retries", "retry_on", "backoff_base_ms", "backoff_max_ms")),
        (
            "Circuit breaker",
            ("breaker_failure_rate", "breaker_window_seconds", "breaker_min_requests", "breaker_cooldown_seconds"),
        ),
        ("Where requests may go", ("allowed_providers", "allowed_regions")),
        ("SLO targets", ("slo_availability", "slo_p95_latency_ms", "slo_p95_ttft_ms", "slo_window_days")),
        ("Alerts", ("alert_emails", "alert_webhooks")),
    )

    def __init__(self, *args, org, with_team: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if with_team:
            self.fields["team"].queryset = Team.objects.filter(org=org).order_by("name")
        else:
            del self.fields["team"]
        self.route_aliases = list(ModelRoute.objects.filter(org=org).order_by("alias").values_list("alias", flat=True))
        self.route_strategy_names = []
        for index, alias in enumerate(self.route_aliases):
            name = f"route_strategy_{index + 1}"
            self.route_strategy_names.append(name)
            self.fields[name] = forms.ChoiceField(
                label=f"Strategy for {alias}",
                required=False,
                choices=[("", "The policy's strategy"), *SlaPolicy.Strategy.choices],
            )

    @property
    def groups(self):
        groups = [(title, [self[name] for name in names if name in self.fields]) for title, names in self.GROUPS]
        if self.route_strategy_names:
            groups.insert(1, ("Strategy per route", [self[name] for name in self.route_strategy_names]))
        return groups

    @classmethod
    def initial_for(cls, policy: SlaPolicy | None, settings: dict, aliases: list[str] | None = None) -> dict:
        initial = {key: value for key, value in settings.items() if key not in {"route_strategies"}}
        initial["alert_emails"] = "\n".join(settings["alert_emails"])
        initial["alert_webhooks"] = "\n".join(settings["alert_webhooks"])
        initial["slo_availability"] = f"{settings['slo_availability']:f}".rstrip("0").rstrip(".")
        if policy is not None:
            initial["name"] = policy.name
        for index, alias in enumerate(aliases or []):
            initial[f"route_strategy_{index + 1}"] = settings["route_strategies"].get(alias, "")
        return initial

    def service_arguments(self) -> dict:
        data = self.cleaned_data
        arguments = {
            name: data[name]
            for _title, names in self.GROUPS
            for name in names
            if name in self.fields and name not in {"alert_emails", "alert_webhooks"}
        }
        arguments["alert_emails"] = lines(data["alert_emails"])
        arguments["alert_webhooks"] = lines(data["alert_webhooks"])
        arguments["route_strategies"] = {
            alias: data[name]
            for alias, name in zip(self.route_aliases, self.route_strategy_names, strict=True)
            if data.get(name)
        }
        return arguments


class ExplainForm(forms.Form):
    key = forms.UUIDField(
        label="Caller key ID",
        help_text="The ID shown on the key's page. The key's team decides which policy applies.",
        error_messages={"invalid": "Enter a key ID, e.g. 6f1c1f4e-0000-4000-8000-000000000000."},
    )

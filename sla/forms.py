"""Forms of the deployment and route pages. They check shape; the rules live in sla/services.py."""

from decimal import Decimal

from django import forms

from keys.models import ProviderCredential
from orgs.forms import UuidChoiceField
from orgs.validators import validate_display_name

from .models import Deployment
from .services import MAX_PRICE_PER_MTOK, MAX_TARGETS

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

    @property
    def slot_fields(self):
        return [self[name] for name in self.slot_names]

    @property
    def detail_fields(self):
        return [self[name] for name in ("alias", "description") if name in self.fields]

    def clean(self):
        cleaned = super().clean()
        chosen: list[Deployment] = []
        seen: dict[str, str] = {}
        for name in self.slot_names:
            value = cleaned.get(name)
            if not value:
                continue
            if value in seen:
                self.add_error(name, f"Already the {self.fields[seen[value]].label.lower()}.")
                continue
            seen[value] = name
            chosen.append(self.deployments[value])
        cleaned["deployments"] = chosen
        return cleaned

    @classmethod
    def initial_for(cls, route, targets) -> dict:
        initial = {"description": route.description}
        for index, target in enumerate(targets):
            initial[f"choice_{index + 1}"] = str(target.deployment_id)
        return initial


class SearchForm(forms.Form):
    q = forms.CharField(label="Search", max_length=100, required=False)

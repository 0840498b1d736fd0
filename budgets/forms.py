"""Forms of the usage, budget, price and chargeback pages. Filters are read from the query
string so that a view can be bookmarked."""

from datetime import date
from decimal import Decimal

from django import forms
from django.core.exceptions import ValidationError
from django.utils import timezone

from keys.models import CallerKey
from orgs.forms import UuidChoiceField
from orgs.models import Team
from orgs.validators import validate_display_name
from sla.models import Deployment

from . import services
from .models import Budget

DAY_CHOICES = [(1, "Last 24 hours"), (7, "Last 7 days"), (30, "Last 30 days")]
DEFAULT_DAYS = 7


class UsageFilterForm(forms.Form):
    team = UuidChoiceField(
        queryset=Team.objects.none(),
        required=False,
        empty_label="All teams",
        error_messages={"invalid_choice": "Choose one of the teams listed."},
    )
    model = forms.CharField(label="Model", max_length=200, required=False, widget=forms.Select)
    days = forms.TypedChoiceField(
        label="Period",
        choices=DAY_CHOICES,
        coerce=int,
        required=False,
        empty_value=DEFAULT_DAYS,
        error_messages={"invalid_choice": "Choose 1, 7 or 30 days."},
    )
    # Set by following a key's row in the table; the page shows which key and how to clear it.
    key = forms.UUIDField(required=False, widget=forms.HiddenInput, error_messages={"invalid": "No such key."})

    def __init__(self, *args, teams, all_teams: bool, models: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        team = self.fields["team"]
        team.queryset = teams
        if not all_teams:
            # Without spend.read only one's own teams can be looked at, one at a time.
            team.required = True
            team.empty_label = None
        current = self.data.get("model") if self.is_bound else None
        shown = sorted({*models, current} - {None, ""})
        self.fields["model"].widget.choices = [("", "All models"), *((alias, alias) for alias in shown)]

    def value(self, name: str, default=None):
        """The cleaned value of a filter, or `default` when it is missing or invalid."""
        if not hasattr(self, "cleaned_data"):
            self.is_valid()
        value = self.cleaned_data.get(name)
        return default if value in (None, "") else value


# Budgets, prices and chargeback -------------------------------------------------------------
# Amounts, prices and thresholds are checked by the same functions the services use, so the
# form shows every problem at once and the service still refuses what a form let through.

# List prices of well-known models in USD per million tokens (input, output), as suggestions:
# providers change them, so finance confirms against the provider before entering one.
SUGGESTED_PRICES = {
    "gpt-4o": (Decimal("2.50"), Decimal("10.00")),
    "gpt-4o-mini": (Decimal("0.15"), Decimal("0.60")),
    "claude-sonnet": (Decimal("3.00"), Decimal("15.00")),
    "claude-haiku": (Decimal("0.80"), Decimal("4.00")),
    "text-embedding-3-small": (Decimal("0.02"), Decimal("0")),
}

DATETIME_INPUT_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"]
MAX_LINES = 4000  # characters of a one-per-line field; far more than MAX_TARGETS lines


def _field_messages(error: ValidationError, field: str) -> list[str]:
    return error.message_dict.get(field, error.messages) if hasattr(error, "error_dict") else error.messages


def _checked(check, value, field: str):
    """Run a service's check on one value and turn its error into this field's error."""
    try:
        return check(value, field)
    except ValidationError as error:
        raise ValidationError(_field_messages(error, field)) from None


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


class BudgetSettingsForm(forms.Form):
    """What can change on a budget once it exists: not its scope, target or period."""

    name = forms.CharField(max_length=100, validators=[validate_display_name])
    amount = forms.CharField(label="Amount (USD)", max_length=40, help_text="e.g. 500 or 1250.50")
    enforcement = forms.ChoiceField(
        label="When spend reaches the amount",
        choices=[("hard", "Refuse requests (hard cap)"), ("soft", "Only alert (soft)")],
        initial="hard",
        widget=forms.RadioSelect,
    )
    thresholds = forms.CharField(
        label="Alert thresholds (%)",
        max_length=100,
        initial="50, 80, 100",
        help_text="Comma-separated percentages from 1 to 100, low to high, e.g. 50, 80, 100.",
    )
    emails = forms.CharField(
        label="Alert emails",
        required=False,
        max_length=MAX_LINES,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="One address per line.",
    )
    webhooks = forms.CharField(
        label="Alert webhooks",
        required=False,
        max_length=MAX_LINES,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="One https URL per line. Each receives a JSON body signed with HMAC-SHA256.",
    )

    @classmethod
    def initial_for(cls, budget) -> dict:
        return {
            "name": budget.name,
            "amount": f"{budget.amount:f}",
            "enforcement": "hard" if budget.hard else "soft",
            "thresholds": ", ".join(str(t) for t in budget.thresholds),
            "emails": "\n".join(budget.emails),
            "webhooks": "\n".join(budget.webhooks),
        }

    def clean_amount(self):
        return _checked(services.clean_amount, self.cleaned_data["amount"], "amount")

    def clean_thresholds(self):
        parts = [part.strip().removesuffix("%").strip() for part in self.cleaned_data["thresholds"].split(",")]
        return _checked(lambda values, _field: services.clean_thresholds(values), parts, "thresholds")

    def clean_emails(self):
        return lines(self.cleaned_data["emails"])

    def clean_webhooks(self):
        return lines(self.cleaned_data["webhooks"])

    def service_arguments(self) -> dict:
        data = self.cleaned_data
        return {
            "name": data["name"],
            "amount": data["amount"],
            "hard": data["enforcement"] == "hard",
            "thresholds": data["thresholds"],
            "emails": data["emails"],
            "webhooks": data["webhooks"],
        }


class KeyChoiceField(UuidChoiceField):
    def label_from_instance(self, obj) -> str:
        return f"{obj.name} ({obj.prefix}…) · {obj.team.name}"


class BudgetForm(BudgetSettingsForm):
    scope = forms.ChoiceField(label="Applies to", choices=Budget.Scope.choices, initial=Budget.Scope.TEAM)
    team = UuidChoiceField(
        queryset=Team.objects.none(),
        required=False,
        empty_label="Choose a team",
        help_text="For a team budget.",
        error_messages={"invalid_choice": "Choose one of the teams listed."},
    )
    key = KeyChoiceField(
        queryset=CallerKey.objects.none(),
        required=False,
        label="Caller key",
        empty_label="Choose a key",
        help_text="For a key budget: the organization's active keys.",
        error_messages={"invalid_choice": "Choose one of the active keys listed."},
    )
    period = forms.ChoiceField(
        choices=Budget.Period.choices,
        initial=Budget.Period.MONTHLY,
        help_text="Calendar periods in UTC.",
        error_messages={"invalid_choice": "Choose daily, weekly, monthly or total."},
    )

    field_order = ["name", "scope", "team", "key", "amount", "period", "enforcement", "thresholds"]

    def __init__(self, *args, org, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["team"].queryset = Team.objects.filter(org=org).order_by("name")
        self.fields["key"].queryset = (
            CallerKey.objects.filter(org=org).active().select_related("team").order_by("name", "prefix")
        )

    def clean(self):
        data = super().clean()
        scope = data.get("scope")
        if scope == Budget.Scope.TEAM and not data.get("team") and "team" not in self.errors:
            self.add_error("team", "Choose the team this budget applies to.")
        if scope == Budget.Scope.KEY and not data.get("key") and "key" not in self.errors:
            self.add_error("key", "Choose the key this budget applies to.")
        return data

    def service_arguments(self) -> dict:
        data = self.cleaned_data
        scope = data["scope"]
        return super().service_arguments() | {
            "scope": scope,
            "period": data["period"],
            "team": data["team"] if scope == Budget.Scope.TEAM else None,
            "key": data["key"] if scope == Budget.Scope.KEY else None,
        }


class PriceForm(forms.Form):
    deployment = UuidChoiceField(
        queryset=Deployment.objects.none(),
        empty_label="Choose a deployment",
        error_messages={"invalid_choice": "Choose one of the deployments listed."},
    )
    input_per_mtok = forms.CharField(label="Input, USD per million tokens", max_length=40)
    output_per_mtok = forms.CharField(label="Output, USD per million tokens", max_length=40)
    cached_input_per_mtok = forms.CharField(label="Cached input, USD per million tokens", max_length=40, initial="0")
    effective_from = forms.DateTimeField(
        label="Effective from (UTC)",
        input_formats=DATETIME_INPUT_FORMATS,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="Requests from this moment on are charged at the new price; earlier spend keeps its price.",
    )

    def __init__(self, *args, org, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["deployment"].queryset = Deployment.objects.filter(org=org).order_by("name")
        if not self.is_bound:
            self.initial.setdefault("effective_from", timezone.now().replace(second=0, microsecond=0))

    def clean_input_per_mtok(self):
        return _checked(services.clean_price, self.cleaned_data["input_per_mtok"], "input_per_mtok")

    def clean_output_per_mtok(self):
        return _checked(services.clean_price, self.cleaned_data["output_per_mtok"], "output_per_mtok")

    def clean_cached_input_per_mtok(self):
        return _checked(services.clean_price, self.cleaned_data["cached_input_per_mtok"], "cached_input_per_mtok")


class CostCenterForm(forms.Form):
    cost_center = forms.CharField(
        label="Cost center", max_length=64, required=False, help_text="Empty: reported under “(none)”."
    )
    # The report month to return to after saving.
    month = forms.RegexField(regex=r"^\d{4}-\d{2}$", required=False, widget=forms.HiddenInput)


class MonthForm(forms.Form):
    month = forms.RegexField(
        label="Month",
        regex=r"^\d{4}-(0[1-9]|1[0-2])$",
        required=False,
        max_length=7,
        widget=forms.TextInput(attrs={"type": "month", "placeholder": "YYYY-MM"}),
        error_messages={"invalid": "Give a month as YYYY-MM, e.g. 2025-03."},
    )

    def clean_month(self) -> date | None:
        value = self.cleaned_data["month"]
        if not value:
            return None
        year, month = (int(part) for part in value.split("-"))
        if not 2000 <= year <= 2100:
            raise ValidationError("Choose a month between 2000 and 2100.")
        return date(year, month, 1)

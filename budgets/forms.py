"""Forms of the usage page: its filters, read from the query string so a view can be bookmarked."""

from django import forms

from orgs.forms import UuidChoiceField
from orgs.models import Team

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

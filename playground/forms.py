"""The playground's inputs. The team is chosen on the server (it decides the models on offer and
the key minted for it); the prompt is sent from the browser, so its form only renders the fields."""

from django import forms

from orgs.forms import UuidChoiceField
from orgs.models import Team

MAX_MODELS = 4
MAX_OUTPUT_TOKENS = 32_768


class TeamChoiceForm(forms.Form):
    team = UuidChoiceField(
        queryset=Team.objects.none(),
        label="Team",
        empty_label=None,
        help_text="Calls are made with a key of this team: its models, limits and budgets apply.",
        error_messages={"invalid_choice": "Choose one of the teams you may use the playground in."},
    )

    def __init__(self, *args, teams, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["team"].queryset = teams


class PromptForm(forms.Form):
    models = forms.MultipleChoiceField(
        label="Models",
        widget=forms.CheckboxSelectMultiple,
        help_text=f"Up to {MAX_MODELS}; each answers in its own column.",
    )
    system = forms.CharField(
        label="System message",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
    )
    user = forms.CharField(label="User message", widget=forms.Textarea(attrs={"rows": 5}))
    temperature = forms.DecimalField(
        label="Temperature",
        min_value=0,
        max_value=2,
        decimal_places=2,
        initial="1",
        widget=forms.NumberInput(attrs={"step": "0.1", "inputmode": "decimal"}),
        help_text="0 to 2; lower is more predictable.",
    )
    max_tokens = forms.IntegerField(
        label="Max tokens",
        min_value=1,
        max_value=MAX_OUTPUT_TOKENS,
        initial=512,
        widget=forms.NumberInput(attrs={"inputmode": "numeric"}),
        help_text="The longest answer each model may give; a budget reserves this worst case.",
    )

    def __init__(self, *args, models: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["models"].choices = [(alias, alias) for alias in models]

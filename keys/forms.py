"""Portal forms for caller keys and provider credentials. They check shape (lengths, characters,
choices); the rules (team ceilings, SSRF, who may own a key) live in services and orgs/access.py.

No error message here repeats what was typed: a secret pasted into the wrong field must not come
back on the page (Django's default "X is not one of the available choices" would echo it)."""

from datetime import timedelta

from django import forms
from django.core.exceptions import ValidationError
from django.utils import timezone

from orgs.forms import UuidChoiceField
from orgs.models import Team, User
from orgs.validators import validate_display_name

from .models import Provider, ProviderCredential
from .services import (
    CLOUD_FIELDS,
    CONNECTION_FIELDS,
    CONNECTION_NAMES,
    MAX_GRACE_HOURS,
    MAX_LIMIT,
    MAX_SECRET_LENGTH,
    MULTILINE_SECRETS,
    REQUIRED_FIELDS,
    SECRET_FIELDS,
    SECRET_LABELS,
)

MAX_TAGS = 20
MAX_TAG_LENGTH = 64
MAX_EXPIRY_DAYS = 5 * 366
MAX_EXPIRING_DAYS = 3650
CHOOSE_OFFERED = "Choose one of the options offered."
INVALID_CHOICE = {"invalid_choice": CHOOSE_OFFERED, "invalid_pk_value": CHOOSE_OFFERED}
KEY_STATUSES = [("", "Any status"), ("active", "Active"), ("expired", "Expired"), ("revoked", "Revoked")]
DATETIME_INPUT_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"]


def person_label(user: User) -> str:
    return f"{user.full_name} ({user.email})" if user.full_name else user.email


class PersonChoiceField(UuidChoiceField):
    def label_from_instance(self, obj):
        return person_label(obj)


class UuidMultipleChoiceField(forms.ModelMultipleChoiceField):
    """Several choices by UUID; a malformed UUID is just another invalid choice (Django's own
    message would repeat the input)."""

    def _check_values(self, value):
        try:
            return super()._check_values(value)
        except ValidationError as error:
            if error.code in {"invalid_choice", "invalid_list"}:
                raise
            raise ValidationError(self.error_messages["invalid_choice"], code="invalid_choice") from None


def limit_field(label: str) -> forms.IntegerField:
    return forms.IntegerField(
        label=label,
        required=False,
        min_value=1,
        max_value=MAX_LIMIT,
        widget=forms.NumberInput(attrs={"inputmode": "numeric"}),
        help_text="Empty: the team's limit.",
        error_messages={"invalid": "Enter a whole number."},
    )


def model_aliases(org) -> list[tuple[str, str]]:
    from sla.models import ModelRoute

    aliases = ModelRoute.objects.filter(org=org).order_by("alias").values_list("alias", flat=True)
    return [(alias, alias) for alias in aliases]


class KeySettingsForm(forms.Form):
    """What can change on a key after it is issued."""

    name = forms.CharField(max_length=100, validators=[validate_display_name])
    expires_at = forms.DateTimeField(
        label="Expires at (UTC)",
        required=False,
        input_formats=DATETIME_INPUT_FORMATS,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="Empty: never.",
    )
    allowed_models = forms.MultipleChoiceField(
        label="Allowed models",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: whatever the team allows.",
        error_messages=INVALID_CHOICE,
    )
    rpm_limit = limit_field("Requests per minute")
    tpm_limit = limit_field("Tokens per minute")
    tags = forms.CharField(
        max_length=MAX_TAGS * (MAX_TAG_LENGTH + 2),
        required=False,
        help_text=f"Comma-separated, at most {MAX_TAGS}, e.g. ci, search-backend.",
    )

    def __init__(self, *args, org, current_expiry=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["allowed_models"].choices = model_aliases(org)
        self.current_expiry = current_expiry

    def clean_expires_at(self):
        expires_at = self.cleaned_data.get("expires_at")
        if expires_at is None:
            return None
        # The input shows minutes only: the unchanged expiry comes back without its seconds.
        current = self.current_expiry
        if current is not None and expires_at == current.replace(second=0, microsecond=0):
            expires_at = current
        now = timezone.now()
        if expires_at <= now:
            raise ValidationError("The expiry must be in the future.")
        if expires_at > now + timedelta(days=MAX_EXPIRY_DAYS):
            raise ValidationError("The expiry must be within five years.")
        return expires_at

    def clean_tags(self) -> list[str]:
        tags = sorted({tag.strip() for tag in self.cleaned_data.get("tags", "").split(",") if tag.strip()})
        if len(tags) > MAX_TAGS:
            raise ValidationError(f"At most {MAX_TAGS} tags.")
        for tag in tags:
            if len(tag) > MAX_TAG_LENGTH:
                raise ValidationError(f"Each tag has at most {MAX_TAG_LENGTH} characters.")
            validate_display_name(tag)
        return tags

    @staticmethod
    def initial_for(key) -> dict:
        return {
            "name": key.name,
            "expires_at": key.expires_at,
            "allowed_models": list(key.allowed_models),
            "rpm_limit": key.rpm_limit,
            "tpm_limit": key.tpm_limit,
            "tags": ", ".join(key.tags),
        }


class KeyCreateForm(KeySettingsForm):
    team = UuidChoiceField(
        queryset=Team.objects.none(),
        empty_label="Choose a team",
        help_text="The key counts against this team's budget and limits.",
        error_messages={"invalid_choice": "Choose one of the teams offered."},
    )
    owner = PersonChoiceField(
        queryset=User.objects.none(),
        to_field_name="uuid",
        required=False,
        empty_label="Nobody (a service key)",
        help_text="The person who holds the key, a member of the team.",
        error_messages={"invalid_choice": "Choose one of the people offered."},
    )

    field_order = ["team", "name", "owner", "expires_at", "allowed_models", "rpm_limit", "tpm_limit", "tags"]

    def __init__(self, *args, teams, owners, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["team"].queryset = teams
        self.fields["owner"].queryset = owners

    def clean(self):
        cleaned = super().clean()
        team, owner = cleaned.get("team"), cleaned.get("owner")
        if team is not None and owner is not None and not team.members.filter(pk=owner.pk).exists():
            self.add_error("owner", "This person is not a member of the team.")
        return cleaned


class KeyFilterForm(forms.Form):
    q = forms.CharField(label="Search by name or prefix", max_length=100, required=False)
    team = UuidChoiceField(
        queryset=Team.objects.none(), required=False, empty_label="All teams", error_messages=INVALID_CHOICE
    )
    status = forms.ChoiceField(label="Status", choices=KEY_STATUSES, required=False, error_messages=INVALID_CHOICE)
    owner = PersonChoiceField(
        queryset=User.objects.none(),
        to_field_name="uuid",
        required=False,
        empty_label="Anyone",
        error_messages=INVALID_CHOICE,
    )
    expiring = forms.IntegerField(
        label="Expiring within (days)",
        required=False,
        min_value=0,
        max_value=MAX_EXPIRING_DAYS,
        widget=forms.NumberInput(attrs={"inputmode": "numeric"}),
        error_messages={"invalid": "Enter a whole number of days."},
    )

    def __init__(self, *args, teams, owners, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["team"].queryset = teams
        self.fields["owner"].queryset = owners


class RotateKeyForm(forms.Form):
    grace_hours = forms.IntegerField(
        label="Grace period (hours)",
        min_value=0,
        max_value=MAX_GRACE_HOURS,
        initial=24,
        widget=forms.NumberInput(attrs={"inputmode": "numeric"}),
        help_text="How long the old key keeps working; 0 ends it now.",
        error_messages={"invalid": "Enter a whole number of hours."},
    )


class BulkRevokeForm(forms.Form):
    team = UuidChoiceField(
        queryset=Team.objects.none(),
        required=False,
        empty_label="Any team",
        error_messages={"invalid_choice": "Choose one of the teams offered."},
    )
    user = PersonChoiceField(
        queryset=User.objects.none(),
        to_field_name="uuid",
        required=False,
        label="Person",
        empty_label="Anyone",
        error_messages={"invalid_choice": "Choose one of the people offered."},
    )

    def __init__(self, *args, teams, people, team_required: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["team"].queryset = teams
        self.fields["user"].queryset = people
        self.team_required = team_required
        if team_required:
            self.fields["team"].empty_label = "Choose a team"
            self.fields["team"].help_text = "You may revoke the keys of teams you administer."

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        if self.team_required and cleaned.get("team") is None:
            self.add_error("team", "Choose one of your teams.")
        elif cleaned.get("team") is None and cleaned.get("user") is None:
            raise ValidationError("Choose a team, a person, or both.")
        return cleaned


# Provider credentials ----------------------------------------------------------------------


def url_field(label: str, help_text: str) -> forms.CharField:
    # A plain text field: the service checks scheme, host and SSRF, and says why it refuses.
    return forms.CharField(
        label=label,
        max_length=500,
        required=False,
        widget=forms.URLInput(attrs={"spellcheck": "false"}),
        help_text=help_text,
    )


class SecretTextarea(forms.Textarea):
    """A textarea for a secret file: like PasswordInput(render_value=False), it never writes the
    value back into the page, not even when the form comes back with errors."""

    def format_value(self, value):
        return None


def secret_field(label: str, *, required: bool, help_text: str, multiline: bool = False) -> forms.CharField:
    attrs = {"autocomplete": "off", "spellcheck": "false"}
    return forms.CharField(
        label=label,
        required=required,
        max_length=MAX_SECRET_LENGTH,
        # Never written back into the page, not even on errors (render_value=False for one line).
        widget=SecretTextarea(attrs={**attrs, "rows": 8})
        if multiline
        else forms.PasswordInput(attrs=attrs, render_value=False),
        help_text=help_text,
    )


def text_field(name: str, label: str, help_text: str) -> forms.CharField:
    return forms.CharField(
        label=label,
        max_length=ProviderCredential._meta.get_field(name).max_length,
        required=False,
        widget=forms.TextInput(attrs={"spellcheck": "false", "autocomplete": "off"}),
        help_text=help_text,
    )


PROVIDER_NAMES = dict(Provider.choices)
# The form's label and help for each secret, as entered first and as replaced later.
SECRET_WORDING = {
    "api_key": ("API key", "Sealed at once; never shown again."),
    "service_account_json": (
        "Service-account key file (JSON)",
        "Paste the whole JSON key file of the service account (Google Cloud console: IAM, Service accounts, "
        "Keys). It needs the Vertex AI User role. Sealed at once; never shown again.",
    ),
    "secret_access_key": (
        "Secret access key",
        "The secret half of the AWS access key (40 characters). Sealed at once; never shown again.",
    ),
}


def providers_using(field: str) -> list[str]:
    """The providers a credential form field applies to (for showing only those fields)."""
    return [
        provider
        for provider in Provider.values
        if field in CONNECTION_FIELDS[provider] or field in SECRET_FIELDS[provider]
    ]


def only_for(field: str) -> str:
    """Help-text words naming the providers a field applies to, when not all of them."""
    providers = providers_using(field)
    if len(providers) == len(Provider.values):
        return ""
    return " " + " and ".join(", ".join(PROVIDER_NAMES[p] for p in providers).rsplit(", ", 1)) + " only."


class CredentialForm(forms.Form):
    """One form for every provider. Each field that only some providers use carries their names
    (`providers`): the page shows all fields without JavaScript, each saying which providers it
    is for, and a small script hides the others. Editing shows only the credential's own fields.
    Which fields a provider needs is the service's rule (`needed` only drops the "(optional)"
    mark); its errors come back next to the field."""

    name = forms.CharField(max_length=100, validators=[validate_display_name])
    provider = forms.ChoiceField(choices=Provider.choices, error_messages=INVALID_CHOICE)
    base_url = url_field(
        "Base URL",
        "Required for OpenAI-compatible hosts; optional for the others (their public API, or for Vertex AI "
        "and Bedrock the region's endpoint).",
    )
    azure_endpoint = url_field("Azure endpoint", "e.g. https://example.openai.azure.com.")
    azure_api_version = forms.CharField(
        label="Azure API version", max_length=32, required=False, help_text="e.g. 2024-10-21."
    )
    project = text_field("project", "Google Cloud project id", "e.g. my-project-123.")
    access_key_id = text_field("access_key_id", "Access key id", "e.g. AKIAIOSFODNN7EXAMPLE; not secret.")
    region = text_field("region", "Region", "Vertex AI: e.g. us-central1 (or global). Bedrock: e.g. us-east-1.")
    role_arn = text_field(
        "role_arn", "Role ARN", "A role the key assumes before each call, e.g. arn:aws:iam::123456789012:role/llm."
    )
    teams = UuidMultipleChoiceField(
        queryset=Team.objects.none(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every team of the organization may use it.",
        error_messages=INVALID_CHOICE,
    )
    # Required per provider (the service says so next to the field); not all three at once.
    api_key = secret_field("API key", required=False, help_text="")
    service_account_json = secret_field("Service-account key file", required=False, help_text="", multiline=True)
    secret_access_key = secret_field("Secret access key", required=False, help_text="")

    field_order = [
        "name",
        "provider",
        "azure_endpoint",
        "azure_api_version",
        "project",
        "region",
        "access_key_id",
        "role_arn",
        "base_url",
        "teams",
    ]

    def __init__(self, *args, org, credential=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["teams"].queryset = Team.objects.filter(org=org).order_by("name")
        if credential is None:
            for name in SECRET_FIELDS_OF_FORM:
                label, help_text = SECRET_WORDING[name]
                self.fields[name].label, self.fields[name].help_text = label, help_text
            for name, field in self.fields.items():
                providers = providers_using(name) if name in PROVIDER_FIELDS else []
                if providers and len(providers) < len(Provider.values):
                    field.providers = providers
                    field.help_text = (field.help_text + only_for(name)).strip()
                    # Not "(optional)" when every provider it is for needs it.
                    field.needed = all(
                        name in SECRET_FIELDS[p] or name in REQUIRED_FIELDS.get(p, ()) for p in providers
                    )
            return
        # The provider of a credential cannot change; its secret is replaced only on purpose.
        del self.fields["provider"]
        provider = credential.provider
        for name in PROVIDER_FIELDS:
            if name not in CONNECTION_FIELDS[provider] and name not in SECRET_FIELDS[provider]:
                del self.fields[name]
        secret_name = SECRET_FIELDS[provider][0]
        secret_words = SECRET_LABELS[secret_name]
        is_file = secret_name in MULTILINE_SECRETS
        moves = "the Azure endpoint or base URL" if "azure_endpoint" in self.fields else "the base URL"
        if "access_key_id" in self.fields:
            moves = "the base URL or the access key id"
        self.fields[secret_name] = secret_field(
            f"Replace the {secret_words}",
            required=False,
            help_text=f"Leave empty to keep the current {'key file' if is_file else 'key'}. "
            f"Required when you change {moves}.",
            multiline=is_file,
        )
        for name in REQUIRED_FIELDS.get(provider, ()):
            self.fields[name].needed = True
        # The stored key is never sent to a new address unless whoever changes it knows the key.
        for field in ("base_url", "azure_endpoint"):
            if field in self.fields:
                self.fields[field].help_text += f" Changing it requires entering the {secret_words} again."
        if "access_key_id" in self.fields:
            self.fields["access_key_id"].help_text += f" Changing it requires entering the {secret_words} again."

    def secrets_for(self, provider: str) -> dict[str, str]:
        """The provider's secrets as entered (empty ones included: the service says which it needs)."""
        return {name: self.cleaned_data.get(name, "") for name in SECRET_FIELDS[provider]}

    def connection(self) -> dict[str, str]:
        """The connection settings as entered; the fields not on the form are empty."""
        return {name: self.cleaned_data.get(name, "") for name in CONNECTION_NAMES}

    def add_error(self, field, error):
        super().add_error(field, error)
        # A refused access key id may be the secret pasted into the wrong field: never write it
        # back into the page (whether the form or the service refused it).
        if "access_key_id" in self._errors and self.is_bound and self.data.get("access_key_id"):
            data = self.data.copy()
            data["access_key_id"] = ""
            self.data = data

    @staticmethod
    def initial_for(credential) -> dict:
        return {
            "name": credential.name,
            "base_url": credential.base_url,
            "azure_endpoint": credential.azure_endpoint,
            "azure_api_version": credential.azure_api_version,
            "region": credential.region,
            "project": credential.project,
            "access_key_id": credential.access_key_id,
            "role_arn": credential.role_arn,
            "teams": list(credential.teams.all()),
        }


SECRET_FIELDS_OF_FORM = ("api_key", "service_account_json", "secret_access_key")
# The fields that depend on the provider; name and teams apply to all.
PROVIDER_FIELDS = ("base_url", "azure_endpoint", "azure_api_version", *CLOUD_FIELDS, *SECRET_FIELDS_OF_FORM)


class CredentialFilterForm(forms.Form):
    q = forms.CharField(label="Search by name", max_length=100, required=False)
    provider = forms.ChoiceField(
        label="Provider",
        choices=[("", "All providers"), *Provider.choices],
        required=False,
        error_messages=INVALID_CHOICE,
    )

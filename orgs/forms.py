"""Portal forms. They check shape (lengths, characters, choices); the rules live in services."""

from datetime import UTC, datetime, time, timedelta

from django import forms
from django.contrib.auth import password_validation
from django.core.exceptions import ValidationError
from django.utils import timezone

from .models import Team, User
from .roles import CAPABILITIES, Role
from .validators import validate_display_name

# An expiry further out than this is almost certainly a typo (and year 9999 would overflow).
MAX_TOKEN_LIFETIME_DAYS = 5 * 366


def grantable_roles(capabilities: frozenset[str]) -> list[tuple[str, str]]:
    """The role choices someone holding `capabilities` may hand out: never more than their own."""
    return [(value, label) for value, label in Role.choices if CAPABILITIES[value] <= capabilities]


def apply_service_errors(form: forms.Form, error: ValidationError, aliases: dict[str, str] | None = None) -> None:
    """Show a service's ValidationError next to the matching field (`aliases` maps a service's
    field name to the form's), and anything else above the form."""
    if not hasattr(error, "error_dict"):
        form.add_error(None, error)
        return
    for name, messages in error.message_dict.items():
        field = (aliases or {}).get(name, name)
        form.add_error(field if field in form.fields else None, messages)


class TeamForm(forms.Form):
    name = forms.CharField(max_length=100, validators=[validate_display_name])
    description = forms.CharField(
        max_length=500,
        required=False,
        validators=[validate_display_name],
        help_text="What the team works on, in a sentence or two.",
    )


class TeamLimitsForm(forms.Form):
    """The ceiling for a team's caller keys; set by org admins, not by the team's own admins."""

    allowed_models = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Leave all unticked to allow every model the organization routes.",
    )
    rpm_limit = forms.IntegerField(
        label="Requests per minute, per key",
        required=False,
        min_value=1,
        max_value=10_000_000,
        help_text="Empty: no limit.",
    )
    tpm_limit = forms.IntegerField(
        label="Tokens per minute, per key",
        required=False,
        min_value=1,
        max_value=10_000_000,
        help_text="Empty: no limit.",
    )

    def __init__(self, *args, aliases: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["allowed_models"].choices = [(alias, alias) for alias in aliases]


class UuidChoiceField(forms.ModelChoiceField):
    """A choice by UUID; a malformed UUID is just another invalid choice."""

    def to_python(self, value):
        try:
            return super().to_python(value)
        except ValidationError:
            raise ValidationError(self.error_messages["invalid_choice"], code="invalid_choice") from None


class AddTeamMemberForm(forms.Form):
    user = UuidChoiceField(
        queryset=User.objects.none(),
        to_field_name="uuid",
        label="Person",
        empty_label="Choose an organization member",
        error_messages={"invalid_choice": "Choose a member of the organization who is not in the team yet."},
    )
    team_admin = forms.BooleanField(
        required=False, label="Team admin", help_text="Team admins manage the team's members and keys."
    )

    def __init__(self, *args, team: Team, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["user"].queryset = (
            User.objects.filter(memberships__org_id=team.org_id).exclude(team_memberships__team=team).order_by("email")
        )
        self.fields["user"].label_from_instance = lambda user: (
            f"{user.full_name} ({user.email})" if user.full_name else user.email
        )


class TeamSearchForm(forms.Form):
    q = forms.CharField(label="Search teams", max_length=100, required=False)
    mine = forms.BooleanField(label="Only my teams", required=False)


class MemberFilterForm(forms.Form):
    q = forms.CharField(label="Search by name or email", max_length=254, required=False)
    role = forms.ChoiceField(label="Role", choices=[("", "All roles"), *Role.choices], required=False)


class RoleChangeForm(forms.Form):
    # Every role is accepted here so that "above your own" is answered by the service with a
    # clear message; the select only offers the roles the actor may grant.
    role = forms.ChoiceField(label="Role", choices=Role.choices)

    def __init__(self, *args, grantable: list[tuple[str, str]] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if grantable is not None:
            self.fields["role"].widget.choices = grantable


class InvitationForm(forms.Form):
    email = forms.EmailField(label="Email address", max_length=254)
    role = forms.ChoiceField(label="Role", help_text="At most your own role.")
    team = UuidChoiceField(
        queryset=Team.objects.none(),
        required=False,
        empty_label="No team",
        help_text="They join this team when they accept.",
        error_messages={"invalid_choice": "Choose one of the organization's teams."},
    )

    def __init__(self, *args, org, capabilities: frozenset[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["role"].choices = grantable_roles(capabilities)
        self.fields["role"].initial = Role.DEVELOPER
        self.fields["team"].queryset = Team.objects.filter(org=org).order_by("name")


class InvitationFilterForm(forms.Form):
    status = forms.ChoiceField(
        label="Status",
        choices=[
            ("", "All"),
            ("pending", "Pending"),
            ("accepted", "Accepted"),
            ("expired", "Expired"),
            ("revoked", "Revoked"),
        ],
        required=False,
    )


class AcceptInvitationForm(forms.Form):
    full_name = forms.CharField(label="Full name", max_length=150, validators=[validate_display_name])
    password1 = forms.CharField(
        label="Password",
        strip=False,
        max_length=4096,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=password_validation.password_validators_help_text_html,
    )
    password2 = forms.CharField(
        label="Password (again)",
        strip=False,
        max_length=4096,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def __init__(self, *args, email: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.email = email

    def clean(self):
        cleaned = super().clean()
        password1, password2 = cleaned.get("password1"), cleaned.get("password2")
        if password1 and password2:
            if password1 != password2:
                self.add_error("password2", "The two passwords differ.")
            else:
                candidate = User(email=self.email, full_name=cleaned.get("full_name", ""))
                try:
                    password_validation.validate_password(password1, user=candidate)
                except ValidationError as error:
                    self.add_error("password1", error)
        return cleaned


class ApiTokenForm(forms.Form):
    name = forms.CharField(max_length=100, validators=[validate_display_name])
    role = forms.ChoiceField(label="Role", help_text="At most your own role.")
    expires_on = forms.DateField(
        label="Expires on",
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="Works through this day (UTC).",
    )

    def __init__(self, *args, capabilities: frozenset[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["role"].choices = grantable_roles(capabilities)
        self.fields["role"].initial = Role.VIEWER

    def clean_expires_on(self):
        expires_on = self.cleaned_data.get("expires_on")
        if expires_on is None:
            return None
        today = timezone.now().astimezone(UTC).date()
        if expires_on < today:
            raise ValidationError("The expiry must be today or later.")
        if expires_on > today + timedelta(days=MAX_TOKEN_LIFETIME_DAYS):
            raise ValidationError("The expiry must be within five years.")
        return expires_on

    @property
    def expires_at(self) -> datetime | None:
        expires_on = self.cleaned_data.get("expires_on")
        if expires_on is None:
            return None
        return datetime.combine(expires_on + timedelta(days=1), time.min, tzinfo=UTC)


class ApiTokenFilterForm(forms.Form):
    status = forms.ChoiceField(
        label="Status",
        choices=[("", "All"), ("active", "Active"), ("expired", "Expired"), ("revoked", "Revoked")],
        required=False,
    )


class OrgSettingsForm(forms.Form):
    name = forms.CharField(label="Organization name", max_length=100, validators=[validate_display_name])
    require_mfa = forms.BooleanField(
        label="Require two-factor authentication for owners and admins",
        required=False,
        help_text="Owners and admins without an authenticator app are sent to set one up before anything else.",
    )
    budget_fail_open = forms.BooleanField(
        label="Admit budget-bound requests while budgets cannot be checked",
        required=False,
        help_text=(
            "When the gateway cannot reach Redis. Off (the default): requests under a budget are refused "
            "with 503 budget_unavailable. On: they are admitted, and spend may pass a hard budget until "
            "Redis is back."
        ),
    )
    rate_limit_fail_open = forms.BooleanField(
        label="Admit rate-limited keys' requests while limits cannot be checked",
        required=False,
        help_text=(
            "When the gateway cannot reach Redis. Off (the default): requests of keys with an RPM or TPM "
            "limit are refused with 503 rate_limit_unavailable. On: they are admitted, uncounted."
        ),
    )

"""The request log's filters and page cursors, read from the query string by the page, the API
and exports alike (requestlog/queries.py applies them)."""

from django import forms

from audit.forms import MomentField

from .queries import MAX_REQUEST_ID, STATUS_CLASSES, Cursor, decode_cursor

MAX_ALIAS = 200
MAX_ERROR_CODE = 64


class ChoiceOrUuidField(forms.UUIDField):
    """A UUID, offered as a list on the page (`offer`). Any UUID is valid: rows the viewer may
    not see are out of reach whatever the filter names, so it simply matches nothing."""

    default_error_messages = {"invalid": "Choose one from the list."}

    def __init__(self, **kwargs):
        super().__init__(required=False, widget=forms.Select, **kwargs)

    def offer(self, choices, everything: str) -> None:
        self.widget.choices = [("", everything), *choices]


class RequestFilterForm(forms.Form):
    since = MomentField(label="From", help_text="UTC date or date-time; default: 24 hours before To")
    until = MomentField(label="To", end_of_day=True, help_text="Inclusive; default: now")
    request_id = forms.CharField(
        label="Request id",
        max_length=MAX_REQUEST_ID,
        required=False,
        help_text="The x-request-id the gateway answered, or the caller's own X-Request-Id; without From, all time",
    )
    key = ChoiceOrUuidField(label="Key")
    team = ChoiceOrUuidField(label="Team")
    user = ChoiceOrUuidField(label="Key owner")
    model = forms.CharField(label="Model", max_length=MAX_ALIAS, required=False, widget=forms.Select)
    deployment = ChoiceOrUuidField(label="Deployment")
    status = forms.ChoiceField(
        label="Status",
        choices=[("", "Any status"), *((name, label) for name, (label, _low, _high) in STATUS_CLASSES.items())],
        required=False,
        error_messages={"invalid_choice": "Choose 2xx, 4xx or 5xx."},
    )
    error_code = forms.CharField(label="Error code", max_length=MAX_ERROR_CODE, required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["model"].widget.attrs.pop("maxlength", None)  # a list, not a text box

    def offer(self, *, keys, teams, users, models, deployments) -> None:
        """Turn the id fields into lists for the page; a value given but not listed stays listed."""
        offered = {"key": keys, "team": teams, "user": users, "deployment": deployments}
        for name, choices in offered.items():
            choices = [(str(value), label) for value, label in choices]
            given = self.data.get(name) if self.is_bound else None
            if given and given not in {value for value, _label in choices}:
                choices.append((given, given))
            self.fields[name].offer(choices, f"Any {self.fields[name].label.lower()}")
        given_model = self.data.get("model") if self.is_bound else None
        aliases = sorted({*models, given_model} - {None, ""})
        self.fields["model"].widget.choices = [("", "Any model"), *((alias, alias) for alias in aliases)]

    def clean(self):
        cleaned = super().clean()
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and since > until:
            self.add_error("until", "The end of the range is before its start.")
        return cleaned

    @property
    def filtered(self) -> bool:
        return self.is_valid() and any(value not in (None, "") for value in self.cleaned_data.values())


class CursorField(forms.CharField):
    """An opaque keyset cursor (requestlog.queries.encode_cursor)."""

    default_error_messages = {"invalid": "This page link is not valid."}

    def __init__(self, **kwargs):
        super().__init__(required=False, **kwargs)

    def to_python(self, value) -> Cursor | None:  # type: ignore[override]
        text = super().to_python(value)
        if not text:
            return None
        try:
            return decode_cursor(text)
        except ValueError:
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid") from None


class RequestPageForm(forms.Form):
    """Where a keyset page of the page starts: below `before` (older) or above `after` (newer)."""

    before = CursorField()
    after = CursorField()

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("before") and cleaned.get("after"):
            raise forms.ValidationError("Give before or after, not both.")
        return cleaned

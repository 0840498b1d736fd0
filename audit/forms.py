"""The audit trail's filters, shared by the page, the API and exports (see audit/filters.py)."""

import ipaddress
from datetime import UTC, datetime, time

from django import forms
from django.core import validators
from django.utils.dateparse import parse_date, parse_datetime

BIGINT_MAX = 2**63 - 1

# The longest value each text filter can match: a longer one is not an error, it simply matches
# nothing (audit.filters.filter_events).
TEXT_LIMITS = {"actor": 254, "action": 64, "target_type": 64, "target": 64, "q": 200}


class FilterTextField(forms.CharField):
    """Free text: what cannot match gives no results instead of an error. A NUL byte is an error
    (Django's validator): PostgreSQL refuses it, and exports record their filters."""

    def __init__(self, *, limit: int, **kwargs):
        super().__init__(required=False, **kwargs)
        self.widget.attrs["maxlength"] = str(limit)


class MomentField(forms.CharField):
    """An ISO date or date-time, read as UTC when it names no offset. `end_of_day` makes a bare
    date mean its last instant, so `until=2025-03-31` includes the whole day."""

    def __init__(self, *, end_of_day: bool = False, **kwargs):
        super().__init__(required=False, **kwargs)
        self.end_of_day = end_of_day

    def to_python(self, value):
        text = super().to_python(value)
        if not text:
            return None
        try:
            if len(text) > 40 or "\x00" in text:
                raise ValueError
            # A bare date first: parse_datetime would read it as midnight.
            day = parse_date(text)
            if day is not None:
                return datetime.combine(day, time.max if self.end_of_day else time.min, tzinfo=UTC)
            moment = parse_datetime(text)
            if moment is None:
                raise ValueError
            if moment.tzinfo is None:
                return moment.replace(tzinfo=UTC)
            return moment.astimezone(UTC)
        except (ValueError, OverflowError):
            raise forms.ValidationError(
                "Enter a date (2025-03-31) or a date and time in UTC (2025-03-31T14:05:00Z).", code="invalid"
            ) from None


class AddressOrNetworkField(forms.CharField):
    """One IP address (203.0.113.7) or a CIDR network (203.0.113.0/24, 2001:db8::/32)."""

    def __init__(self, **kwargs):
        super().__init__(required=False, **kwargs)

    def to_python(self, value):
        text = super().to_python(value)
        if not text:
            return None
        try:
            if len(text) > 64:
                raise ValueError
            if "/" in text:
                return ipaddress.ip_network(text, strict=False)
            return ipaddress.ip_address(text)
        except ValueError:
            raise forms.ValidationError(
                "Enter an IP address (203.0.113.7) or a network (203.0.113.0/24).", code="invalid"
            ) from None


class AuditFilterForm(forms.Form):
    since = MomentField(label="From", help_text="A date or date-time in UTC, e.g. 2025-03-01")
    until = MomentField(label="Until", end_of_day=True, help_text="Inclusive; a date means the whole day")
    actor = FilterTextField(
        label="Actor", limit=TEXT_LIMITS["actor"], help_text="Part of an email or token name, or an actor id"
    )
    action = FilterTextField(
        label="Action",
        limit=TEXT_LIMITS["action"],
        help_text="An exact action, or a family: its start ending in a dot",
    )
    target_type = FilterTextField(label="Target type", limit=TEXT_LIMITS["target_type"], help_text="e.g. team")
    target = FilterTextField(
        label="Target id", limit=TEXT_LIMITS["target"], help_text="The id of one object, for its history"
    )
    team = forms.UUIDField(label="Team id", required=False, help_text="Events of the team and of its keys")
    ip = AddressOrNetworkField(label="IP address", help_text="An address or a network, e.g. 203.0.113.0/24")
    q = FilterTextField(label="Target name", limit=TEXT_LIMITS["q"], help_text="Part of the target's name")

    def clean(self):
        cleaned = super().clean()
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and since > until:
            self.add_error("until", "The end of the range is before its start.")
        # A field reads the last of repeated values, but an export records them all.
        for name in self.fields:
            if name not in self.errors and any("\x00" in str(value) for value in self._given(name)):
                self.add_error(name, validators.ProhibitNullCharactersValidator.message)
        return cleaned

    def _given(self, name: str) -> list:
        return self.data.getlist(name) if hasattr(self.data, "getlist") else [self.data.get(name, "")]

    @property
    def filtered(self) -> bool:
        return self.is_valid() and any(value not in (None, "") for value in self.cleaned_data.values())


class AuditPageForm(forms.Form):
    """Where a keyset page starts: below `before` (older) or above `after` (newer)."""

    before = forms.IntegerField(min_value=1, max_value=BIGINT_MAX, required=False)
    after = forms.IntegerField(min_value=0, max_value=BIGINT_MAX, required=False)

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("before") is not None and cleaned.get("after") is not None:
            raise forms.ValidationError("Give before or after, not both.")
        return cleaned

from django import forms

from gateway.config import MAX_CAPTURE_BYTES

from .redact import MAX_PATTERNS
from .services import MIN_CAPTURE_BYTES


class CaptureSettingsForm(forms.Form):
    enabled = forms.BooleanField(
        required=False,
        label="Capture prompts and answers",
        help_text="For every team that does not choose for itself (below). Off by default.",
    )
    max_bytes = forms.IntegerField(
        label="Size limit (bytes)",
        min_value=MIN_CAPTURE_BYTES,
        max_value=MAX_CAPTURE_BYTES,
        help_text="Of a prompt, and of an answer: anything longer is cut, and the cut is shown.",
    )
    retention_days = forms.IntegerField(
        label="Keep for (days)", min_value=1, help_text="Captured content older than this is deleted."
    )
    redact_patterns = forms.CharField(
        required=False,
        label="Also redact (regular expressions, one per line)",
        widget=forms.Textarea(attrs={"rows": 4, "class": "mono"}),
        help_text=f"Beside the built-in secret patterns (API keys, tokens, private keys). At most {MAX_PATTERNS}.",
    )

    def clean_redact_patterns(self) -> list[str]:
        return [line.strip() for line in self.cleaned_data["redact_patterns"].splitlines() if line.strip()]


class TeamCaptureForm(forms.Form):
    capture = forms.ChoiceField(choices=[("inherit", "As the org"), ("on", "On"), ("off", "Off")])

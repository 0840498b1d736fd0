import unicodedata

from django.core.exceptions import ValidationError


def validate_display_name(value: str) -> None:
    """Names people read: no control or format characters (newlines, bidi overrides, NUL)."""
    if not value.strip():
        raise ValidationError("This field cannot be blank.", code="blank")
    for character in value:
        if unicodedata.category(character) in {"Cc", "Cf", "Cs", "Co"}:
            raise ValidationError("Control and invisible formatting characters are not allowed.", code="control")

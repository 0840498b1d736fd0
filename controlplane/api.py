"""API-wide behaviour and the pieces every app's api.py builds on: errors as JSON bodies shaped
{"field": ["message"]}, strict input fields, pagination, the base views, the "object plus its
secret, shown once" output, and the OpenAPI description of management API tokens."""

from django.core.exceptions import NON_FIELD_ERRORS
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object, get_class
from rest_framework import exceptions, serializers
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from orgs.validators import validate_display_name


def validation_error_body(error: DjangoValidationError) -> dict:
    if hasattr(error, "error_dict"):
        return {
            api_settings.NON_FIELD_ERRORS_KEY if field == NON_FIELD_ERRORS else field: [
                str(m) for e in errors for m in e.messages
            ]
            for field, errors in error.error_dict.items()
        }
    return {api_settings.NON_FIELD_ERRORS_KEY: list(error.messages)}


def exception_handler(exc, context):
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(validation_error_body(exc))
    elif isinstance(exc, Http404):
        # Never the message: it would tell an outsider which kind of thing does not exist.
        exc = exceptions.NotFound("Not found.")
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    return drf_exception_handler(exc, context)


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "orgs.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return build_bearer_security_scheme_object(header_name="Authorization", token_prefix=self.target.keyword)


# Input fields --------------------------------------------------------------------------------


class StrictCharField(serializers.CharField):
    """A CharField that refuses numbers instead of turning them into text."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictUUIDField(serializers.UUIDField):
    """A UUIDField that refuses numbers (DRF would read 5 as UUID(int=5))."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid", value=data)
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """An IntegerField for JSON bodies: refuses "5", 5.0 and true instead of reading them as 5 or 1."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictDecimalField(serializers.DecimalField):
    """Money in and out as decimal strings ("2.50"): a JSON number may already have lost digits."""

    default_error_messages = {"not_a_string": 'Give the amount as a string, e.g. "2.50".'}

    def __init__(self, **kwargs):
        kwargs.setdefault("coerce_to_string", True)
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("not_a_string")
        return super().to_internal_value(data)


def flat_messages(detail) -> list[str]:
    if isinstance(detail, dict):
        return [message for value in detail.values() for message in flat_messages(value)]
    if isinstance(detail, list):
        return [message for value in detail for message in flat_messages(value)]
    return [str(detail)]


class StrictListField(serializers.ListField):
    """A JSON list whose item errors join the field's own messages ("Item 2: ..."), so error
    bodies keep the shape {"field": ["message"]}. Too long a list is refused before its items
    are looked at."""

    def to_internal_value(self, data):
        if not isinstance(data, list):
            self.fail("not_a_list", input_type=type(data).__name__)
        if self.max_length is not None and len(data) > self.max_length:
            self.fail("max_length", max_length=self.max_length)
        return super().to_internal_value(data)

    def run_child_validation(self, data):
        result, errors = [], []
        for index, item in enumerate(data, start=1):
            try:
                result.append(self.child.run_validation(item))
            except serializers.ValidationError as error:
                errors.extend(f"Item {index}: {message}" for message in flat_messages(error.detail))
        if errors:
            raise serializers.ValidationError(errors)
        return result


def validate_optional_text(value: str) -> None:
    if value:
        validate_display_name(value)


def name_field(max_length: int) -> StrictCharField:
    return StrictCharField(max_length=max_length, validators=[validate_display_name])


def description_field(max_length: int) -> StrictCharField:
    return StrictCharField(max_length=max_length, required=False, allow_blank=True, validators=[validate_optional_text])


class SearchQuery(serializers.Serializer):
    q = StrictCharField(required=False, allow_blank=True, max_length=100, help_text="Search text.")


def validated(serializer_class, data, **kwargs) -> dict:
    serializer = serializer_class(data=data, **kwargs)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def found(queryset):
    """The one row of `queryset`, or 404: ids of another org, or of nothing, look the same."""
    row = queryset.first()
    if row is None:
        raise Http404("Not found.")
    return row


# Views ---------------------------------------------------------------------------------------


class PagePagination(LimitOffsetPagination):
    default_limit = 50
    max_limit = 200


class BaseApi(APIView):
    """Permissions come from settings: authenticated, and MFA set up where the org requires it."""


class ListApi(BaseApi):
    pagination_class = PagePagination

    def paginated_response(self, rows, serializer_class, **context) -> Response:
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(rows, self.request, view=self)
        return paginator.get_paginated_response(serializer_class(page, many=True, context=context).data)


# Secrets shown once ----------------------------------------------------------------------------


class ShownOnceOutput(serializers.BaseSerializer):
    """An object's output plus the secret it was just given, for the one response that shows it.

    Subclasses name the object's output serializer and the plaintext's field; the view passes
    the plaintext as context["plaintext"]. In the schema it is the object plus that one field,
    so the object's enums keep one home."""

    object_output: type[serializers.Serializer]
    plaintext_field: str
    plaintext_help: str

    def to_representation(self, instance) -> dict:
        body = self.object_output(context=self.context).to_representation(instance)
        return {**body, self.plaintext_field: self.context["plaintext"]}


class ShownOnceSchema(OpenApiSerializerExtension):
    target_class = ShownOnceOutput
    match_subclasses = True

    def map_serializer(self, auto_schema, direction):
        output = get_class(self.target)
        object_schema = auto_schema.resolve_serializer(output.object_output, direction)
        field = output.plaintext_field
        plaintext = {"type": "string", "readOnly": True, "description": output.plaintext_help}
        return {"allOf": [object_schema.ref, {"type": "object", "properties": {field: plaintext}, "required": [field]}]}


# Error answers in the schema ---------------------------------------------------------------------


class ErrorDetail(serializers.Serializer):
    """An error that is not about input fields."""

    detail = serializers.CharField()


# ErrorDetail's component, for a schema in which no operation names the serializer itself.
DETAIL_ERROR = {
    "type": "object",
    "description": ErrorDetail.__doc__,
    "properties": {"detail": {"type": "string"}},
    "required": ["detail"],
}
VALIDATION_ERRORS = {
    "type": "object",
    "description": 'Messages by field, {"field": ["message"]}; errors of the whole request under '
    f'"{api_settings.NON_FIELD_ERRORS_KEY}", a body that is not JSON under "detail".',
    "properties": {"detail": {"type": "string"}},
    "additionalProperties": {"type": "array", "items": {"type": "string"}},
}


def error_response(description: str, schema_name: str) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}},
    }


def document_error_responses(result, generator, request, public):
    """Postprocessing hook: the errors every operation can answer, in the shapes exception_handler
    gives them, unless the operation declares its own."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault("ErrorDetail", DETAIL_ERROR)
    schemas.setdefault("ValidationErrors", VALIDATION_ERRORS)
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            errors = {
                "401": error_response("No credentials, or a token that is unknown, expired or revoked.", "ErrorDetail"),
                "403": error_response(
                    "The role is too low, or the org requires two-factor authentication.", "ErrorDetail"
                ),
            }
            # Services refuse a change the object's state does not allow (revoking twice, removing
            # the last owner) with a 400 too, so every change can answer it, body or not.
            takes_input = method != "get" or any(
                parameter.get("in") == "query" for parameter in operation.get("parameters", [])
            )
            if takes_input:
                errors["400"] = error_response(
                    "The input is not valid, or the object's state does not allow the change.", "ValidationErrors"
                )
            if "{" in path:
                errors["404"] = error_response("No such object in an org the caller belongs to.", "ErrorDetail")
            responses = {**errors, **operation.get("responses", {})}
            operation["responses"] = dict(sorted(responses.items()))
    return result

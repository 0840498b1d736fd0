from datetime import timedelta

from django.utils import timezone
from rest_framework import authentication, exceptions

from .access import token_role
from .models import ApiToken
from .tokens import digest

# last_used_at is a hint for humans; writing it on every request would cost a row lock each.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class TokenUser:
    """Stands in for request.user when a management API token authenticates."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False
    pk = None
    email = ""

    def __init__(self, token: ApiToken):
        self.token = token

    def __str__(self) -> str:
        return f"API token {self.token.name}"


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer ghm_...`. A bad token is a 401, never an anonymous request."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != self.keyword.lower():
            raise exceptions.AuthenticationFailed("Use 'Authorization: Bearer <token>'.")
        value = value.strip()
        if not value or " " in value or len(value) > 200:
            raise exceptions.AuthenticationFailed("Malformed bearer token.")
        token = ApiToken.objects.select_related("org").filter(digest=digest(value)).first()
        if token is None or not token.is_usable:
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked token.")
        if token_role(token) is None:
            # Leaving the org revokes a person's tokens; this also refuses any made before that rule.
            raise exceptions.AuthenticationFailed("The person who created this token has left the organization.")
        now = timezone.now()
        if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return TokenUser(token), token

    def authenticate_header(self, request) -> str:
        return self.keyword

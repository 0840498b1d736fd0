"""Secret tokens that are shown once and stored as a SHA-256 digest."""

import hashlib
import secrets

API_TOKEN_PREFIX = "ghm_"  # noqa: S105  (a public marker, not a secret)
INVITATION_TOKEN_BYTES = 32


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_api_token() -> tuple[str, str, str]:
    """(plaintext, display prefix, digest) for a management API token."""
    plaintext = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
    return plaintext, plaintext[:12], digest(plaintext)


def new_invitation_token() -> tuple[str, str]:
    plaintext = secrets.token_urlsafe(INVITATION_TOKEN_BYTES)
    return plaintext, digest(plaintext)

"""'Test connection': call a provider's cheapest read endpoint with a credential.

The base URL is checked against SSRF again at call time (DNS may have changed since it was
saved), redirects are not followed, and the secret is scrubbed from whatever the provider
says before it is shown or recorded.
"""

import re
from dataclasses import dataclass

import httpx
from django.core.exceptions import ValidationError

from .models import Provider, ProviderCredential
from .upstream_urls import check_upstream_url

TIMEOUT_SECONDS = 5.0
DEFAULT_BASES = {
    Provider.OPENAI: "https://api.openai.com/v1",
    Provider.ANTHROPIC: "https://api.anthropic.com",
}
KEY_LIKE = re.compile(r"(sk|gh|ghm)[-_][A-Za-z0-9_\-*]{6,}")


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    message: str


def models_request(credential: ProviderCredential, secret: str) -> tuple[str, dict, dict]:
    """(url, headers, query) of the provider's model list: cheap, read-only, costs no tokens."""
    if credential.provider == Provider.AZURE_OPENAI:
        base = credential.azure_endpoint.rstrip("/")
        return f"{base}/openai/models", {"api-key": secret}, {"api-version": credential.azure_api_version}
    if credential.provider == Provider.ANTHROPIC:
        base = (credential.base_url or DEFAULT_BASES[Provider.ANTHROPIC]).rstrip("/")
        return f"{base}/v1/models", {"x-api-key": secret, "anthropic-version": "2023-06-01"}, {}
    base = (credential.base_url or DEFAULT_BASES[Provider.OPENAI]).rstrip("/")
    return f"{base}/models", {"Authorization": f"Bearer {secret}"}, {}


def scrub(text: str, secret: str) -> str:
    if secret:
        text = text.replace(secret, "***")
    return KEY_LIKE.sub("***", text)[:300]


def provider_error_words(response: httpx.Response) -> str:
    try:
        body = response.json()
        message = body.get("error", {}).get("message") if isinstance(body.get("error"), dict) else body.get("error")
    except (ValueError, AttributeError):
        message = None
    return f"The provider answered {response.status_code}: {message or response.reason_phrase or 'no reason given'}"


def check_credential(credential: ProviderCredential, secret: str) -> CheckResult:
    url, headers, query = models_request(credential, secret)
    try:
        check_upstream_url(url, field="base_url")
    except ValidationError as error:
        return CheckResult(False, " ".join(error.messages))
    try:
        with httpx.Client(timeout=TIMEOUT_SECONDS, follow_redirects=False) as client:
            response = client.get(url, headers=headers, params=query)
    except httpx.TimeoutException:
        return CheckResult(False, f"No answer within {TIMEOUT_SECONDS:g} seconds.")
    except httpx.HTTPError as error:
        return CheckResult(False, scrub(f"Could not connect: {type(error).__name__}.", secret))
    if response.is_redirect:
        return CheckResult(
            False, f"The provider answered with a redirect ({response.status_code}), which is not followed."
        )
    if response.is_success:
        return CheckResult(True, "Connected: the provider accepted the credential.")
    return CheckResult(False, scrub(provider_error_words(response), secret))

"""'Test connection': call a provider's cheapest read endpoint with a credential.

The base URL is checked against SSRF again at call time (DNS may have changed since it was
saved) and redirects are not followed. What is recorded of the outcome is the HTTP status and
a message classified from it, never the provider's own words: a provider that echoes the key
back (URL-encoded, base64, masked, upper-cased...) would otherwise have it stored and shown.
"""

import ssl
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
CONNECTED = "Connected: the provider accepted the credential."


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    message: str
    status: int | None = None  # the provider's HTTP status, when it answered


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


def status_message(status: int) -> str:
    """The words recorded for a provider's answer: made from the status alone."""
    if 300 <= status < 400:
        return f"Redirected ({status}): redirects are not followed; check the address."
    if status == 401:
        return "Authentication failed (401): the provider refused the key."
    if status == 403:
        return "Permission denied (403): the key may not list models."
    if status == 404:
        return "Not found (404): check the base URL or endpoint."
    if status == 429:
        return "Rate limited (429): the provider is throttling this key; try again later."
    if 500 <= status < 600:
        return f"Provider error ({status}): the provider failed to answer; try again later."
    if 400 <= status < 500:
        return f"Request refused ({status})."
    return f"Unexpected answer ({status})."


def _caused_by_tls(error: BaseException) -> bool:
    seen: BaseException | None = error
    for _ in range(10):  # httpx wraps httpcore, which wraps ssl; never loop on a cycle
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def error_message(error: httpx.HTTPError) -> str:
    """The words recorded when no answer came: the kind of failure, never the exception's text."""
    if isinstance(error, httpx.TimeoutException):
        return f"Timed out: no answer within {TIMEOUT_SECONDS:g} seconds."
    if _caused_by_tls(error):
        return "TLS error: the secure connection could not be set up (certificate or protocol)."
    if isinstance(error, httpx.ConnectError):
        return "Could not connect: the host refused or did not answer."
    return "Connection failed: the provider's answer could not be read."


def check_credential(credential: ProviderCredential, secret: str) -> CheckResult:
    url, headers, query = models_request(credential, secret)
    try:
        check_upstream_url(url, field="base_url")
    except ValidationError as error:
        return CheckResult(False, " ".join(error.messages))
    try:
        # Streamed and closed unread: only the status is used, so the body is never downloaded.
        with (
            httpx.Client(timeout=TIMEOUT_SECONDS, follow_redirects=False) as client,
            client.stream("GET", url, headers=headers, params=query) as response,
        ):
            status = response.status_code
    except httpx.HTTPError as error:
        return CheckResult(False, error_message(error))
    if 200 <= status < 300:
        return CheckResult(True, CONNECTED, status)
    return CheckResult(False, status_message(status), status)

"""'Test connection': call a provider's cheapest read endpoint with a credential.

Every address is checked against SSRF again at call time (DNS may have changed since it was
saved) and redirects are not followed. What is recorded of the outcome is the HTTP status and
a message classified from it, never the provider's own words: a provider that echoes the key
back (URL-encoded, base64, masked, upper-cased...) would otherwise have it stored and shown.

Most providers take one GET of their model list. Two need a step first, whose answer is read
only for the credentials it carries:
- Vertex AI: an access token from the service account's token_uri (a JWT signed with its key),
  then the project's model list in the region.
- AWS Bedrock: with a role ARN, temporary credentials from STS AssumeRole; then a SigV4-signed
  ListAsyncInvokes on bedrock-runtime (the runtime has no model list; this one spends nothing).
  AWS answers most refusals with 403, so its error type header, compared against a few known
  names, picks our message; the header itself is never recorded.
"""

import json
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlencode

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from django.core.exceptions import ValidationError

from gateway.bedrock import role_keys_from_sts
from gateway.errors import GatewayError
from gateway.gemini import parse_service_account, signed_assertion

from .models import Provider, ProviderCredential
from .upstream_urls import check_upstream_url

TIMEOUT_SECONDS = 5.0
MAX_ANSWER_BYTES = 65_536  # a token or STS answer is a few kB; stop reading beyond this
DEFAULT_BASES = {
    Provider.OPENAI: "https://api.openai.com/v1",
    Provider.ANTHROPIC: "https://api.anthropic.com",
    Provider.GEMINI: "https://generativelanguage.googleapis.com",
}
CONNECTED = "Connected: the provider accepted the credential."
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
STS_VERSION = "2011-06-15"
ROLE_SESSION_NAME = "gatehouse-connection-test"
AWS_REFUSALS = {
    "UnrecognizedClientException": "Authentication failed ({status}): AWS does not know this access key id.",
    "InvalidSignatureException": "Authentication failed ({status}): the secret access key does not match "
    "the access key id.",
    "ExpiredTokenException": "Authentication failed ({status}): the assumed role's credentials expired.",
    "AccessDeniedException": "Permission denied ({status}): the key may not list asynchronous invocations "
    "(bedrock:ListAsyncInvokes); calling models may still be allowed.",
}


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    message: str
    status: int | None = None  # the provider's HTTP status, when it answered


class Stop(Exception):
    """Ends a check early with its result (a refused address, a failed first step)."""

    def __init__(self, result: CheckResult) -> None:
        super().__init__(result.message)
        self.result = result


def base_url_of(credential: ProviderCredential) -> str:
    """Where the provider answers: the credential's base URL, or the provider's public API."""
    if credential.base_url:
        return credential.base_url.rstrip("/")
    if credential.provider == Provider.VERTEX_AI:
        if credential.region == "global":
            return "https://aiplatform.googleapis.com"
        return f"https://{credential.region}-aiplatform.googleapis.com"
    if credential.provider == Provider.BEDROCK:
        return f"https://bedrock-runtime.{credential.region}.amazonaws.com"
    return DEFAULT_BASES.get(credential.provider, DEFAULT_BASES[Provider.OPENAI])


def models_request(credential: ProviderCredential, secret: str) -> tuple[str, dict, dict]:
    """(url, headers, query) of the provider's model list: cheap, read-only, costs no tokens.
    For the API-key providers; Vertex AI and Bedrock sign in first (below)."""
    if credential.provider == Provider.AZURE_OPENAI:
        base = credential.azure_endpoint.rstrip("/")
        return f"{base}/openai/models", {"api-key": secret}, {"api-version": credential.azure_api_version}
    if credential.provider == Provider.ANTHROPIC:
        return f"{base_url_of(credential)}/v1/models", {"x-api-key": secret, "anthropic-version": "2023-06-01"}, {}
    if credential.provider == Provider.GEMINI:
        base = base_url_of(credential).removesuffix("/v1beta")  # as the gateway reads it
        return f"{base}/v1beta/models", {"x-goog-api-key": secret}, {"pageSize": "1"}
    return f"{base_url_of(credential)}/models", {"Authorization": f"Bearer {secret}"}, {}


# Vertex AI ---------------------------------------------------------------------------------


def google_token_request(key_file: str, now: int) -> tuple[str, dict[str, str]]:
    """(token_uri, form fields) of the token exchange: the JWT signed as the gateway signs it
    (gateway/gemini.py), so a check that passes means the gateway's exchange works too."""
    account = parse_service_account(key_file)
    return account.token_uri, {"grant_type": JWT_BEARER_GRANT, "assertion": signed_assertion(account, now)}


def vertex_models_request(credential: ProviderCredential, access_token: str) -> tuple[str, dict, dict]:
    """The project's model list in the region: checks the token, the project and the region at
    once, and spends nothing (an empty list is a success)."""
    url = f"{base_url_of(credential)}/v1/projects/{credential.project}/locations/{credential.region}/models"
    return url, {"Authorization": f"Bearer {access_token}"}, {"pageSize": "1"}


# AWS Bedrock -------------------------------------------------------------------------------


def aws_signed_headers(
    method: str,
    url: str,
    *,
    service: str,
    region: str,
    access_key_id: str,
    secret: str,
    session_token: str | None = None,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> dict[str, str]:
    """`headers` plus SigV4's (Authorization, X-Amz-Date, and the session token if any) for
    this exact method, URL and body: send the URL as given, or the signature no longer holds."""
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    SigV4Auth(Credentials(access_key_id, secret, session_token), service, region).add_auth(request)
    return dict(request.headers.items())


def sts_url(credential: ProviderCredential) -> str:
    """STS in the credential's region; with a custom base URL (a proxy, the simulator), that
    address answers STS's query API at its root."""
    if credential.base_url:
        return credential.base_url.rstrip("/") + "/"
    return f"https://sts.{credential.region}.amazonaws.com/"


def assume_role_request(credential: ProviderCredential, secret: str) -> tuple[str, dict[str, str], bytes]:
    """(url, headers, body) of STS AssumeRole for the credential's role, signed with its key."""
    url = sts_url(credential)
    body = urlencode(
        {
            "Action": "AssumeRole",
            "Version": STS_VERSION,
            "RoleArn": credential.role_arn,
            "RoleSessionName": ROLE_SESSION_NAME,
            "DurationSeconds": "900",
        }
    ).encode()
    headers = aws_signed_headers(
        "POST",
        url,
        service="sts",
        region=credential.region,
        access_key_id=credential.access_key_id,
        secret=secret,
        body=body,
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    return url, headers, body


def bedrock_list_request(
    credential: ProviderCredential, access_key_id: str, secret: str, session_token: str | None = None
) -> tuple[str, dict[str, str]]:
    """(url, headers) of a signed ListAsyncInvokes on bedrock-runtime: the address the gateway
    calls, read-only, no tokens spent."""
    url = f"{base_url_of(credential)}/async-invoke?maxResults=1"
    headers = aws_signed_headers(
        "GET",
        url,
        service="bedrock",
        region=credential.region,
        access_key_id=access_key_id,
        secret=secret,
        session_token=session_token,
        headers={"Accept": "application/json"},
    )
    return url, headers


# Classifying answers -----------------------------------------------------------------------


def status_message(status: int, listing: str = "list models") -> str:
    """The words recorded for a provider's answer: made from the status alone."""
    if 300 <= status < 400:
        return f"Redirected ({status}): redirects are not followed; check the address."
    if status == 401:
        return "Authentication failed (401): the provider refused the key."
    if status == 403:
        return f"Permission denied (403): the key may not {listing}."
    if status == 404:
        return "Not found (404): check the base URL or endpoint."
    if status == 429:
        return "Rate limited (429): the provider is throttling this key; try again later."
    if 500 <= status < 600:
        return f"Provider error ({status}): the provider failed to answer; try again later."
    if 400 <= status < 500:
        return f"Request refused ({status})."
    return f"Unexpected answer ({status})."


def aws_refusal_message(status: int, error_type: str) -> str:
    """AWS's answer in our words: its error type header (e.g. `UnrecognizedClientException:http://...`)
    selects one of ours when it is a known name; otherwise the status speaks."""
    known = AWS_REFUSALS.get(error_type.split(":", 1)[0].strip())
    if known and 400 <= status < 500:
        return known.format(status=status)
    return status_message(status, "list asynchronous invocations (bedrock:ListAsyncInvokes)")


FIRST_STEPS = {
    # step: (its name, what a 400, 401 or 403 from it means)
    "token": (
        "Token exchange",
        "the token endpoint did not accept the service-account key (deleted, disabled or another file).",
    ),
    "role": ("Role assumption", "the key may not assume this role, or AWS does not know the key."),
}


def first_step_message(step: str, status: int) -> str:
    """The words recorded when the step before the real call (token, role) fails."""
    name, refusal = FIRST_STEPS[step]
    if status in {400, 401, 403}:
        return f"{name} refused ({status}): {refusal}"
    return f"{name} failed. {status_message(status)}"


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


# Calling -----------------------------------------------------------------------------------


def _allowed(url: str, field: str, *, https_only: bool = False) -> None:
    try:
        check_upstream_url(url, field=field, https_only=https_only)
    except ValidationError as error:
        raise Stop(CheckResult(False, " ".join(error.messages))) from None


def _call(client: httpx.Client, method: str, url: str, *, read: bool = False, **kwargs) -> tuple[int, str, bytes]:
    """(status, AWS error type header, body read up to MAX_ANSWER_BYTES when `read`). Streamed:
    an answer whose body is not needed is closed unread."""
    with client.stream(method, url, **kwargs) as response:
        body = b""
        if read and 200 <= response.status_code < 300:
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    break
        return response.status_code, response.headers.get("x-amzn-errortype", ""), body[:MAX_ANSWER_BYTES]


def _outcome(status: int, message: str | None = None) -> CheckResult:
    if 200 <= status < 300:
        return CheckResult(True, CONNECTED, status)
    return CheckResult(False, message or status_message(status), status)


def _check_vertex(client: httpx.Client, credential: ProviderCredential, secret: str) -> CheckResult:
    try:
        token_uri, form = google_token_request(secret, int(time.time()))
    except GatewayError:
        return CheckResult(False, "The service-account key file could not be read: replace it.")
    _allowed(token_uri, "token_uri", https_only=True)
    status, _, answer = _call(client, "POST", token_uri, data=form, read=True)
    if not 200 <= status < 300:
        return CheckResult(False, first_step_message("token", status), status)
    try:
        access_token = json.loads(answer)["access_token"]
    except (ValueError, KeyError, TypeError):
        access_token = None
    if not isinstance(access_token, str) or not access_token:
        return CheckResult(False, "Token exchange answered without an access token.", status)
    url, headers, query = vertex_models_request(credential, access_token)
    _allowed(url, "base_url")
    status, _, _ = _call(client, "GET", url, headers=headers, params=query)
    return _outcome(status, status_message(status, "list the project's models (aiplatform.models.list)"))


def _check_bedrock(client: httpx.Client, credential: ProviderCredential, secret: str) -> CheckResult:
    key_id, key_secret, session_token = credential.access_key_id, secret, None
    if credential.role_arn:
        url, headers, body = assume_role_request(credential, secret)
        _allowed(url, "base_url")
        status, _, answer = _call(client, "POST", url, headers=headers, content=body, read=True)
        if not 200 <= status < 300:
            return CheckResult(False, first_step_message("role", status), status)
        assumed = role_keys_from_sts(answer)  # as the gateway reads it (gateway/bedrock.py)
        if assumed is None:
            return CheckResult(False, "Role assumption answered without credentials.", status)
        key_id, key_secret, session_token = assumed.access_key_id, assumed.secret, assumed.session_token
    url, headers = bedrock_list_request(credential, key_id, key_secret, session_token)
    _allowed(url, "base_url")
    status, error_type, _ = _call(client, "GET", url, headers=headers)
    return _outcome(status, aws_refusal_message(status, error_type))


def check_credential(credential: ProviderCredential, secret: str) -> CheckResult:
    try:
        with httpx.Client(timeout=TIMEOUT_SECONDS, follow_redirects=False) as client:
            if credential.provider == Provider.VERTEX_AI:
                return _check_vertex(client, credential, secret)
            if credential.provider == Provider.BEDROCK:
                return _check_bedrock(client, credential, secret)
            url, headers, query = models_request(credential, secret)
            _allowed(url, "base_url")
            status, _, _ = _call(client, "GET", url, headers=headers, params=query)
            return _outcome(status)
    except Stop as stop:
        return stop.result
    except httpx.HTTPError as error:
        return CheckResult(False, error_message(error))

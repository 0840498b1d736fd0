"""Google (Gemini API, Vertex AI) and AWS Bedrock credentials: registered and changed through the
API and the portal with their own fields and field-level errors; their secrets (an API key, a
service-account key file, an AWS secret access key) sealed, never shown again, never in an audit
diff or an API answer; base URLs and the key file's token_uri behind the SSRF guard; compiled for
the gateway with their settings; and "Test connection" building each provider's requests (checked
here by a small local server standing in for Google and AWS)."""

import hmac
import json
import re
import threading
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from django.core.exceptions import ValidationError
from django.urls import reverse

from audit.models import AuditEvent
from fleet.compile import compile_entity, gateway_key
from gateway.config import open_for_gateway
from keys.models import ProviderCredential
from keys.provider_check import (
    assume_role_request,
    base_url_of,
    bedrock_list_request,
    google_token_request,
    models_request,
    status_message,
    vertex_models_request,
)
from keys.services import create_credential, open_secret, run_credential_check
from tests.keys.recording_provider import leaks

pytestmark = pytest.mark.django_db

GEMINI_KEY = "AIzaSy-Quokka-Zephyr-canary-0123456789"
AWS_SECRET = "Quokka/Zephyr+Wombat/Narwhal+Zephyr/0042"
ACCESS_KEY_ID = "AKIAEXAMPLEID0000042"  # not secret: no canary words
ROLE_ARN = "arn:aws:iam::123456789012:role/gatehouse-llm"
CLIENT_EMAIL = "gatehouse@my-project-123.iam.gserviceaccount.com"
PRIVATE_KEY_ID = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"


# Keys and key files ------------------------------------------------------------------------


@cache
def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def pem(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def key_canaries() -> list[str]:
    """Runs of the private key's PEM body: none may appear anywhere we write."""
    body = "".join(pem(rsa_key()).splitlines()[1:-1])
    return [body[40:80], body[400:440], body[-80:-40]]


def key_file(token_uri: str, **overrides) -> dict:
    data = {
        "type": "service_account",
        "project_id": "my-project-123",
        "private_key_id": PRIVATE_KEY_ID,
        "private_key": pem(rsa_key()),
        "client_email": CLIENT_EMAIL,
        "client_id": "109876543210987654321",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "universe_domain": "googleapis.com",
    }
    data.update(overrides)
    return {name: value for name, value in data.items() if value is not None}


def key_file_text(token_uri: str = GOOGLE_TOKEN_URI, **overrides) -> str:
    return json.dumps(key_file(token_uri, **overrides), indent=2)


def assert_no_secret(text: str) -> None:
    assert leaks(text, GEMINI_KEY) == []
    assert leaks(text, AWS_SECRET) == []
    for canary in key_canaries():
        assert canary not in text
    assert "PRIVATE KEY" not in text


# Fixtures and helpers ------------------------------------------------------------------------


def api_url(name: str, *args) -> str:
    return reverse(f"api:keys:{name}", args=args)


def page_url(name: str, **kwargs) -> str:
    return reverse(f"keys:{name}", kwargs={"org_slug": "acme", **kwargs})


def post_json(client, path: str, data):
    return client.post(path, data, content_type="application/json")


def patch_json(client, path: str, data):
    return client.patch(path, data, content_type="application/json")


def field_error(response, field_id: str) -> str:
    match = re.search(rf'<ul class="errorlist" id="{field_id}_error">(.*?)</ul>', response.content.decode(), re.S)
    assert match, f"no error next to {field_id}"
    return re.sub(r"<[^>]+>", " ", match.group(1))


def last_event(org, action: str) -> AuditEvent:
    event = AuditEvent.objects.filter(org=org, action=action).order_by("-sequence").first()
    assert event is not None, f"no {action} event"
    return event


def all_audit_text(org) -> str:
    return json.dumps(list(AuditEvent.objects.filter(org=org).values_list("diff", flat=True)))


GEMINI = {"name": "Gemini", "provider": "gemini", "secrets": {"api_key": GEMINI_KEY}}
VERTEX = {"name": "Vertex", "provider": "vertex_ai", "project": "my-project-123", "region": "us-central1"}
BEDROCK = {
    "name": "Bedrock",
    "provider": "bedrock",
    "access_key_id": ACCESS_KEY_ID,
    "region": "us-east-1",
    "role_arn": ROLE_ARN,
    "secrets": {"secret_access_key": AWS_SECRET},
}


# The same, as the portal's form posts them.
GEMINI_FORM = {"name": "Gemini", "provider": "gemini", "api_key": GEMINI_KEY}
VERTEX_FORM = {**VERTEX, "service_account_json": key_file_text()}
BEDROCK_FORM = {
    "name": "Bedrock",
    "provider": "bedrock",
    "access_key_id": ACCESS_KEY_ID,
    "region": "us-east-1",
    "role_arn": ROLE_ARN,
    "secret_access_key": AWS_SECRET,
}


def vertex_body(**fields) -> dict:
    return {**VERTEX, "secrets": {"service_account_json": key_file_text()}, **fields}


def service_kwargs(body: dict) -> dict:
    return {name: value for name, value in body.items() if name != "name"}


@pytest.fixture(autouse=True)
def google_token_host(settings):
    """Google's token endpoint, allowlisted: the SSRF guard resolves hosts and tests have no DNS."""
    settings.GATEHOUSE_UPSTREAM_ALLOWLIST = [*settings.GATEHOUSE_UPSTREAM_ALLOWLIST, "oauth2.googleapis.com"]


@pytest.fixture
def vertex(org, actors, fresh_key_ring):
    return create_credential(actor=actors["admin"], org=org, **{"name": "Vertex", **service_kwargs(vertex_body())})


@pytest.fixture
def bedrock(org, actors, fresh_key_ring):
    return create_credential(actor=actors["admin"], org=org, **{"name": "Bedrock", **service_kwargs(BEDROCK)})


# The API -------------------------------------------------------------------------------------


def test_a_gemini_credential_over_the_api(client_for, org, fresh_key_ring):
    response = post_json(client_for("admin"), api_url("credential-list", "acme"), GEMINI)
    assert response.status_code == 201, response.json()
    body = response.json()
    credential = ProviderCredential.objects.get(pk=body["id"])
    assert (body["provider"], body["base_url"], body["region"], body["project"]) == ("gemini", "", "", "")
    assert body["secret_hints"]["api_key"]["last4"] == GEMINI_KEY[-4:]
    assert open_secret(credential) == GEMINI_KEY
    assert_no_secret(response.content.decode())
    event = last_event(org, "credential.created")
    assert event.diff["api_key"]["after"] == "***" + GEMINI_KEY[-4:]
    assert "region" not in event.diff  # a Gemini credential has no region
    assert_no_secret(all_audit_text(org))


@pytest.mark.parametrize("as_object", [False, True], ids=["file-as-text", "file-as-json"])
def test_a_vertex_credential_over_the_api(client_for, org, fresh_key_ring, as_object):
    key_json = key_file_text()
    secret = json.loads(key_json) if as_object else key_json
    response = post_json(
        client_for("admin"), api_url("credential-list", "acme"), {**VERTEX, "secrets": {"service_account_json": secret}}
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["project"], body["region"], body["access_key_id"]) == ("my-project-123", "us-central1", "")
    hint = body["secret_hints"]["service_account_json"]
    assert (hint["client_email"], hint["private_key_id"], hint["last4"]) == (CLIENT_EMAIL, PRIVATE_KEY_ID, "")
    credential = ProviderCredential.objects.get(pk=body["id"])
    assert json.loads(open_secret(credential)) == json.loads(key_json)
    if not as_object:
        assert open_secret(credential) == key_json
    assert_no_secret(response.content.decode())
    event = last_event(org, "credential.created")
    assert event.diff["project"] == {"before": None, "after": "my-project-123"}
    assert event.diff["region"] == {"before": None, "after": "us-central1"}
    assert event.diff["service_account_json"]["after"] == f"*** key {PRIVATE_KEY_ID} of {CLIENT_EMAIL}"
    assert_no_secret(all_audit_text(org))
    detail = client_for("auditor").get(api_url("credential-detail", "acme", credential.pk))
    assert detail.json()["secret_hints"] == body["secret_hints"]
    assert_no_secret(detail.content.decode())


def test_a_bedrock_credential_over_the_api(client_for, org, fresh_key_ring):
    response = post_json(client_for("admin"), api_url("credential-list", "acme"), BEDROCK)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["access_key_id"], body["region"], body["role_arn"], body["project"]) == (
        ACCESS_KEY_ID,
        "us-east-1",
        ROLE_ARN,
        "",
    )
    assert body["secret_hints"]["secret_access_key"]["last4"] == AWS_SECRET[-4:]
    credential = ProviderCredential.objects.get(pk=body["id"])
    assert open_secret(credential) == AWS_SECRET
    assert_no_secret(response.content.decode())
    event = last_event(org, "credential.created")
    assert event.diff["access_key_id"]["after"] == ACCESS_KEY_ID
    assert event.diff["role_arn"]["after"] == ROLE_ARN
    assert event.diff["secret_access_key"]["after"] == "***" + AWS_SECRET[-4:]
    assert_no_secret(all_audit_text(org))
    listed = client_for("auditor").get(api_url("credential-list", "acme"), {"provider": "bedrock"})
    assert [row["id"] for row in listed.json()["results"]] == [str(credential.pk)]
    assert_no_secret(listed.content.decode())


def test_settings_a_provider_does_not_use_are_not_kept(client_for, org, fresh_key_ring):
    data = {**GEMINI, "region": "us-east-1", "project": "my-project-123", "access_key_id": ACCESS_KEY_ID}
    response = post_json(client_for("admin"), api_url("credential-list", "acme"), data)
    assert response.status_code == 201, response.json()
    credential = ProviderCredential.objects.get(pk=response.json()["id"])
    assert (credential.region, credential.project, credential.access_key_id) == ("", "", "")


BAD_SERVICE_ACCOUNTS = {
    "not-json": ("{not json", "not JSON"),
    "a-list": ("[1, 2]", '"type" must be "service_account"'),
    "another-type": (key_file_text(type="authorized_user"), '"type" must be "service_account"'),
    "no-email": (key_file_text(client_email=None), "lacks client_email"),
    "no-token-uri": (key_file_text(token_uri=""), "lacks token_uri"),
    "bad-email": (key_file_text(client_email="not-an-address"), "not an email address"),
    "bad-key-id": (key_file_text(private_key_id="id with spaces"), "not a key id"),
    "not-a-key": (key_file_text(private_key="-----BEGIN PRIVATE KEY-----\nQUJD\n-----END PRIVATE KEY-----\n"), "PEM"),
    "ec-key": (key_file_text(private_key=pem(ec.generate_private_key(ec.SECP256R1()))), "RSA"),
    "short-key": (key_file_text(private_key=pem(rsa_key(1024))), "too short"),
    "http-token-uri": (key_file_text(token_uri="http://oauth2.example.com/token"), "Only https"),
    "metadata-token-uri": (key_file_text(token_uri="https://169.254.169.254/token"), "token_uri is refused"),
    "private-token-uri": (key_file_text(token_uri="https://10.0.0.8/token"), "private address"),
    "file-token-uri": (key_file_text(token_uri="file:///etc/passwd"), "Only http and https"),
    "nested": ("[" * 4000 + "]" * 4000, "not JSON"),
}


@pytest.mark.parametrize("case", BAD_SERVICE_ACCOUNTS, ids=list(BAD_SERVICE_ACCOUNTS))
def test_a_bad_service_account_file_is_refused_by_field(client_for, org, fresh_key_ring, case):
    text, message = BAD_SERVICE_ACCOUNTS[case]
    response = post_json(
        client_for("admin"), api_url("credential-list", "acme"), vertex_body(secrets={"service_account_json": text})
    )
    assert response.status_code == 400, response.content
    body = response.json()
    assert list(body) == ["service_account_json"], body
    assert message in body["service_account_json"][0]
    assert_no_secret(response.content.decode())
    assert not ProviderCredential.objects.exists()


BAD_SETTINGS = [
    (VERTEX | {"project": ""}, "project", "needs the Google Cloud project id"),
    (VERTEX | {"project": "My_Project"}, "project", "lowercase letters"),
    (VERTEX | {"project": "ab"}, "project", "6 to 30"),
    (VERTEX | {"region": ""}, "region", "needs a region"),
    (VERTEX | {"region": "us_central1"}, "region", "looks like us-central1"),
    (VERTEX | {"region": "x" * 33}, "region", "no more than 32"),
    (BEDROCK | {"access_key_id": ""}, "access_key_id", "needs the access key id"),
    (BEDROCK | {"access_key_id": "AKIA123"}, "access_key_id", "AKIA or ASIA"),
    (BEDROCK | {"access_key_id": "akiaquokkazephyr0042"}, "access_key_id", "AKIA or ASIA"),
    (BEDROCK | {"region": ""}, "region", "needs a region"),
    (BEDROCK | {"region": "useast1"}, "region", "looks like us-east-1"),
    (BEDROCK | {"role_arn": "arn:aws:iam::123:role/x"}, "role_arn", "arn:aws:iam::123456789012:role/name"),
    (BEDROCK | {"role_arn": "arn:aws:iam::123456789012:user/x"}, "role_arn", "role/name"),
    (BEDROCK | {"secrets": {"secret_access_key": "short"}}, "secret_access_key", "40 letters"),
    (BEDROCK | {"secrets": {"secret_access_key": ACCESS_KEY_ID}}, "secret_access_key", "This is an access key id"),
    (BEDROCK | {"secrets": {"secret_access_key": AWS_SECRET[:-1] + "\n"}}, "secret_access_key", "40 letters"),
    (BEDROCK | {"secrets": {"secret_access_key": AWS_SECRET + "\x00"}}, "secrets", "control characters"),
]


@pytest.mark.parametrize(("data", "field", "message"), BAD_SETTINGS)
def test_bad_settings_are_refused_by_field(client_for, org, fresh_key_ring, data, field, message):
    if "secrets" not in data:
        data = data | {"secrets": {"service_account_json": key_file_text()}}
    response = post_json(client_for("admin"), api_url("credential-list", "acme"), data)
    assert response.status_code == 400, response.content
    body = response.json()
    assert list(body) == [field], body
    assert message in " ".join(body[field])
    assert_no_secret(response.content.decode())
    assert not ProviderCredential.objects.exists()


def test_every_missing_setting_is_named_at_once(client_for, org, fresh_key_ring):
    data = {"name": "Bedrock", "provider": "bedrock", "secrets": {"api_key": GEMINI_KEY}}
    response = post_json(client_for("admin"), api_url("credential-list", "acme"), data)
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"access_key_id", "region", "secret_access_key", "secrets"}
    assert body["secrets"] == ["Unknown secret fields for bedrock: api_key."]
    assert_no_secret(response.content.decode())


SSRF_BASE_URLS = ["http://169.254.169.254/", "http://10.0.0.8/", "http://metadata.google.internal/", "file:///etc"]


@pytest.mark.parametrize("kind", ["gemini", "vertex_ai", "bedrock"])
@pytest.mark.parametrize("base_url", SSRF_BASE_URLS)
def test_ssrf_base_urls_are_refused_for_every_new_kind(client_for, org, fresh_key_ring, kind, base_url):
    data = {"gemini": GEMINI, "vertex_ai": vertex_body(), "bedrock": BEDROCK}[kind] | {"base_url": base_url}
    response = post_json(client_for("admin"), api_url("credential-list", "acme"), data)
    assert response.status_code == 400
    assert list(response.json()) == ["base_url"]
    assert not ProviderCredential.objects.exists()


def test_a_new_access_key_id_needs_its_secret(client_for, org, bedrock):
    client = client_for("admin")
    path = api_url("credential-detail", "acme", bedrock.pk)
    response = patch_json(client, path, {"access_key_id": "AKIANEWKEYID00000042"})
    assert response.status_code == 400
    assert response.json() == {"secrets": ["Enter the secret access key again to change the access key id."]}
    new_secret = "Narwhal/Ibex+0042/Zz" * 2
    response = patch_json(
        client, path, {"access_key_id": "AKIANEWKEYID00000042", "secrets": {"secret_access_key": new_secret}}
    )
    assert response.status_code == 200, response.json()
    assert response.json()["access_key_id"] == "AKIANEWKEYID00000042"
    bedrock.refresh_from_db()
    assert open_secret(bedrock) == new_secret
    event = last_event(org, "credential.secret_replaced")
    assert event.diff["access_key_id"] == {"before": ACCESS_KEY_ID, "after": "AKIANEWKEYID00000042"}
    assert event.diff["secret_access_key"] == {"before": "***" + AWS_SECRET[-4:], "after": "***" + new_secret[-4:]}
    assert_no_secret(all_audit_text(org))


def test_a_new_region_or_role_needs_no_secret(client_for, org, bedrock):
    path = api_url("credential-detail", "acme", bedrock.pk)
    response = patch_json(client_for("admin"), path, {"region": "eu-central-1", "role_arn": ""})
    assert response.status_code == 200, response.json()
    bedrock.refresh_from_db()
    assert (bedrock.region, bedrock.role_arn, bedrock.access_key_id) == ("eu-central-1", "", ACCESS_KEY_ID)
    assert open_secret(bedrock) == AWS_SECRET
    event = last_event(org, "credential.updated")
    assert event.diff == {
        "region": {"before": "us-east-1", "after": "eu-central-1"},
        "role_arn": {"before": ROLE_ARN, "after": ""},
    }


def test_a_vertex_credential_moves_only_with_its_key_file(client_for, org, vertex):
    client = client_for("admin")
    path = api_url("credential-detail", "acme", vertex.pk)
    response = patch_json(client, path, {"base_url": "http://127.0.0.1:8443"})
    assert response.status_code == 400
    assert response.json() == {
        "secrets": ["Enter the service-account key file again to change where this credential connects."]
    }
    response = patch_json(client, path, {"project": "other-project-7", "region": "europe-west4"})
    assert response.status_code == 200, response.json()
    assert (response.json()["project"], response.json()["region"]) == ("other-project-7", "europe-west4")
    response = patch_json(client, path, {"secrets": {"service_account_json": key_file_text(private_key_id="abc123")}})
    assert response.status_code == 200, response.json()
    assert response.json()["secret_hints"]["service_account_json"]["private_key_id"] == "abc123"
    event = last_event(org, "credential.secret_replaced")
    assert event.diff["service_account_json"] == {
        "before": f"*** key {PRIVATE_KEY_ID} of {CLIENT_EMAIL}",
        "after": f"*** key abc123 of {CLIENT_EMAIL}",
    }
    assert_no_secret(all_audit_text(org))


def test_the_key_files_token_uri_is_checked_when_it_is_replaced(client_for, org, vertex):
    data = {"secrets": {"service_account_json": key_file_text(token_uri="https://169.254.169.254/token")}}
    response = patch_json(client_for("admin"), api_url("credential-detail", "acme", vertex.pk), data)
    assert response.status_code == 400
    assert list(response.json()) == ["service_account_json"]
    vertex.refresh_from_db()
    assert json.loads(open_secret(vertex))["token_uri"] == "https://oauth2.googleapis.com/token"


def test_the_simulator_token_uri_passes_only_while_allowlisted(org, actors, fresh_key_ring, settings):
    text = key_file_text(token_uri="http://127.0.0.1:9/_sim/google/token")
    kwargs = service_kwargs(vertex_body(secrets={"service_account_json": text}))
    settings.GATEHOUSE_UPSTREAM_ALLOWLIST = []
    with pytest.raises(ValidationError, match="service_account_json"):
        create_credential(actor=actors["admin"], org=org, **{"name": "Vertex", **kwargs})
    settings.GATEHOUSE_UPSTREAM_ALLOWLIST = ["127.0.0.1"]
    credential = create_credential(actor=actors["admin"], org=org, **{"name": "Vertex", **kwargs})
    assert open_secret(credential) == text


# The pages ---------------------------------------------------------------------------------


def test_the_add_page_marks_each_field_with_its_providers(org, client_for):
    response = client_for("admin").get(page_url("credential_create"))
    html = response.content.decode()
    found = re.findall(r'<div data-providers="([^"]+)">\s*<div class="field[^"]*">\s*<label for="id_(\w+)"', html)
    by_field = {field: providers for providers, field in found}
    assert by_field["project"] == "vertex_ai"
    assert by_field["access_key_id"] == "bedrock"
    assert by_field["role_arn"] == "bedrock"
    assert by_field["secret_access_key"] == "bedrock"
    assert by_field["azure_endpoint"] == "azure_openai"
    assert set(by_field["api_key"].split()) == {"openai", "anthropic", "azure_openai", "openai_compatible", "gemini"}
    assert "base_url" not in by_field and "name" not in by_field  # every provider has these
    assert re.search(r'<div data-providers="vertex_ai bedrock">\s*<div class="field">\s*<label for="id_region"', html)
    # A field every provider it is for needs is not marked optional.
    assert '<label for="id_project">Google Cloud project id</label>' in html
    assert '<label for="id_secret_access_key">Secret access key</label>' in html
    assert '<label for="id_role_arn">Role ARN <span class="optional">(optional)</span></label>' in html
    # Without the script every field shows, saying which providers it is for.
    assert "Vertex AI and AWS Bedrock only." in html
    textarea = re.search(r"<textarea[^>]*name=\"service_account_json\"[^>]*>", html).group(0)
    assert 'autocomplete="off"' in textarea
    assert 'document.getElementById("id_provider")' in html
    for value, label in (("gemini", "Gemini API"), ("vertex_ai", "Vertex AI"), ("bedrock", "AWS Bedrock")):
        assert f'<option value="{value}">{label}</option>' in html


@pytest.mark.parametrize("kind", ["gemini", "vertex_ai", "bedrock"])
def test_register_each_new_kind_through_the_page(org, client_for, fresh_key_ring, kind):
    form = {"gemini": GEMINI_FORM, "vertex_ai": VERTEX_FORM, "bedrock": BEDROCK_FORM}[kind]
    client = client_for("admin")
    response = client.post(page_url("credential_create"), form)
    assert response.status_code == 302, response.content.decode()[:2000]
    credential = ProviderCredential.objects.get(org=org, provider=kind)
    assert response.url == page_url("credential_detail", credential_id=credential.pk)
    secret = {"gemini": GEMINI_KEY, "vertex_ai": form.get("service_account_json"), "bedrock": AWS_SECRET}[kind]
    assert open_secret(credential) == secret
    page = client.get(response.url).content.decode()
    assert_no_secret(page)
    assert_no_secret(all_audit_text(org))
    if kind == "vertex_ai":
        assert (credential.project, credential.region) == ("my-project-123", "us-central1")
        assert CLIENT_EMAIL in page and PRIVATE_KEY_ID[:10] in page
    if kind == "bedrock":
        assert (credential.access_key_id, credential.region, credential.role_arn) == (
            ACCESS_KEY_ID,
            "us-east-1",
            ROLE_ARN,
        )
        assert ACCESS_KEY_ID in page and ROLE_ARN in page


PAGE_ERRORS = [
    (VERTEX_FORM | {"project": ""}, "id_project", "needs the Google Cloud project id"),
    (VERTEX_FORM | {"region": "moon-base"}, "id_region", "looks like us-central1"),
    (VERTEX_FORM | {"service_account_json": ""}, "id_service_account_json", "This secret is required."),
    (VERTEX_FORM | {"service_account_json": "{}"}, "id_service_account_json", "not a service-account key file"),
    (BEDROCK_FORM | {"access_key_id": ""}, "id_access_key_id", "needs the access key id"),
    (BEDROCK_FORM | {"region": ""}, "id_region", "needs a region"),
    (BEDROCK_FORM | {"secret_access_key": ""}, "id_secret_access_key", "This secret is required."),
    (BEDROCK_FORM | {"role_arn": "nope"}, "id_role_arn", "role/name"),
    (GEMINI_FORM | {"base_url": "http://10.0.0.8/"}, "id_base_url", "private address"),
    (GEMINI_FORM | {"api_key": ""}, "id_api_key", "This secret is required."),
]


@pytest.mark.parametrize(("form", "field", "message"), PAGE_ERRORS)
def test_page_errors_sit_next_to_their_field(org, client_for, fresh_key_ring, form, field, message):
    response = client_for("admin").post(page_url("credential_create"), form)
    assert response.status_code == 400
    assert message in field_error(response, field)
    assert_no_secret(response.content.decode())
    assert not ProviderCredential.objects.exists()


def test_a_secret_pasted_as_the_access_key_id_is_not_written_back(org, client_for, fresh_key_ring):
    form = {"name": "Bedrock", "provider": "bedrock", "region": "us-east-1", "access_key_id": AWS_SECRET}
    response = client_for("admin").post(page_url("credential_create"), {**form, "secret_access_key": AWS_SECRET})
    assert response.status_code == 400
    assert field_error(response, "id_access_key_id").strip()
    assert_no_secret(response.content.decode())
    # The same when the service refuses its shape (it fits the field's length).
    form["access_key_id"] = AWS_SECRET[:20]
    response = client_for("admin").post(page_url("credential_create"), {**form, "secret_access_key": AWS_SECRET})
    assert "AKIA or ASIA" in field_error(response, "id_access_key_id")
    assert AWS_SECRET[:20] not in response.content.decode()


def test_a_bad_key_file_is_not_written_back(org, client_for, fresh_key_ring):
    text = key_file_text(token_uri="https://10.0.0.8/token")
    response = client_for("admin").post(page_url("credential_create"), {**VERTEX, "service_account_json": text})
    assert response.status_code == 400
    assert "token_uri is refused" in field_error(response, "id_service_account_json")
    assert re.search(r'<textarea[^>]*name="service_account_json"[^>]*>\s*</textarea>', response.content.decode())
    assert_no_secret(response.content.decode())


def form_controls(html: str) -> set[str]:
    return set(re.findall(r'<(?:input|select|textarea)[^>]*name="(\w+)"', html)) - {"csrfmiddlewaretoken"}


def test_the_vertex_edit_form_shows_only_its_fields(vertex, team, client_for):
    html = client_for("admin").get(page_url("credential_detail", credential_id=vertex.pk)).content.decode()
    names = form_controls(html)
    assert names == {"name", "project", "region", "base_url", "teams", "service_account_json"}
    assert '<label for="id_region">Region</label>' in html
    assert "Replace the service-account key file" in html
    assert "Changing it requires entering the service-account key file again." in html
    assert CLIENT_EMAIL in html and "my-project-123" in html
    assert_no_secret(html)


def test_the_bedrock_edit_form_shows_only_its_fields(bedrock, team, client_for):
    html = client_for("admin").get(page_url("credential_detail", credential_id=bedrock.pk)).content.decode()
    names = form_controls(html)
    assert names == {"name", "access_key_id", "region", "role_arn", "base_url", "teams", "secret_access_key"}
    assert "Replace the secret access key" in html
    assert html.count("Changing it requires entering the secret access key again.") == 2
    assert f'value="{ACCESS_KEY_ID}"' in html
    assert_no_secret(html)


def test_the_bedrock_edit_form_asks_for_the_secret_with_a_new_key_id(org, bedrock, client_for):
    client = client_for("admin")
    path = page_url("credential_detail", credential_id=bedrock.pk)
    form = {"name": "Bedrock", "access_key_id": "AKIANEWKEYID00000042", "region": "us-east-1", "role_arn": ROLE_ARN}
    response = client.post(path, form)
    assert response.status_code == 400
    assert "Enter the secret access key again" in field_error(response, "id_secret_access_key")
    response = client.post(path, {**form, "region": "us-west-2"} | {"access_key_id": ACCESS_KEY_ID})
    assert response.status_code == 302
    bedrock.refresh_from_db()
    assert bedrock.region == "us-west-2"
    assert open_secret(bedrock) == AWS_SECRET
    assert last_event(org, "credential.updated").diff == {"region": {"before": "us-east-1", "after": "us-west-2"}}


# The gateway config --------------------------------------------------------------------------


def test_the_compiled_config_carries_the_settings_and_the_sealed_secret(bedrock, vertex, org, actors):
    value = compile_entity("credential", str(bedrock.pk))
    assert (value["provider"], value["region"], value["access_key_id"], value["role_arn"], value["project"]) == (
        "bedrock",
        "us-east-1",
        ACCESS_KEY_ID,
        ROLE_ARN,
        "",
    )
    assert AWS_SECRET not in json.dumps(value)
    assert open_for_gateway(gateway_key(), value["sealed_api_key"], credential_id=str(bedrock.pk)) == AWS_SECRET
    value = compile_entity("credential", str(vertex.pk))
    assert (value["provider"], value["region"], value["project"], value["access_key_id"]) == (
        "vertex_ai",
        "us-central1",
        "my-project-123",
        "",
    )
    # Not the spellings check over the ciphertext: random base64 holds a canary word now and then.
    assert_no_secret(json.dumps({name: item for name, item in value.items() if name != "sealed_api_key"}))
    assert all(canary not in value["sealed_api_key"] for canary in key_canaries())
    opened = open_for_gateway(gateway_key(), value["sealed_api_key"], credential_id=str(vertex.pk))
    assert opened == open_secret(vertex) and json.loads(opened)["private_key"] == pem(rsa_key())
    gemini = create_credential(actor=actors["admin"], org=org, **service_kwargs(GEMINI), name="Gemini")
    value = compile_entity("credential", str(gemini.pk))
    assert (value["region"], value["project"], value["access_key_id"], value["role_arn"]) == ("", "", "", "")
    assert open_for_gateway(gateway_key(), value["sealed_api_key"], credential_id=str(gemini.pk)) == GEMINI_KEY


# Test connection: the requests ---------------------------------------------------------------


def test_default_addresses(vertex, bedrock, org, actors):
    gemini = create_credential(actor=actors["admin"], org=org, **service_kwargs(GEMINI), name="Gemini")
    assert models_request(gemini, GEMINI_KEY) == (
        "https://generativelanguage.googleapis.com/v1beta/models",
        {"x-goog-api-key": GEMINI_KEY},
        {"pageSize": "1"},
    )
    gemini.base_url = "https://generativelanguage.googleapis.com/v1beta/"
    assert models_request(gemini, GEMINI_KEY)[0] == "https://generativelanguage.googleapis.com/v1beta/models"
    assert base_url_of(vertex) == "https://us-central1-aiplatform.googleapis.com"
    url, headers, _ = vertex_models_request(vertex, "ya29.token")
    assert (
        url == "https://us-central1-aiplatform.googleapis.com/v1/projects/my-project-123/locations/us-central1/models"
    )
    assert headers == {"Authorization": "Bearer ya29.token"}
    vertex.region = "global"
    assert base_url_of(vertex) == "https://aiplatform.googleapis.com"
    url, headers = bedrock_list_request(bedrock, ACCESS_KEY_ID, AWS_SECRET)
    assert url == "https://bedrock-runtime.us-east-1.amazonaws.com/async-invoke?maxResults=1"
    assert headers["Authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/")
    assert "/us-east-1/bedrock/aws4_request" in headers["Authorization"]
    assert AWS_SECRET not in json.dumps(headers)
    url, headers, body = assume_role_request(bedrock, AWS_SECRET)
    assert url == "https://sts.us-east-1.amazonaws.com/"
    assert "/us-east-1/sts/aws4_request" in headers["Authorization"]
    assert parse_qs(body.decode())["RoleArn"] == [ROLE_ARN]


def test_the_google_assertion_is_a_jwt_signed_with_the_key(vertex):
    token_uri, form = google_token_request(open_secret(vertex), now=1_800_000_000)
    assert token_uri == "https://oauth2.googleapis.com/token"
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    header, claims = verified_jwt(form["assertion"], rsa_key().public_key())
    assert header == {"alg": "RS256", "typ": "JWT", "kid": PRIVATE_KEY_ID}
    assert claims == {
        "iss": CLIENT_EMAIL,
        "sub": CLIENT_EMAIL,
        "scope": "https://www.googleapis.com/auth/cloud-platform",
        "aud": "https://oauth2.googleapis.com/token",
        "iat": 1_800_000_000,
        "exp": 1_800_003_600,
    }
    with pytest.raises(InvalidSignature):
        verified_jwt(form["assertion"], rsa_key(1024).public_key())


def b64decode(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verified_jwt(token: str, public_key) -> tuple[dict, dict]:
    header, claims, signature = token.split(".")
    public_key.verify(b64decode(signature), f"{header}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return json.loads(b64decode(header)), json.loads(b64decode(claims))


def sigv4_holds(request: dict, secret: str, service: str, region: str) -> bool:
    """Recompute the request's SigV4 signature from what arrived (method, path, signed headers,
    body) with `secret`: it holds only if nothing was changed after signing."""
    authorization = request["headers"]["authorization"]
    fields = dict(part.strip().split("=", 1) for part in authorization.removeprefix("AWS4-HMAC-SHA256 ").split(","))
    key_id = fields["Credential"].split("/")[0]
    signed = {name: request["headers"][name] for name in fields["SignedHeaders"].split(";")}
    url = f"http://{request['headers']['host']}{request['path']}"
    rebuilt = AWSRequest(method=request["method"], url=url, data=request["body"], headers=signed)
    rebuilt.context["timestamp"] = request["headers"]["x-amz-date"]
    auth = SigV4Auth(Credentials(key_id, secret, request["headers"].get("x-amz-security-token")), service, region)
    expected = auth.signature(auth.string_to_sign(rebuilt, auth.canonical_request(rebuilt)), rebuilt)
    return hmac.compare_digest(expected, fields["Signature"])


# Test connection: against a local stand-in for Google and AWS --------------------------------


class StandIn:
    """A provider on 127.0.0.1: records every request; `answer(request)` gives (status, headers, body)."""

    def __init__(self, answer) -> None:
        self.requests: list[dict] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def handle_one(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = {
                    "method": self.command,
                    "path": self.path,
                    "headers": {name.lower(): value for name, value in self.headers.items()},
                    "body": self.rfile.read(length) if length else b"",
                }
                stand_in.requests.append(request)
                status, headers, body = answer(request)
                self.send_response(status)
                for name, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = handle_one

            def log_message(self, format, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def stand_in():
    started: list[StandIn] = []

    def start(answer) -> StandIn:
        server = StandIn(answer)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def json_answer(status: int, body: dict, headers: dict | None = None) -> tuple[int, dict, bytes]:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(body).encode()


def assert_test_recorded_no_secret(org, checked) -> None:
    event = last_event(org, "credential.tested")
    assert_no_secret(checked.last_test_message + json.dumps(event.diff))
    assert "ya29" not in checked.last_test_message + json.dumps(event.diff)


def test_a_gemini_credential_connects(org, actors, fresh_key_ring, stand_in):
    server = stand_in(lambda request: json_answer(200, {"models": []}))
    credential = create_credential(
        actor=actors["admin"], org=org, **service_kwargs(GEMINI), name="Gemini", base_url=server.url
    )
    checked = run_credential_check(actor=actors["admin"], credential=credential)
    assert (checked.last_test_ok, checked.last_test_message) == (
        True,
        "Connected: the provider accepted the credential.",
    )
    [request] = server.requests
    assert (request["method"], request["path"]) == ("GET", "/v1beta/models?pageSize=1")
    assert request["headers"]["x-goog-api-key"] == GEMINI_KEY
    assert "authorization" not in request["headers"]


def test_a_refused_gemini_key_is_reported_by_status(org, actors, fresh_key_ring, stand_in):
    server = stand_in(lambda request: json_answer(400, {"error": {"message": f"API key not valid: {GEMINI_KEY}"}}))
    credential = create_credential(
        actor=actors["admin"], org=org, **service_kwargs(GEMINI), name="Gemini", base_url=server.url
    )
    checked = run_credential_check(actor=actors["admin"], credential=credential)
    assert (checked.last_test_ok, checked.last_test_message) == (False, "Request refused (400).")
    assert_test_recorded_no_secret(org, checked)


def google(requests_seen: list, *, token_status: int = 200, models_status: int = 200):
    """A token endpoint that checks the assertion as Google would, and a Vertex model list that
    checks the token it issued."""

    def answer(request):
        if request["method"] == "POST" and request["path"] == "/token":
            form = {name: values[0] for name, values in parse_qs(request["body"].decode()).items()}
            _, claims = verified_jwt(form["assertion"], rsa_key().public_key())
            requests_seen.append(("token", form["grant_type"], claims["iss"], claims["aud"]))
            if token_status != 200:
                return json_answer(token_status, {"error": "invalid_grant", "error_description": "Invalid JWT"})
            return json_answer(200, {"access_token": "ya29.canary-token", "expires_in": 3599, "token_type": "Bearer"})
        if request["headers"].get("authorization") != "Bearer ya29.canary-token":
            return json_answer(401, {"error": {"code": 401}})
        requests_seen.append(("models", urlsplit(request["path"]).path, parse_qs(urlsplit(request["path"]).query)))
        return json_answer(models_status, {"models": []})

    return answer


def vertex_on(server, org, actors) -> ProviderCredential:
    text = key_file_text(token_uri=f"{server.url}/token")
    return create_credential(
        actor=actors["admin"],
        org=org,
        **service_kwargs(vertex_body(secrets={"service_account_json": text})),
        name="Vertex",
        base_url=server.url,
    )


def test_a_vertex_credential_signs_in_then_lists_models(org, actors, fresh_key_ring, stand_in):
    seen: list = []
    server = stand_in(google(seen))
    credential = vertex_on(server, org, actors)
    checked = run_credential_check(actor=actors["admin"], credential=credential)
    assert checked.last_test_ok is True, checked.last_test_message
    assert seen == [
        ("token", "urn:ietf:params:oauth:grant-type:jwt-bearer", CLIENT_EMAIL, f"{server.url}/token"),
        ("models", "/v1/projects/my-project-123/locations/us-central1/models", {"pageSize": ["1"]}),
    ]
    assert server.requests[0]["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert_test_recorded_no_secret(org, checked)


@pytest.mark.parametrize(
    ("token_status", "models_status", "message"),
    [
        (400, 200, "Token exchange refused (400): the token endpoint did not accept the service-account key"),
        (503, 200, "Token exchange failed. Provider error (503)"),
        (200, 403, "Permission denied (403): the key may not list the project's models (aiplatform.models.list)."),
        (200, 404, "Not found (404): check the base URL or endpoint."),
    ],
)
def test_a_vertex_failure_says_which_step(org, actors, fresh_key_ring, stand_in, token_status, models_status, message):
    server = stand_in(google([], token_status=token_status, models_status=models_status))
    checked = run_credential_check(actor=actors["admin"], credential=vertex_on(server, org, actors))
    assert checked.last_test_ok is False
    assert checked.last_test_message.startswith(message)
    assert_test_recorded_no_secret(org, checked)


def test_a_vertex_token_uri_refused_at_call_time_is_never_called(org, actors, fresh_key_ring, stand_in, settings):
    server = stand_in(google([]))
    credential = vertex_on(server, org, actors)
    settings.GATEHOUSE_UPSTREAM_ALLOWLIST = []  # as if the host were no longer allowed
    checked = run_credential_check(actor=actors["admin"], credential=credential)
    assert (checked.last_test_ok, checked.last_test_message) == (False, "Only https URLs are allowed here.")
    assert server.requests == []


ROLE_SECRET = "Temporary/Role+Secret/0123456789abcdefghij"  # the assumed role's, from STS


def aws(requests_seen: list, *, runtime_status: int = 200, error_type: str = "", sts_status: int = 200):
    """STS (at the root, the query API) and bedrock-runtime's ListAsyncInvokes, each checking the
    SigV4 signature with the secret it knows."""

    def answer(request):
        if request["method"] == "POST" and request["path"] == "/":
            form = {name: values[0] for name, values in parse_qs(request["body"].decode()).items()}
            requests_seen.append(
                ("sts", form["Action"], form["RoleArn"], sigv4_holds(request, AWS_SECRET, "sts", "us-east-1"))
            )
            if sts_status != 200:
                return (
                    sts_status,
                    {"Content-Type": "text/xml"},
                    b"<ErrorResponse><Error><Code>AccessDenied</Code></Error></ErrorResponse>",
                )
            xml = (
                '<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>'
                "<Credentials><AccessKeyId>ASIATEMPORARYKEY0042</AccessKeyId>"
                f"<SecretAccessKey>{ROLE_SECRET}</SecretAccessKey>"
                "<SessionToken>FwoGZXIvYXdzEBQaDCanaryToken//+==</SessionToken>"
                "<Expiration>2030-01-01T00:00:00Z</Expiration></Credentials></AssumeRoleResult></AssumeRoleResponse>"
            )
            return 200, {"Content-Type": "text/xml"}, xml.encode()
        temporary = request["headers"].get("x-amz-security-token")
        secret = ROLE_SECRET if temporary else AWS_SECRET
        requests_seen.append(
            (
                "runtime",
                request["method"],
                request["path"],
                temporary,
                sigv4_holds(request, secret, "bedrock", "us-east-1"),
            )
        )
        headers = {"x-amzn-ErrorType": error_type} if error_type else {}
        return json_answer(
            runtime_status, {"asyncInvokeSummaries": []} if runtime_status == 200 else {"message": AWS_SECRET}, headers
        )

    return answer


def bedrock_on(server, org, actors, **overrides) -> ProviderCredential:
    kwargs = {**service_kwargs(BEDROCK), "base_url": server.url, **overrides}
    return create_credential(actor=actors["admin"], org=org, name="Bedrock", **kwargs)


def test_a_bedrock_key_signs_its_call(org, actors, fresh_key_ring, stand_in):
    seen: list = []
    server = stand_in(aws(seen))
    checked = run_credential_check(actor=actors["admin"], credential=bedrock_on(server, org, actors, role_arn=""))
    assert checked.last_test_ok is True, checked.last_test_message
    assert seen == [("runtime", "GET", "/async-invoke?maxResults=1", None, True)]
    [request] = server.requests
    assert request["headers"]["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/")
    assert not sigv4_holds(request, AWS_SECRET[::-1], "bedrock", "us-east-1")  # the check can fail
    assert_test_recorded_no_secret(org, checked)


def test_a_bedrock_key_assumes_its_role_first(org, actors, fresh_key_ring, stand_in):
    seen: list = []
    server = stand_in(aws(seen))
    checked = run_credential_check(actor=actors["admin"], credential=bedrock_on(server, org, actors))
    assert checked.last_test_ok is True, checked.last_test_message
    assert seen == [
        ("sts", "AssumeRole", ROLE_ARN, True),
        ("runtime", "GET", "/async-invoke?maxResults=1", "FwoGZXIvYXdzEBQaDCanaryToken//+==", True),
    ]
    assert "Credential=ASIATEMPORARYKEY0042/" in server.requests[1]["headers"]["authorization"]
    assert_test_recorded_no_secret(org, checked)
    assert ROLE_SECRET not in checked.last_test_message + json.dumps(last_event(org, "credential.tested").diff)


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        ({"sts_status": 403}, "Role assumption refused (403): the key may not assume this role"),
        (
            {"runtime_status": 403, "error_type": "UnrecognizedClientException:http://internal.amazon.com/coral/"},
            "Authentication failed (403): AWS does not know this access key id.",
        ),
        (
            {"runtime_status": 403, "error_type": "InvalidSignatureException"},
            "Authentication failed (403): the secret access key does not match",
        ),
        (
            {"runtime_status": 403, "error_type": "AccessDeniedException"},
            "Permission denied (403): the key may not list asynchronous invocations",
        ),
        (
            {"runtime_status": 403, "error_type": AWS_SECRET},
            "Permission denied (403): the key may not list asynchronous invocations",
        ),
        ({"runtime_status": 429}, "Rate limited (429)"),
    ],
)
def test_a_bedrock_failure_is_told_in_our_words(org, actors, fresh_key_ring, stand_in, answers, message):
    server = stand_in(aws([], **answers))
    checked = run_credential_check(actor=actors["admin"], credential=bedrock_on(server, org, actors))
    assert checked.last_test_ok is False
    assert checked.last_test_message.startswith(message), checked.last_test_message
    assert_test_recorded_no_secret(org, checked)


# Test connection: against the provider simulator ---------------------------------------------


def test_a_gemini_credential_connects_to_the_simulator(org, actors, fresh_key_ring, provider_simulator):
    kwargs = {**service_kwargs(GEMINI), "base_url": provider_simulator.url}
    credential = create_credential(actor=actors["admin"], org=org, name="Gemini", **kwargs)
    assert run_credential_check(actor=actors["admin"], credential=credential).last_test_ok is True
    provider_simulator.configure(rejected_keys=[GEMINI_KEY])
    checked = run_credential_check(actor=actors["admin"], credential=credential)
    assert checked.last_test_ok is False
    # Google answers a bad key with 400 API_KEY_INVALID; the simulator may say 401: both are ours.
    assert checked.last_test_message in {status_message(400), status_message(401)}
    assert_test_recorded_no_secret(org, checked)


def test_a_vertex_credential_connects_to_the_simulator(org, actors, fresh_key_ring, provider_simulator):
    text = key_file_text(token_uri=f"{provider_simulator.url}/_sim/google/token")
    kwargs = {**service_kwargs(vertex_body(secrets={"service_account_json": text})), "base_url": provider_simulator.url}
    credential = create_credential(actor=actors["admin"], org=org, name="Vertex", **kwargs)
    checked = run_credential_check(actor=actors["admin"], credential=credential)
    assert checked.last_test_ok is True, checked.last_test_message
    assert provider_simulator.stats()["google-token"] == 1
    provider_simulator.configure(rejected_keys=[CLIENT_EMAIL])
    checked = run_credential_check(actor=actors["admin"], credential=credential)
    assert checked.last_test_ok is False
    assert checked.last_test_message.startswith("Token exchange refused (400)")
    assert_test_recorded_no_secret(org, checked)


def test_a_bedrock_credential_connects_to_the_simulator_which_checks_its_signature(
    org, actors, fresh_key_ring, provider_simulator
):
    """ListAsyncInvokes, signed: the simulator verifies the SigV4 signature against the secret it
    is told for the key id, so a credential holding another secret fails."""
    httpx.post(f"{provider_simulator.url}/_sim/aws/keys", json={ACCESS_KEY_ID: AWS_SECRET}, timeout=5)
    kwargs = {**service_kwargs({**BEDROCK, "role_arn": ""}), "base_url": provider_simulator.url}
    credential = create_credential(actor=actors["admin"], org=org, name="Bedrock", **kwargs)
    checked = run_credential_check(actor=actors["admin"], credential=credential)
    assert checked.last_test_ok is True, checked.last_test_message
    other = "Zephyr/Quokka+Wombat/Narwhal+Zephyr/0042"
    httpx.post(f"{provider_simulator.url}/_sim/aws/keys", json={ACCESS_KEY_ID: other}, timeout=5)
    checked = run_credential_check(actor=actors["admin"], credential=credential)
    assert checked.last_test_ok is False
    assert_test_recorded_no_secret(org, checked)
    httpx.post(f"{provider_simulator.url}/_sim/aws/keys", json={ACCESS_KEY_ID: None}, timeout=5)

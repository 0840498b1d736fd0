"""A provider's own words are never kept: a connection test records the HTTP status and a message
classified from it, so a key the provider echoes back in any spelling reaches no stored message,
audit row, page or API answer (issue 12, finding 8)."""

import importlib
import json
import socket

import pytest
from django.urls import reverse

from audit.models import AuditEvent
from keys import provider_check
from keys.models import ProviderCredential
from keys.services import create_credential, run_credential_check
from tests.keys.recording_provider import leaks

SECRET = "sk-Quokka+Zephyr/Wombat=Jynx&77"


def page_url(name: str, **kwargs) -> str:
    return reverse(f"keys:{name}", kwargs={"org_slug": "acme", **kwargs})


def api_url(name: str, *args) -> str:
    return reverse(f"api:keys:{name}", args=args)


def make_credential(org, actors, provider: str, base: str):
    connection = (
        {"azure_endpoint": base, "azure_api_version": "2024-10-21"}
        if provider == "azure_openai"
        else {"base_url": f"{base}/v1" if provider != "anthropic" else base}
    )
    return create_credential(
        actor=actors["admin"],
        org=org,
        name=f"{provider} production",
        provider=provider,
        secrets={"api_key": SECRET},
        **connection,
    )


def audit_rows_text(org) -> str:
    """Everything stored of the org's audit events that a person or an export could read."""
    rows = AuditEvent.objects.filter(org=org).values(
        "action", "actor_label", "target_type", "target_id", "target_label", "diff", "user_agent", "request_id"
    )
    return json.dumps(list(rows), default=str)


@pytest.mark.parametrize("provider", ["openai", "anthropic", "openai_compatible", "azure_openai"])
def test_a_key_echoed_back_in_any_spelling_is_kept_nowhere(
    org, actors, client_for, fresh_key_ring, recording_provider, provider
):
    host = recording_provider()
    host.status = 401
    credential = make_credential(org, actors, provider, host.url)
    client = client_for("admin")

    answers = [client.post(api_url("credential-test", "acme", credential.pk), content_type="application/json")]
    assert answers[0].json()["message"] == "Authentication failed (401): the provider refused the key."
    answers.append(client.post(page_url("credential_test", credential_id=credential.pk), follow=True))
    for path in (
        page_url("credential_detail", credential_id=credential.pk),
        page_url("credential_list"),
        reverse("audit:list", kwargs={"org_slug": "acme"}),
        api_url("credential-detail", "acme", credential.pk),
        api_url("credential-list", "acme"),
        reverse("api:audit:event-list", args=["acme"]),
    ):
        answers.append(client.get(path))

    # The host did get the key and did echo it: what follows is a real test of our side.
    assert host.secrets_received() == [SECRET, SECRET]
    credential.refresh_from_db()
    assert (credential.last_test_ok, credential.last_test_message) == (
        False,
        "Authentication failed (401): the provider refused the key.",
    )
    tested = AuditEvent.objects.filter(org=org, action="credential.tested")
    assert [event.diff["status"]["after"] for event in tested] == [401, 401]
    assert "Authentication failed (401)" in answers[1].content.decode()
    assert leaks(credential.last_test_message, SECRET) == []
    assert leaks(audit_rows_text(org), SECRET) == []
    for answer in answers:
        assert answer.status_code == 200, answer.request["PATH_INFO"]
        assert leaks(answer.content.decode(), SECRET) == [], answer.request["PATH_INFO"]


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (401, "Authentication failed (401): the provider refused the key."),
        (403, "Permission denied (403): the key may not list models."),
        (404, "Not found (404): check the base URL or endpoint."),
        (429, "Rate limited (429): the provider is throttling this key; try again later."),
        (500, "Provider error (500): the provider failed to answer; try again later."),
        (503, "Provider error (503): the provider failed to answer; try again later."),
        (418, "Request refused (418)."),
        (302, "Redirected (302): redirects are not followed; check the address."),
    ],
)
def test_an_answer_is_recorded_as_its_status_and_class(
    org, actors, fresh_key_ring, recording_provider, status, message
):
    host = recording_provider()
    host.status = status
    credential = make_credential(org, actors, "openai_compatible", host.url)
    checked = run_credential_check(actor=actors["admin"], credential=credential)
    assert (checked.last_test_ok, checked.last_test_message) == (False, message)
    event = AuditEvent.objects.get(org=org, action="credential.tested")
    assert event.diff == {"ok": {"after": False}, "status": {"after": status}, "message": {"after": message}}
    assert leaks(audit_rows_text(org), SECRET) == []


def test_a_provider_that_does_not_answer_in_time_is_reported_as_timed_out(
    org, actors, fresh_key_ring, recording_provider, monkeypatch
):
    host = recording_provider()
    host.delay = 1.0
    monkeypatch.setattr(provider_check, "TIMEOUT_SECONDS", 0.2)  # the limit, not the behaviour, is shortened
    credential = make_credential(org, actors, "openai_compatible", host.url)
    checked = run_credential_check(actor=actors["admin"], credential=credential)
    assert checked.last_test_message == "Timed out: no answer within 0.2 seconds."
    assert AuditEvent.objects.get(org=org, action="credential.tested").diff["status"] == {"after": None}


def test_a_closed_port_is_reported_as_could_not_connect(org, actors, fresh_key_ring):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    credential = make_credential(org, actors, "openai_compatible", f"http://127.0.0.1:{port}")
    checked = run_credential_check(actor=actors["admin"], credential=credential)
    assert checked.last_test_message == "Could not connect: the host refused or did not answer."


def test_a_failed_tls_handshake_is_reported_as_a_tls_error(org, actors, fresh_key_ring, recording_provider):
    host = recording_provider()  # speaks plain HTTP: a TLS client's handshake fails
    credential = make_credential(org, actors, "openai_compatible", host.url.replace("http://", "https://"))
    checked = run_credential_check(actor=actors["admin"], credential=credential)
    assert checked.last_test_message == (
        "TLS error: the secure connection could not be set up (certificate or protocol)."
    )


def test_messages_recorded_before_the_fix_keep_only_their_status(org, actors, fresh_key_ring, recording_provider):
    from django.apps import apps

    forget = importlib.import_module("keys.migrations.0003_forget_provider_words_in_test_messages")
    credential = make_credential(org, actors, "openai_compatible", recording_provider().url)
    old_words = f"The provider answered 401: Incorrect API key provided: {SECRET.upper()}"
    ProviderCredential.objects.filter(pk=credential.pk).update(last_test_ok=False, last_test_message=old_words)
    redirect = make_credential(org, actors, "openai", recording_provider().url)
    our_words = "The provider answered with a redirect (302), which is not followed."
    ProviderCredential.objects.filter(pk=redirect.pk).update(last_test_ok=False, last_test_message=our_words)

    forget.forget_provider_words(apps, None)

    credential.refresh_from_db()
    assert credential.last_test_message == (
        "Failed with status 401 (tested before answers were classified; test again)."
    )
    redirect.refresh_from_db()
    assert redirect.last_test_message == our_words

"""A stored provider secret goes only where whoever set its destination knew the secret: a new
base URL or Azure endpoint needs the secret entered again, through the API and the portal alike,
and a credential test never reaches a host chosen without it (issue 12, finding 4)."""

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from audit.models import AuditEvent
from keys.models import ProviderCredential
from keys.services import create_credential, open_secret, update_credential

SECRET = "sk-Quokka+Zephyr/Wombat=Jynx&77"
NEW_SECRET = "sk-Narwhal+Ibex/0042=Zz"
MESSAGE = "Enter the API key again to change where this credential connects."

# Per provider kind: the field that decides the destination host, and how to point it at a host.
KINDS = {
    "openai": ("base_url", "/v1"),
    "anthropic": ("base_url", ""),
    "openai_compatible": ("base_url", "/v1"),
    "azure_openai": ("azure_endpoint", ""),
}


def api_url(name: str, *args) -> str:
    return reverse(f"api:keys:{name}", args=args)


def page_url(name: str, **kwargs) -> str:
    return reverse(f"keys:{name}", kwargs={"org_slug": "acme", **kwargs})


def destination(provider: str, host) -> dict[str, str]:
    field, path = KINDS[provider]
    return {field: f"{host.url}{path}"}


def make_credential(org, actors, provider: str, host) -> ProviderCredential:
    extra = {"azure_api_version": "2024-10-21"} if provider == "azure_openai" else {}
    return create_credential(
        actor=actors["admin"],
        org=org,
        name=f"{provider} production",
        provider=provider,
        secrets={"api_key": SECRET},
        **destination(provider, host),
        **extra,
    )


@pytest.fixture
def hosts(recording_provider):
    """The credential's own provider and a host an editor would like the stored key sent to."""
    return recording_provider(), recording_provider()


def run_test_over_api(client, credential) -> dict:
    response = client.post(api_url("credential-test", "acme", credential.pk), content_type="application/json")
    assert response.status_code == 200, response.content
    return response.json()


@pytest.mark.parametrize("provider", list(KINDS))
def test_the_api_refuses_a_new_destination_without_the_secret(org, actors, client_for, fresh_key_ring, hosts, provider):
    home, chosen = hosts
    credential = make_credential(org, actors, provider, home)
    client = client_for("admin")
    events_before = AuditEvent.objects.filter(org=org).count()

    response = client.patch(
        api_url("credential-detail", "acme", credential.pk),
        destination(provider, chosen),
        content_type="application/json",
    )

    assert response.status_code == 400, response.content
    assert response.json() == {"secrets": [MESSAGE]}
    stored = ProviderCredential.objects.get(pk=credential.pk)
    field = KINDS[provider][0]
    assert getattr(stored, field) == getattr(credential, field)
    assert AuditEvent.objects.filter(org=org).count() == events_before
    assert run_test_over_api(client, credential)["ok"] is True
    assert chosen.requests == []
    assert home.secrets_received() == [SECRET]


@pytest.mark.parametrize("provider", list(KINDS))
def test_the_portal_refuses_a_new_destination_without_the_secret(
    org, actors, client_for, fresh_key_ring, hosts, provider
):
    home, chosen = hosts
    credential = make_credential(org, actors, provider, home)
    client = client_for("admin")
    form = {"name": credential.name, "base_url": credential.base_url, "api_key": ""}
    if provider == "azure_openai":
        form |= {"azure_endpoint": credential.azure_endpoint, "azure_api_version": "2024-10-21"}

    response = client.post(
        page_url("credential_detail", credential_id=credential.pk), form | destination(provider, chosen)
    )

    assert response.status_code == 400
    html = response.content.decode()
    error = html.split('id="id_api_key_error"', 1)[1].split("</ul>", 1)[0]
    assert MESSAGE in error
    assert getattr(ProviderCredential.objects.get(pk=credential.pk), KINDS[provider][0]) == getattr(
        credential, KINDS[provider][0]
    )
    client.post(page_url("credential_test", credential_id=credential.pk))
    assert chosen.requests == []
    assert home.secrets_received() == [SECRET]


def test_the_edit_form_says_a_new_destination_needs_the_key(org, actors, client_for, fresh_key_ring, hosts):
    azure = make_credential(org, actors, "azure_openai", hosts[0])
    html = client_for("admin").get(page_url("credential_detail", credential_id=azure.pk)).content.decode()
    assert "Required when you change the Azure endpoint or base URL." in html
    assert html.count("Changing it requires entering the API key again.") == 2


def test_the_service_refuses_it_for_every_caller(org, actors, fresh_key_ring, hosts):
    home, chosen = hosts
    credential = make_credential(org, actors, "openai_compatible", home)
    with pytest.raises(ValidationError) as refused:
        update_credential(
            actor=actors["owner"], credential=credential, name=credential.name, base_url=f"{chosen.url}/v1"
        )
    assert refused.value.message_dict == {"secrets": [MESSAGE]}


def test_moving_back_to_the_public_api_needs_the_secret_too(org, actors, client_for, fresh_key_ring, hosts):
    credential = make_credential(org, actors, "openai", hosts[0])
    response = client_for("admin").patch(
        api_url("credential-detail", "acme", credential.pk), {"base_url": ""}, content_type="application/json"
    )
    assert response.json() == {"secrets": [MESSAGE]}


@pytest.mark.parametrize("provider", list(KINDS))
def test_the_api_moves_a_credential_when_the_secret_is_entered_again(
    org, actors, client_for, fresh_key_ring, hosts, provider
):
    home, chosen = hosts
    credential = make_credential(org, actors, provider, home)
    client = client_for("admin")

    response = client.patch(
        api_url("credential-detail", "acme", credential.pk),
        destination(provider, chosen) | {"secrets": {"api_key": NEW_SECRET}},
        content_type="application/json",
    )

    assert response.status_code == 200, response.content
    field, path = KINDS[provider]
    assert response.json()[field] == f"{chosen.url}{path}"
    assert open_secret(ProviderCredential.objects.get(pk=credential.pk)) == NEW_SECRET
    event = AuditEvent.objects.filter(org=org).order_by("-sequence").first()
    assert event.action == "credential.secret_replaced"
    assert event.diff[field] == {"before": f"{home.url}{path}", "after": f"{chosen.url}{path}"}
    assert run_test_over_api(client, credential)["ok"] is True
    assert chosen.secrets_received() == [NEW_SECRET]
    assert home.requests == []


def test_the_portal_moves_a_credential_when_the_key_is_entered_again(org, actors, client_for, fresh_key_ring, hosts):
    home, chosen = hosts
    credential = make_credential(org, actors, "openai_compatible", home)
    client = client_for("admin")
    response = client.post(
        page_url("credential_detail", credential_id=credential.pk),
        {"name": credential.name, "base_url": f"{chosen.url}/v1", "api_key": NEW_SECRET},
    )
    assert response.status_code == 302
    assert ProviderCredential.objects.get(pk=credential.pk).base_url == f"{chosen.url}/v1"
    client.post(page_url("credential_test", credential_id=credential.pk))
    assert chosen.secrets_received() == [NEW_SECRET]
    assert home.requests == []


def test_settings_that_keep_the_destination_need_no_secret(org, actors, client_for, fresh_key_ring, hosts):
    credential = make_credential(org, actors, "azure_openai", hosts[0])
    client = client_for("admin")
    path = api_url("credential-detail", "acme", credential.pk)
    body = {"name": "Azure main", "azure_endpoint": credential.azure_endpoint, "azure_api_version": "2025-01-01"}
    response = client.patch(path, body, content_type="application/json")
    assert response.status_code == 200, response.content
    assert (response.json()["name"], response.json()["azure_api_version"]) == ("Azure main", "2025-01-01")
    assert open_secret(ProviderCredential.objects.get(pk=credential.pk)) == SECRET

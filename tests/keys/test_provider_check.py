import pytest

from audit.models import AuditEvent
from keys.services import create_credential, run_credential_check

SECRET = "sk-canary-check-55aa77bb99"


@pytest.fixture
def compatible_credential(org, actors, fresh_key_ring, provider_simulator):
    return create_credential(
        actor=actors["admin"],
        org=org,
        name="Simulated",
        provider="openai_compatible",
        base_url=f"{provider_simulator.url}/v1",
        secrets={"api_key": SECRET},
    )


def test_a_good_credential_connects(compatible_credential, actors, provider_simulator):
    checked = run_credential_check(actor=actors["admin"], credential=compatible_credential)
    assert checked.last_test_ok is True
    assert provider_simulator.stats()["models"] == 1
    event = AuditEvent.objects.get(org=checked.org, action="credential.tested")
    assert event.diff["ok"]["after"] is True


def test_a_rejected_key_is_reported_by_its_status_not_the_providers_words(
    compatible_credential, actors, provider_simulator
):
    provider_simulator.configure(rejected_keys=[SECRET])
    checked = run_credential_check(actor=actors["admin"], credential=compatible_credential)
    assert checked.last_test_ok is False
    assert checked.last_test_message == "Authentication failed (401): the provider refused the key."


def test_an_anthropic_credential_checks_with_its_own_headers(org, actors, fresh_key_ring, provider_simulator):
    credential = create_credential(
        actor=actors["admin"],
        org=org,
        name="Claude",
        provider="anthropic",
        base_url=provider_simulator.url,
        secrets={"api_key": SECRET},
    )
    assert run_credential_check(actor=actors["admin"], credential=credential).last_test_ok is True


def test_an_unreachable_provider_is_reported_in_words(org, actors, fresh_key_ring):
    credential = create_credential(
        actor=actors["admin"],
        org=org,
        name="Down",
        provider="openai_compatible",
        base_url="http://127.0.0.1:9/v1",
        secrets={"api_key": SECRET},
    )
    checked = run_credential_check(actor=actors["admin"], credential=credential)
    assert checked.last_test_ok is False
    assert checked.last_test_message.startswith("Could not connect")

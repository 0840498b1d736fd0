import logging

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from audit.models import AuditEvent
from keys.crypto import DecryptionError, KeyRingError, generate_key_text
from keys.key_ring import verify_key_ring
from keys.models import ProviderCredential
from keys.services import create_credential, open_secret, rewrap_credential, update_credential
from orgs.services import create_team

CANARY = "sk-canary-7f3a9c1e5b2d4680aa"


def database_rows_containing(text: str) -> list[str]:
    found = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f'SELECT count(*) FROM "{table}" t WHERE t::text LIKE %s', [f"%{text}%"])  # noqa: S608
            if cursor.fetchone()[0]:
                found.append(table)
    return found


@pytest.fixture
def credential(org, actors, fresh_key_ring):
    return create_credential(
        actor=actors["admin"], org=org, name="OpenAI prod", provider="openai", secrets={"api_key": CANARY}
    )


def test_secret_is_sealed_and_opens(credential, caplog):
    caplog.set_level(logging.DEBUG)
    assert open_secret(credential) == CANARY
    assert database_rows_containing(CANARY) == []
    assert database_rows_containing(CANARY[-12:]) == []
    assert credential.secret_hints["api_key"]["last4"] == CANARY[-4:]
    assert CANARY not in caplog.text


def test_audit_diff_is_redacted(credential):
    event = AuditEvent.objects.get(org=credential.org, action="credential.created")
    assert event.diff["api_key"]["after"] == "***" + CANARY[-4:]
    assert CANARY not in str(event.diff)


def test_replacing_a_secret_seals_a_new_one(credential, actors):
    old_sealed = credential.sealed_secrets["api_key"]
    update_credential(
        actor=actors["admin"], credential=credential, name=credential.name, secrets={"api_key": "sk-new-secret-0000111"}
    )
    credential.refresh_from_db()
    assert credential.sealed_secrets["api_key"] != old_sealed
    assert open_secret(credential) == "sk-new-secret-0000111"
    event = AuditEvent.objects.get(org=credential.org, action="credential.secret_replaced")
    assert event.diff["api_key"] == {"before": "***" + CANARY[-4:], "after": "***0111"}


def test_ciphertext_moved_to_another_credential_or_org_does_not_open(credential, other_org, actors, fresh_key_ring):
    from tests.conftest import SYSTEM

    other = create_credential(
        actor=SYSTEM, org=other_org, name="Theirs", provider="openai", secrets={"api_key": "sk-theirs-000000000"}
    )
    # An attacker with database access copies our sealed secret and wrapped key into their row.
    ProviderCredential.objects.filter(pk=other.pk).update(
        sealed_secrets=credential.sealed_secrets, wrapped_data_key=credential.wrapped_data_key
    )
    other.refresh_from_db()
    with pytest.raises(DecryptionError):
        open_secret(other)


@pytest.mark.parametrize(
    ("fields", "error_field"),
    [
        ({"provider": "openai", "secrets": {"api_key": ""}}, "api_key"),
        ({"provider": "openai", "secrets": {"api_key": "x" * 1_000_000}}, "api_key"),
        ({"provider": "nope", "secrets": {"api_key": "sk-1"}}, "provider"),
        ({"provider": "openai_compatible", "secrets": {"api_key": "sk-1"}}, "base_url"),
        (
            {"provider": "openai_compatible", "secrets": {"api_key": "sk-1"}, "base_url": "http://169.254.169.254/"},
            "base_url",
        ),
        ({"provider": "azure_openai", "secrets": {"api_key": "sk-1"}}, "azure_endpoint"),
        ({"provider": "openai", "secrets": {"api_key": "sk-1", "extra": "x"}}, "secrets"),
    ],
)
def test_bad_credential_input_is_refused_with_field_errors(org, actors, fresh_key_ring, fields, error_field):
    with pytest.raises(ValidationError) as error:
        create_credential(actor=actors["admin"], org=org, name="Bad", **fields)
    assert error_field in error.value.message_dict
    assert not ProviderCredential.objects.filter(org=org).exists()


def test_team_of_another_org_is_refused(org, other_org, actors, fresh_key_ring):
    theirs = other_org.teams.first()
    with pytest.raises(ValidationError) as error:
        create_credential(
            actor=actors["admin"], org=org, name="X", provider="openai", secrets={"api_key": "sk-123"}, teams=[theirs]
        )
    assert "teams" in error.value.message_dict


def test_rotate_kek_interrupted_and_rerun_moves_every_row(org, actors, fresh_key_ring):
    first_key = generate_key_text()
    fresh_key_ring({1: first_key})
    teams = [create_team(actor=actors["admin"], org=org, name=f"T{i}") for i in range(2)]
    credentials = [
        create_credential(
            actor=actors["admin"],
            org=org,
            name=f"cred {i}",
            provider="openai",
            secrets={"api_key": f"sk-secret-number-{i:04d}"},
            teams=teams[: i % 3],
        )
        for i in range(10)
    ]
    sealed_before = {c.pk: c.sealed_secrets for c in credentials}
    fresh_key_ring({1: first_key, 2: generate_key_text()})
    # The first run "crashes" after four rows.
    for credential in credentials[:4]:
        assert rewrap_credential(credential.pk, from_version=1)
    assert not rewrap_credential(credentials[0].pk, from_version=1)  # compare-and-set: already moved
    call_command("rotate_kek")
    for credential in ProviderCredential.objects.filter(org=org):
        assert credential.kek_version == 2
        assert credential.sealed_secrets == sealed_before[credential.pk]
    assert AuditEvent.objects.filter(org=org, action="credential.kek_rotated").count() == 10
    # Version 1 can now be dropped; every secret still opens.
    fresh_key_ring({2: settings_ring_key(2)})
    for i, credential in enumerate(sorted(ProviderCredential.objects.filter(org=org), key=lambda c: c.name)):
        assert open_secret(credential) == f"sk-secret-number-{i:04d}"


def settings_ring_key(version: int) -> str:
    from django.conf import settings

    return settings.GATEHOUSE_KEK_RING[version]


def test_a_wrong_key_ring_refuses_to_start(credential, fresh_key_ring):
    fresh_key_ring({1: generate_key_text()})
    with pytest.raises(KeyRingError, match="not the key this database was sealed with"):
        verify_key_ring()


def test_dropping_a_version_still_in_use_refuses_to_start(credential, fresh_key_ring):
    fresh_key_ring({2: generate_key_text()})
    with pytest.raises(KeyRingError, match=r"sealed under key-ring version\(s\) \[1\]"):
        verify_key_ring()


def test_rotate_kek_with_a_wrong_ring_fails_loudly(credential, fresh_key_ring):
    fresh_key_ring({1: generate_key_text(), 2: generate_key_text()})
    with pytest.raises(CommandError):
        call_command("rotate_kek")

import pytest

from keys import crypto

ORG, CREDENTIAL = "org-1", "cred-1"


def ring(*versions: int) -> crypto.KeyRing:
    return crypto.KeyRing({v: crypto.decode_key(crypto.generate_key_text(), f"k{v}") for v in versions})


def test_seal_and_open_round_trip():
    key_ring = ring(1)
    data_key = crypto.new_data_key()
    wrapped, version = crypto.wrap_data_key(key_ring, data_key, org_id=ORG, credential_id=CREDENTIAL)
    assert version == 1
    sealed = crypto.seal_field(data_key, "sk-canary-123456", org_id=ORG, credential_id=CREDENTIAL, field="api_key")
    assert "sk-canary" not in sealed
    opened_key = crypto.unwrap_data_key(key_ring, wrapped, version, org_id=ORG, credential_id=CREDENTIAL)
    assert crypto.open_field(opened_key, sealed, org_id=ORG, credential_id=CREDENTIAL, field="api_key") == (
        "sk-canary-123456"
    )


@pytest.mark.parametrize(
    ("org_id", "credential_id", "field"),
    [("org-2", CREDENTIAL, "api_key"), (ORG, "cred-2", "api_key"), (ORG, CREDENTIAL, "other_field")],
)
def test_a_ciphertext_moved_elsewhere_does_not_open(org_id, credential_id, field):
    data_key = crypto.new_data_key()
    sealed = crypto.seal_field(data_key, "secret-value", org_id=ORG, credential_id=CREDENTIAL, field="api_key")
    with pytest.raises(crypto.DecryptionError):
        crypto.open_field(data_key, sealed, org_id=org_id, credential_id=credential_id, field=field)


def test_a_wrapped_key_moved_to_another_credential_does_not_unwrap():
    key_ring = ring(1)
    wrapped, version = crypto.wrap_data_key(key_ring, crypto.new_data_key(), org_id=ORG, credential_id=CREDENTIAL)
    with pytest.raises(crypto.DecryptionError):
        crypto.unwrap_data_key(key_ring, wrapped, version, org_id=ORG, credential_id="cred-2")


def test_wrong_key_ring_fails_closed():
    wrapped, version = crypto.wrap_data_key(ring(1), crypto.new_data_key(), org_id=ORG, credential_id=CREDENTIAL)
    with pytest.raises(crypto.DecryptionError):
        crypto.unwrap_data_key(ring(1), wrapped, version, org_id=ORG, credential_id=CREDENTIAL)
    with pytest.raises(crypto.DecryptionError, match="version 1 is not configured"):
        crypto.unwrap_data_key(ring(2), wrapped, version, org_id=ORG, credential_id=CREDENTIAL)


def test_newest_version_wraps():
    _, version = crypto.wrap_data_key(ring(1, 3, 2), crypto.new_data_key(), org_id=ORG, credential_id=CREDENTIAL)
    assert version == 3


@pytest.mark.parametrize("text", ["", "not base64!!", "c2hvcnQ", "A" * 100])
def test_malformed_keys_are_refused(text):
    with pytest.raises(crypto.KeyRingError):
        crypto.decode_key(text, "GATEHOUSE_KEK_1")


def test_tampered_ciphertext_does_not_open():
    data_key = crypto.new_data_key()
    sealed = crypto.seal_field(data_key, "secret-value", org_id=ORG, credential_id=CREDENTIAL, field="api_key")
    flipped = sealed[:-4] + ("AAAA" if sealed[-4:] != "AAAA" else "BBBB")
    with pytest.raises(crypto.DecryptionError):
        crypto.open_field(data_key, flipped, org_id=ORG, credential_id=CREDENTIAL, field="api_key")

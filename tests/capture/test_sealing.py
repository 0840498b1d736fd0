"""The gateway's side of content capture (gateway/capture.py) and redaction (capture/redact.py):
no database."""

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from capture import redact
from gateway import capture


def org_key():
    private = X25519PrivateKey.generate()
    return private, private.public_key().public_bytes_raw()


def test_what_a_worker_seals_opens_only_with_the_orgs_key_for_that_request():
    private, public = org_key()
    sealer = capture.Sealer()
    plaintext = capture.pack_plaintext(b'{"messages": "hi"}', b'{"answer": "hello"}', 1024)
    sealed = sealer.seal(public, request_id="r1", org_id="o1", plaintext=plaintext)
    assert b"hello" not in sealed and b"messages" not in sealed
    assert capture.open_sealed(private, sealed, request_id="r1", org_id="o1") == plaintext
    with pytest.raises(capture.CaptureError):  # moved to another request
        capture.open_sealed(private, sealed, request_id="r2", org_id="o1")
    with pytest.raises(capture.CaptureError):  # another org's key
        capture.open_sealed(org_key()[0], sealed, request_id="r1", org_id="o1")
    altered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(capture.CaptureError):
        capture.open_sealed(private, altered, request_id="r1", org_id="o1")


def test_a_worker_reuses_its_ephemeral_key_per_org():
    (_, first), (_, second) = org_key(), org_key()
    sealer = capture.Sealer()
    one = sealer.seal(first, request_id="a", org_id="o", plaintext=b"x")
    two = sealer.seal(first, request_id="b", org_id="o", plaintext=b"x")
    other = sealer.seal(second, request_id="a", org_id="o", plaintext=b"x")
    size = capture.PUBLIC_KEY_BYTES
    assert one[:size] == two[:size] != other[:size]
    assert one[size : size + capture.NONCE_BYTES] != two[size : size + capture.NONCE_BYTES]


def test_content_is_cut_at_the_limit_and_says_so():
    captured = capture.unpack_plaintext(capture.pack_plaintext(b"p" * 10, b"a" * 3, 5))
    assert (captured.prompt, captured.answer) == (b"p" * 5, b"aaa")
    assert (captured.prompt_cut, captured.answer_cut) == (True, False)
    with pytest.raises(capture.CaptureError):
        capture.unpack_plaintext(b"\x00\x00\x00\x00\xff")


SECRETS = [
    "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0K1l2",
    "sk-ant-api03-" + "x" * 30,
    "gh_" + "Zq" * 16,
    "AKIA" + "ABCDEFGHIJKLMNOP",
    "AIza" + "S" * 35,
    "ghp_" + "a" * 36,
    "xoxb-" + "1234567890-abcdef",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "Bearer " + "t0k3n" * 5,
    "-----BEGIN RSA PRIVATE KEY-----\\nMIIEpAIBAAKCAQEA\\n-----END RSA PRIVATE KEY-----",
]


@pytest.mark.parametrize("secret", SECRETS)
def test_built_in_patterns_redact_common_secrets(secret):
    text, count = redact.redact(f'{{"content": "my key is {secret} ok"}}', [])
    assert secret not in text and redact.REPLACEMENT in text and count == 1 and text.endswith(' ok"}')


def test_org_patterns_redact_too_and_a_slow_one_fails_closed():
    patterns = redact.compile_patterns([r"\b\d{3}-\d{2}-\d{4}\b", "(unclosed"])  # the broken one is left out
    text, count = redact.redact("ssn 123-45-6789 and 987-65-4321", patterns)
    assert (text, count) == (f"ssn {redact.REPLACEMENT} and {redact.REPLACEMENT}", 2)
    slow = redact.compile_patterns([r"(a|aa)+$"])
    with pytest.raises(redact.Unredactable):
        redact.redact("a" * 64 + "!", slow)


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("", "empty"),
        ("(unclosed", "Not a valid regular expression"),
        ("x" * 201, "at most 200"),
        ("(a|aa)+$", "takes too long"),
        ("a*", "matches empty text"),
    ],
)
def test_an_org_pattern_is_checked_before_it_is_saved(pattern, why):
    assert why in redact.check_pattern(pattern)
    assert redact.check_pattern(r"\bproject-[a-z]+\b") == ""

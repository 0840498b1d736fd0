import pytest
from django.core.exceptions import ValidationError

from keys.upstream_urls import check_upstream_url


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://0x7f000001/",
        "http://2130706433/",
        "file:///etc/passwd",
        "gopher://example.com/",
        "http://10.0.0.5/v1",
        "http://192.168.1.1/",
        "http://[fd00:ec2::254]/",
        "http://metadata.google.internal/",
        "http://user:pass@example.com/",
        "http://0.0.0.0/",
        "http://[::ffff:127.0.0.1]/",
    ],
)
def test_ssrf_targets_are_refused(url, settings):
    settings.GATEHOUSE_UPSTREAM_ALLOWLIST = ["127.0.0.1", "localhost"]
    with pytest.raises(ValidationError) as error:
        check_upstream_url(url)
    assert "base_url" in error.value.message_dict


def test_allowlisted_simulator_host_is_accepted(settings):
    settings.GATEHOUSE_UPSTREAM_ALLOWLIST = ["127.0.0.1"]
    assert check_upstream_url("http://127.0.0.1:9999/v1") == "http://127.0.0.1:9999/v1"


def test_loopback_is_refused_without_the_allowlist(settings):
    settings.GATEHOUSE_UPSTREAM_ALLOWLIST = []
    with pytest.raises(ValidationError, match="loopback"):
        check_upstream_url("http://127.0.0.1:9999/v1")


def test_a_hostname_resolving_to_a_private_address_is_refused(settings):
    # "localhost" resolves to loopback through /etc/hosts on every machine, no network needed.
    settings.GATEHOUSE_UPSTREAM_ALLOWLIST = []
    with pytest.raises(ValidationError, match="loopback"):
        check_upstream_url("http://localhost:8080/")

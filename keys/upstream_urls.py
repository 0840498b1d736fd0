"""Server-side request forgery guard for provider base URLs.

A custom base URL is resolved and refused when any address it resolves to is loopback,
private, link-local, multicast, reserved or a cloud metadata address, unless its host is in
GATEHOUSE_UPSTREAM_ALLOWLIST (development and tests allowlist the provider simulator).
"""

import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError

METADATA_ADDRESSES = {
    ipaddress.ip_address("169.254.169.254"),
    ipaddress.ip_address("169.254.170.2"),
    ipaddress.ip_address("100.100.100.200"),
    ipaddress.ip_address("fd00:ec2::254"),
}
METADATA_HOSTS = {"metadata.google.internal", "metadata", "instance-data"}


def _refused_reason(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    for test, reason in (
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (address.is_private, "a private address"),
        (address.is_reserved, "a reserved address"),
        (address.is_unspecified, "an unspecified address"),
    ):
        if test:
            return reason
    return None


def check_upstream_url(url: str, *, field: str = "base_url", https_only: bool = False) -> str:
    """The URL, normalised, if it may be called; a ValidationError naming `field` if not.
    `https_only` refuses plain http except to an allowlisted host (the simulator)."""
    url = url.strip()
    if len(url) > 500:
        raise ValidationError({field: ["The URL is too long (500 characters at most)."]})
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port out of range or not a number
    except ValueError:
        raise ValidationError({field: ["Enter a valid URL."]}) from None
    if parts.scheme not in {"http", "https"}:
        raise ValidationError({field: ["Only http and https URLs are allowed."]})
    if parts.username or parts.password:
        raise ValidationError({field: ["Credentials in the URL are not allowed; use the secret fields."]})
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise ValidationError({field: ["The URL has no host."]})
    allowlist = {entry.lower() for entry in settings.GATEHOUSE_UPSTREAM_ALLOWLIST}
    allowlisted = host in allowlist or bool(port and f"{host}:{port}" in allowlist)
    if https_only and parts.scheme != "https" and not allowlisted:
        raise ValidationError({field: ["Only https URLs are allowed here."]})
    if allowlisted:
        return url
    if host in METADATA_HOSTS:
        raise ValidationError({field: ["This host is a cloud metadata service."]})
    try:
        infos = socket.getaddrinfo(host, port or (443 if parts.scheme == "https" else 80), proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        raise ValidationError({field: [f"The host {host!r} does not resolve."]}) from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        reason = _refused_reason(address)
        if reason:
            raise ValidationError({field: [f"The host {host!r} resolves to {reason}, which is not allowed."]})
    return url

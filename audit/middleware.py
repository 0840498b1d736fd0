import ipaddress
import re
import uuid

from django.conf import settings

from .context import RequestMeta, request_meta

REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def client_ip(request) -> str | None:
    """The client's address: REMOTE_ADDR, or behind N trusted proxies (DJANGO_BEHIND_PROXY)
    the Nth address from the right of X-Forwarded-For, which the client cannot forge."""
    trusted = getattr(settings, "ALLAUTH_TRUSTED_PROXY_COUNT", 0)
    address = request.META.get("REMOTE_ADDR") or None
    if trusted:
        hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
        if len(hops) >= trusted:
            address = hops[-trusted]
    try:
        return str(ipaddress.ip_address(address)) if address else None
    except ValueError:
        return None


class RequestContextMiddleware:
    """Gives every request an id (kept from X-Request-ID when well-formed) and exposes the
    client IP, user agent and id to audit recording."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if REQUEST_ID_PATTERN.match(incoming) else uuid.uuid4().hex
        request.request_id = request_id
        meta = RequestMeta(
            ip=client_ip(request),
            user_agent=request.headers.get("User-Agent", "")[:512],
            request_id=request_id,
        )
        token = request_meta.set(meta)
        try:
            response = self.get_response(request)
        finally:
            request_meta.reset(token)
        response["X-Request-ID"] = request_id
        return response

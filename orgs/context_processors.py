from .models import Membership
from .roles import CAPABILITIES


def current_org(request) -> dict:
    """The org in the URL (if any), the user's orgs for the switcher, and what the nav may show."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    slug = getattr(getattr(request, "resolver_match", None), "kwargs", {}).get("org_slug")
    memberships = list(Membership.objects.filter(user=user).select_related("org").order_by("org__name"))
    current = next((m for m in memberships if m.org.slug == slug), None)
    return {
        "user_memberships": memberships,
        "current_membership": current,
        "current_org": current.org if current else None,
        "current_caps": CAPABILITIES.get(current.role, frozenset()) if current else frozenset(),
    }

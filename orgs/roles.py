"""The org roles of DESIGN.md and what each may do.

A role is a set of capabilities. Access checks ask for a capability, never a role name, and
"nobody can grant more than they hold" is a subset test on these sets.
"""

from django.db import models


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    FINANCE = "finance", "Finance"
    AUDITOR = "auditor", "Auditor"
    DEVELOPER = "developer", "Developer"
    VIEWER = "viewer", "Viewer"


# Capabilities, named "<area>.<verb>".
VIEWER_CAPS = frozenset({"org.read", "teams.read"})
# content.read: read the captured content of the requests one may see (capture/), audited.
DEVELOPER_CAPS = VIEWER_CAPS | {"members.read", "keys.own", "content.read"}
READ_EVERYTHING = frozenset(
    {
        "org.read",
        "teams.read",
        "members.read",
        "invitations.read",
        "tokens.read",
        "keys.read",
        "credentials.read",
        "routes.read",
        "budgets.read",
        "spend.read",
        "fleet.read",
        "sla.read",
    }
)
AUDITOR_CAPS = READ_EVERYTHING | {"audit.read", "audit.export", "content.read"}
FINANCE_CAPS = READ_EVERYTHING | {"budgets.manage", "prices.manage", "spend.export"}
ADMIN_CAPS = (
    AUDITOR_CAPS
    | FINANCE_CAPS
    | DEVELOPER_CAPS
    | {
        "org.manage",
        "members.manage",
        "invitations.manage",
        "teams.manage",
        "tokens.manage",
        "keys.manage",
        "credentials.manage",
        "routes.manage",
        "sla.manage",
        "fleet.manage",
    }
)
OWNER_CAPS = ADMIN_CAPS | {"owners.manage", "org.delete"}

CAPABILITIES: dict[str, frozenset[str]] = {
    Role.OWNER: frozenset(OWNER_CAPS),
    Role.ADMIN: frozenset(ADMIN_CAPS),
    Role.FINANCE: frozenset(FINANCE_CAPS),
    Role.AUDITOR: frozenset(AUDITOR_CAPS),
    Role.DEVELOPER: frozenset(DEVELOPER_CAPS),
    Role.VIEWER: frozenset(VIEWER_CAPS),
}

# Roles that an org's "require MFA" setting applies to.
MFA_REQUIRED_ROLES = frozenset({Role.OWNER, Role.ADMIN})


def role_can(role: str, capability: str) -> bool:
    return capability in CAPABILITIES.get(role, frozenset())


# Most rights first: a role comes before every role whose capabilities are a subset of its own.
ROLES_BY_RIGHTS = [str(role) for role in sorted(CAPABILITIES, key=lambda role: len(CAPABILITIES[role]), reverse=True)]


def lower_role(first: str, second: str) -> str:
    """The lower of two roles; where neither includes the other (finance and auditor), the
    highest role whose rights both hold. What an API token acts as: its own role capped by its
    creator's current one."""
    both = CAPABILITIES[first] & CAPABILITIES[second]
    return next(role for role in ROLES_BY_RIGHTS if CAPABILITIES[role] <= both)


def can_grant(granter_role: str, role: str) -> bool:
    """A role may be granted only by someone whose capabilities include all of its own."""
    return CAPABILITIES[role] <= CAPABILITIES.get(granter_role, frozenset())

"""Who is acting and from which request, for audit events.

The request middleware fills `request_meta` for the duration of a request; services take an
explicit `actor` and read the request metadata from here, so tasks and commands need none.
"""

from dataclasses import dataclass, field

from controlplane.request_context import RequestMeta, request_meta

__all__ = ["Actor", "RequestMeta", "request_meta"]


@dataclass(frozen=True)
class Actor:
    kind: str  # "user", "token" or "system"
    id: str = ""
    label: str = ""
    role: str = ""  # the actor's role in the org being acted on, when there is one
    user_id: int | None = None
    capabilities: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def system(cls, label: str = "system") -> "Actor":
        return cls(kind="system", label=label)

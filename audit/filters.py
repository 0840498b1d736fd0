"""Apply AuditFilterForm's cleaned values to a queryset of audit events. The page, the API and
exports all filter through `filter_events`, so they agree on what a filter means."""

import ipaddress

from django.db.models import CharField, Q, QuerySet
from django.db.models.functions import Cast

from keys.models import CallerKey

from .forms import TEXT_LIMITS


def _cannot_match(field: str, value: str) -> bool:
    # Longer than the column, or holding a NUL PostgreSQL refuses in a parameter: no row matches.
    return len(value) > TEXT_LIMITS[field] or "\x00" in value


def filter_events(queryset: QuerySet, cleaned: dict) -> QuerySet:
    """The events of `queryset` that match every filter given in `cleaned` (empty ones are skipped)."""
    for field in TEXT_LIMITS:
        if cleaned.get(field) and _cannot_match(field, cleaned[field]):
            return queryset.none()
    if cleaned.get("since"):
        queryset = queryset.filter(created_at__gte=cleaned["since"])
    if cleaned.get("until"):
        queryset = queryset.filter(created_at__lte=cleaned["until"])
    if actor := cleaned.get("actor"):
        queryset = queryset.filter(Q(actor_label__icontains=actor) | Q(actor_id=actor))
    if action := cleaned.get("action"):
        # A family ends with a dot: "member." is every member.* action.
        family = action.endswith(".")
        queryset = queryset.filter(action__startswith=action) if family else queryset.filter(action=action)
    if cleaned.get("target_type"):
        queryset = queryset.filter(target_type=cleaned["target_type"])
    if cleaned.get("target"):
        queryset = queryset.filter(target_id=cleaned["target"])
    if team := cleaned.get("team"):
        key_ids = CallerKey.objects.filter(team_id=team).annotate(text_id=Cast("id", CharField())).values("text_id")
        queryset = queryset.filter(
            Q(target_type="team", target_id=str(team)) | Q(target_type="caller_key", target_id__in=key_ids)
        )
    if (ip := cleaned.get("ip")) is not None:
        if isinstance(ip, ipaddress.IPv4Network | ipaddress.IPv6Network):
            # inet orders by family, then address: a network is the range of its host addresses.
            queryset = queryset.filter(ip__gte=str(ip.network_address), ip__lte=str(ip.broadcast_address))
        else:
            queryset = queryset.filter(ip=str(ip))
    if q := cleaned.get("q"):
        queryset = queryset.filter(target_label__icontains=q)
    return queryset

"""What every signed-in page says about config publishing: changes committed in the portal take
effect in the gateways only once published to Redis, so the portal says when they wait."""

from django.conf import settings
from django.utils.functional import SimpleLazyObject

from .selectors import PublishState, publish_state


class PublishBanner:
    """Read by templates/_partials/publish_banner.html; computed only if a page shows it."""

    def __init__(self, state: PublishState):
        self.state = state
        self.age_seconds = round(state.age_seconds())
        self.threshold_seconds = settings.GATEHOUSE_PUBLISH_LAG_WARNING_SECONDS
        self.pending = state.unpublished_since is not None
        self.late = self.pending and self.age_seconds >= self.threshold_seconds
        self.redis_unreachable = state.redis_revision is None


def publish_status(request) -> dict:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {"publish_banner": SimpleLazyObject(lambda: PublishBanner(publish_state()))}

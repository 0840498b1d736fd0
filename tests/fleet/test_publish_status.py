"""The portal tells the truth about config publishing (issue 11, observation 5): a change saved
in the portal is shown as pending until it reaches Redis, where the gateways load it, and a
warning appears once a change has waited longer than GATEHOUSE_PUBLISH_LAG_WARNING_SECONDS."""

import socket
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.test import TestCase
from django.urls import reverse
from django.utils import timezone

from fleet import services
from fleet.models import PendingConfigChange
from fleet.redis_client import redis_keys
from fleet.selectors import publish_state
from keys.services import revoke_key

pytestmark = pytest.mark.django_db


def key_page(served) -> str:
    return reverse("keys:detail", kwargs={"org_slug": "acme", "key_id": served["key"].pk})


def revoke_without_publishing(served, actors) -> None:
    """Revoke, with the on-commit publish request dropped (as when the broker is down)."""
    with TestCase.captureOnCommitCallbacks(execute=False):
        revoke_key(actor=actors["admin"], key=served["key"])


def test_a_revocation_shows_pending_publish_until_it_reaches_redis(served, actors, client_for):
    client = client_for("admin")
    assert "Pending publish" not in client.get(key_page(served)).content.decode()

    revoke_without_publishing(served, actors)
    page = client.get(key_page(served)).content.decode()
    assert "Pending publish" in page  # the key's badge and the page's status line
    assert "on their way to the gateways" in page
    assert publish_state().pending_changes == 1

    services.publish_pending()
    page = client.get(key_page(served)).content.decode()
    assert "Pending publish" not in page
    assert publish_state().age_seconds() == 0


def test_a_change_waiting_past_the_threshold_raises_a_warning(served, actors, client_for):
    revoke_without_publishing(served, actors)
    waited = settings.GATEHOUSE_PUBLISH_LAG_WARNING_SECONDS + 5
    PendingConfigChange.objects.update(created_at=timezone.now() - timedelta(seconds=waited))

    state = publish_state()
    assert state.age_seconds() >= waited
    page = client_for("developer").get(reverse("orgs:dashboard", kwargs={"org_slug": "acme"})).content.decode()
    assert "Config changes have waited" in page
    assert f"this warning shows after {settings.GATEHOUSE_PUBLISH_LAG_WARNING_SECONDS} s" in page
    assert "publisher" in page


def test_a_revision_redis_has_not_received_is_unpublished(served, actors, clean_redis):
    revoke_without_publishing(served, actors)
    services.publish_pending()
    assert publish_state().age_seconds() == 0
    # Redis lost what it had (a restart without persistence): the newest revision is not there.
    clean_redis.delete(redis_keys().latest)
    state = publish_state()
    assert state.pending_changes == 0
    assert state.unpublished_since is not None and state.redis_revision == 0
    services.sync_to_redis()
    assert publish_state().unpublished_since is None


def test_a_redis_that_does_not_answer_costs_a_page_a_quarter_second_not_five(served, settings):
    """The banner reads Redis on every signed-in page: a Redis that takes connections and never
    answers (a partition, a stuck server) must not hold every page for redis_client's 5 s."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections are taken, nothing is ever answered
        settings.REDIS_URL = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        started = time.monotonic()
        state = publish_state()
        assert time.monotonic() - started < 1.5
        assert state.redis_revision is None and state.unpublished_since is not None  # said, not hidden

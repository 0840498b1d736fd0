"""What the gateway does while Redis is unreachable is each org's audited choice (issue 11,
observation 7): rate-limited keys and budget-bound requests fail closed by default, and an
admin may let either fail open, in the API and on the settings page."""

import httpx
import pytest
from django.urls import reverse

from audit.models import AuditEvent
from fleet import services
from fleet.models import ConfigRevision
from keys.services import issue_key
from orgs.models import Organization
from orgs.services import set_rate_limit_fail_open
from tests.plugins.disposable_redis import DisposableRedis
from tests.plugins.gateway_workers import GatewayWorker

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def newest_event(org) -> AuditEvent:
    return AuditEvent.objects.filter(org=org).order_by("-sequence").first()


def test_rate_limit_fail_open_is_an_admin_setting_in_the_api(client_for, org, users):
    path = reverse("api:orgs:rate-limit-fail-open", args=["acme"])
    put = lambda role, data: client_for(role).put(path, data, content_type="application/json")  # noqa: E731
    assert put("finance", {"fail_open": True}).status_code == 403
    answer = put("admin", {"fail_open": True})
    assert (answer.status_code, answer.json()) == (200, {"fail_open": True})
    assert Organization.objects.get(pk=org.pk).rate_limit_fail_open is True
    event = newest_event(org)
    assert (event.action, event.actor_id) == ("org.rate_limit_fail_open_changed", str(users["admin"].uuid))
    refused = put("admin", {"fail_open": "sometimes"})
    assert refused.status_code == 400 and list(refused.json()) == ["fail_open"]
    assert put("admin", {"fail_open": False}).json() == {"fail_open": False}


def test_the_settings_page_shows_and_saves_both_choices(client_for, org, users):
    page = reverse("orgs:settings", args=["acme"])
    admin = client_for("admin")
    shown = admin.get(page).content.decode()
    assert "Admit rate-limited keys" in shown and "Admit budget-bound requests" in shown
    saved = admin.post(page, {"name": org.name, "rate_limit_fail_open": "on"})
    assert saved.status_code == 302
    org.refresh_from_db()
    assert (org.rate_limit_fail_open, org.budget_fail_open) == (True, False)
    assert newest_event(org).action == "org.rate_limit_fail_open_changed"
    again = admin.post(page, {"name": org.name, "budget_fail_open": "on"})
    assert again.status_code == 302, again.content.decode()[-3000:]
    org.refresh_from_db()
    assert (org.rate_limit_fail_open, org.budget_fail_open) == (False, True)
    actions = set(AuditEvent.objects.filter(org=org).values_list("action", flat=True))
    assert {"org.rate_limit_fail_open_changed", "org.budget_fail_open_changed"} <= actions


@pytest.mark.parametrize("fail_open", [False, True], ids=["closed-by-default", "open-by-choice"])
def test_a_rate_limited_key_while_redis_is_down(served, team, actors, tmp_path, fail_open):
    _key, limited = issue_key(actor=actors["admin"], team=team, name="limited", rpm_limit=100)
    set_rate_limit_fail_open(actor=actors["admin"], org=team.org, fail_open=fail_open)
    services.publish_pending()
    redis_server = DisposableRedis(tmp_path).start()
    redis_server.load(list(ConfigRevision.objects.order_by("number")))
    worker = GatewayWorker("outage-node", tmp_path / "state").start(REDIS_URL=redis_server.url)
    try:
        url = f"{worker.url}/v1/chat/completions"
        assert httpx.post(url, json=BODY, headers={"Authorization": f"Bearer {limited}"}).status_code == 200
        redis_server.stop()
        answer = httpx.post(url, json=BODY, headers={"Authorization": f"Bearer {limited}"})
        if fail_open:
            assert answer.status_code == 200  # admitted, uncounted
        else:
            assert answer.status_code == 503
            assert answer.json()["error"]["code"] == "rate_limit_unavailable"
        # A key without limits or budgets needs no Redis check either way.
        unlimited = httpx.post(url, json=BODY, headers={"Authorization": f"Bearer {served['plaintext']}"})
        assert unlimited.status_code == 200
    finally:
        worker.stop()
        redis_server.stop()

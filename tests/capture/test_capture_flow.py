"""Content capture end to end: a real gateway worker seals the prompt and answer, ingestion
stores them redacted and sealed in the day's partition, and reading them is audited."""

import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.urls import reverse

from audit.models import AuditEvent
from budgets.ingestion import ingest_batch, store_events
from budgets.models import UsageRecord
from capture import partitions, services
from capture.models import CapturedContent
from fleet import services as fleet
from fleet.redis_client import redis_keys
from gateway.usage import UsageEvent
from orgs.services import create_team

pytestmark = pytest.mark.django_db(transaction=True)
CANARY = "sk-proj-CANARYcanary0123456789abcdef"
PROMPT_WORD = "zebra-lighthouse-question"


def enable(actors, org, **overrides):
    values = {"enabled": True, "max_bytes": 4096, "retention_days": 7, "redact_patterns": [r"PROJECT-\d+"]}
    return services.update_capture_settings(actor=actors["admin"], org=org, **(values | overrides))


def ingest(request_ids: set[str]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ingest_batch("capture-test", 100, block_ms=200)
        if UsageRecord.objects.filter(request_id__in=request_ids).count() == len(request_ids):
            return
    raise AssertionError("the requests did not reach the ledger")


def chat(worker, plaintext, content: str, **extra) -> httpx.Response:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": content}], "max_tokens": 8, **extra}
    return httpx.post(
        f"{worker.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {plaintext}"}, timeout=10
    )


def detail_url(request_id: str) -> str:
    return reverse("requestlog:detail", kwargs={"org_slug": "acme", "request_id": request_id})


def content_url(request_id: str) -> str:
    return reverse("requestlog:content", kwargs={"org_slug": "acme", "request_id": request_id})


def test_captured_content_is_sealed_in_transit_redacted_at_rest_and_every_view_is_audited(
    served, org, actors, users, gateway_workers, client_for, clean_redis
):
    enable(actors, org)
    fleet.publish_pending()
    (worker,) = gateway_workers(1)
    secret_prompt = f"{PROMPT_WORD} my key is {CANARY} for PROJECT-42"
    answered = chat(worker, served["plaintext"], secret_prompt)
    streamed = chat(worker, served["plaintext"], PROMPT_WORD + " stream", stream=True)
    refused = chat(worker, served["plaintext"], PROMPT_WORD + " refused", model="no-such-model")
    assert (answered.status_code, streamed.status_code, refused.status_code) == (200, 200, 404)
    ids = {r.headers["x-request-id"] for r in (answered, streamed, refused)}
    answered_id = answered.headers["x-request-id"]

    # In transit (the usage stream in Redis) nothing is readable.
    entries = clean_redis.xrange(redis_keys().usage_stream)
    raw = b"".join(value for _, fields in entries for value in fields.values())
    assert PROMPT_WORD.encode() not in raw and CANARY.encode() not in raw

    ingest(ids)
    rows = {row.request_id: row for row in CapturedContent.objects.filter(request_id__in=ids)}
    assert set(rows) == ids  # errors and streams are captured too
    assert all(PROMPT_WORD.encode() not in bytes(row.sealed) for row in rows.values())
    assert rows[answered_id].redactions == 2
    day = partitions.name(partitions.day_of(datetime.now(UTC)))
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {day}")  # noqa: S608  (our own partition name)
        assert cursor.fetchone()[0] >= 3
        cursor.execute("SELECT count(*) FROM capture_capturedcontent t WHERE t::text LIKE %s", [f"%{CANARY[-12:]}%"])
        assert cursor.fetchone()[0] == 0

    # The detail page offers the content; only a POST shows it, and each one is audited.
    developer = client_for("developer")  # the key's owner
    page = developer.get(detail_url(answered_id)).content.decode()
    assert "Show captured content" in page and PROMPT_WORD not in page
    assert developer.get(content_url(answered_id)).status_code == 405
    before = AuditEvent.objects.filter(action="request.content_viewed").count()
    shown = developer.post(content_url(answered_id)).content.decode()
    assert PROMPT_WORD in shown and CANARY not in shown and "PROJECT-42" not in shown and "[REDACTED]" in shown
    assert "chat.completion" in shown  # the answer the caller got
    events = AuditEvent.objects.filter(action="request.content_viewed").order_by("-sequence")
    assert events.count() == before + 1 and events[0].target_id == answered_id
    assert (events[0].actor_type, events[0].actor_label) == ("user", users["developer"].email)

    streamed_page = developer.post(content_url(streamed.headers["x-request-id"])).content.decode()
    assert "data: " in streamed_page and "[DONE]" in streamed_page

    # Finance sees the request's cost but not its content; outsiders see nothing.
    finance = client_for("finance")
    assert "your role does not read captured content" in finance.get(detail_url(answered_id)).content.decode()
    assert finance.post(content_url(answered_id)).status_code == 403
    assert client_for("outsider").post(content_url(answered_id)).status_code == 404
    assert AuditEvent.objects.filter(action="request.content_viewed").count() == before + 2  # the two views
    redelivered = CapturedContent.objects.count()
    ingest(ids)
    assert CapturedContent.objects.count() == redelivered


def test_a_team_can_differ_from_its_org_and_off_is_the_default(served, org, actors, gateway_workers):
    quiet = create_team(actor=actors["admin"], org=org, name="Quiet")
    enable(actors, org)
    services.set_team_capture(actor=actors["admin"], team=quiet, capture="off")
    assert services.set_team_capture(actor=actors["admin"], team=served["team"], capture="inherit").captures()
    quiet.refresh_from_db()
    assert not quiet.captures()
    assert AuditEvent.objects.filter(action="team.capture_changed", target_id=str(quiet.pk)).exists()

    services.update_capture_settings(
        actor=actors["admin"], org=org, enabled=False, max_bytes=4096, retention_days=7, redact_patterns=[]
    )
    fleet.publish_pending()
    (worker,) = gateway_workers(1)
    answered = chat(worker, served["plaintext"], "not kept")
    ingest({answered.headers["x-request-id"]})
    assert not CapturedContent.objects.filter(request_id=answered.headers["x-request-id"]).exists()


def test_settings_are_validated_next_to_their_fields(org, actors):
    with pytest.raises(ValidationError) as raised:
        services.update_capture_settings(
            actor=actors["admin"],
            org=org,
            enabled=True,
            max_bytes=10,
            retention_days=10_000,
            redact_patterns=["(a|aa)+$"],
        )
    assert set(raised.value.message_dict) == {"max_bytes", "retention_days", "redact_patterns"}
    org.refresh_from_db()
    assert not org.capture_enabled and not bytes(org.capture_public_key)
    enable(actors, org)
    org.refresh_from_db()
    assert len(bytes(org.capture_public_key)) == 32
    event = AuditEvent.objects.filter(action="org.capture_changed").latest("sequence")
    assert event.diff["capture_enabled"] == {"before": False, "after": True}


def test_the_purge_drops_old_days_and_trims_orgs_that_keep_less(org, other_org, actors):
    enable(actors, org, retention_days=7)
    now = datetime.now(UTC)
    old, recent = now - timedelta(days=20), now - timedelta(days=3)
    other_org.capture_retention_days = 2
    other_org.save(update_fields=["capture_retention_days"])
    partitions.ensure({partitions.day_of(old), partitions.day_of(recent)})
    fields = {"sealed": b"x", "prompt_bytes": 1, "answer_bytes": 1, "prompt_cut": False, "answer_cut": False}
    for request_id, owner, at in (("old", org, old), ("recent", org, recent), ("other-recent", other_org, recent)):
        CapturedContent.objects.create(request_id=request_id, org=owner, occurred_at=at, redactions=0, **fields)

    result = services.purge_expired(now)
    assert result.dropped_days >= 1 and result.deleted_rows == 1
    mine = CapturedContent.objects.filter(request_id__in=["old", "recent", "other-recent"])
    assert set(mine.values_list("request_id", flat=True)) == {"recent"}
    assert partitions.day_of(old) not in partitions.existing()
    assert {partitions.day_of(now), partitions.day_of(now + timedelta(days=1))} <= set(partitions.existing())


def test_the_api_reads_content_with_an_audit_event_and_says_when_there_is_none(
    served, org, actors, gateway_workers, client_for
):
    enable(actors, org)
    fleet.publish_pending()
    (worker,) = gateway_workers(1)
    answered = chat(worker, served["plaintext"], f"{PROMPT_WORD} {CANARY}")
    request_id = answered.headers["x-request-id"]
    ingest({request_id})
    api = reverse("api:requestlog:request-content", kwargs={"org_slug": "acme", "request_id": request_id})
    auditor = client_for("auditor")
    body = auditor.post(api).json()
    assert PROMPT_WORD in body["prompt"] and CANARY not in body["prompt"] and body["redactions"] == 1
    assert body["captured"] is True and body["prompt_cut"] is False and "chat.completion" in body["answer"]
    assert AuditEvent.objects.filter(action="request.content_viewed", target_id=request_id).count() == 1
    assert client_for("finance").post(api).status_code == 403
    CapturedContent.objects.filter(request_id=request_id).delete()
    assert auditor.post(api).json() == {
        "captured": False,
        "prompt": "",
        "answer": "",
        "prompt_cut": False,
        "answer_cut": False,
        "redactions": 0,
    }


@pytest.mark.parametrize("content", [b"!!not base64!!", b"QUJD", b"A" * 400_000])
def test_content_that_does_not_open_costs_the_content_never_the_usage_row(served, org, actors, content):
    enable(actors, org)
    key = served["key"]
    event = UsageEvent(
        "capture-bad-" + str(len(content)), str(org.pk), str(key.team_id), str(key.pk), "gpt-4o", ts=time.time()
    )
    fields = event.stream_fields() | {b"content": content}
    outcome = store_events([(b"1-0", fields)])
    assert (outcome.inserted, outcome.refused) == (1, [])
    assert UsageRecord.objects.filter(request_id=event.request_id).exists()
    assert not CapturedContent.objects.filter(request_id=event.request_id).exists()


def test_the_settings_page_shows_each_error_next_to_its_field_and_saves_good_input(org, client_for):
    page = reverse("capture:settings", kwargs={"org_slug": "acme"})
    admin = client_for("admin")
    bad = {"enabled": "on", "max_bytes": "4096", "retention_days": "9999", "redact_patterns": "(a|aa)+$\nok-\\d+"}
    answer = admin.post(page, bad)
    text = answer.content.decode()
    assert answer.status_code == 400 and "takes too long to match" in text and "Use a whole number of days" in text
    good = {"enabled": "on", "max_bytes": "4096", "retention_days": "14", "redact_patterns": "ok-\\d+"}
    assert admin.post(page, good).status_code == 302
    org.refresh_from_db()
    assert (org.capture_enabled, org.capture_retention_days, org.capture_redact_patterns) == (True, 14, [r"ok-\d+"])

"""Issue 12, finding 7: what signed checkpoints cover, and naming the event a rewrite changed.

A database superuser rewrites an event and recomputes every hash after it (and the chain head),
so the chain is consistent again. Only a signature made before the rewrite can tell:
- events after the newest checkpoint are not covered by one, and verification says how many;
- an event a checkpoint covers is named, not the checkpoint;
- a checkpoint is asked for on every Nth event, without waiting for beat.
"""

import logging
import time

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from kombu.exceptions import OperationalError as BrokerUnreachable

from audit import tasks
from audit.integrity import HASH_BYTES, hashes_signature_valid, sign_checkpoint
from audit.models import AuditChainHead, AuditCheckpoint, AuditEvent
from audit.services import event_hash, record_event, verify_chain
from orgs.services import create_team
from tests.conftest import SYSTEM


@pytest.fixture
def chain(org):
    """acme with 5 events: org.created, then four teams."""
    for name in ("One", "Two", "Three", "Four"):
        create_team(actor=SYSTEM, org=org, name=name)
    assert AuditChainHead.objects.get(chain=str(org.pk)).sequence == 5
    return org


def add_events(org, count: int) -> None:
    for number in range(count):
        record_event(actor=SYSTEM, org=org, action="test.recorded", diff={"n": {"after": number}})


def rewrite(org, sequence: int, *, through: int | None = None, **fields) -> None:
    """Change event `sequence` as a database superuser would, then recompute its hash and those
    after it up to `through` (default: all of them, and the chain head too)."""
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_no_update_or_delete")
    previous = None
    for event in AuditEvent.objects.filter(org=org, sequence__gte=sequence).order_by("sequence"):
        if through is not None and event.sequence > through:
            break
        if previous is None:
            for name, value in fields.items():
                setattr(event, name, value)
        else:
            event.prev_hash = previous
        event.hash = event_hash(event)
        AuditEvent.objects.filter(pk=event.pk).update(
            prev_hash=event.prev_hash, hash=event.hash, **{name: getattr(event, name) for name in fields}
        )
        previous = event.hash
    if through is None:
        AuditChainHead.objects.filter(chain=str(org.pk)).update(hash=previous)


# (a) Events after the newest checkpoint: counted, and said to be uncovered ---------------------


def test_a_rewrite_after_the_newest_checkpoint_is_reported_as_not_covered(chain):
    sign_checkpoint(org=chain)
    add_events(chain, 3)
    sixth = AuditEvent.objects.get(org=chain, sequence=6)
    rewrite(chain, 7, target_label="Innocent")
    result = verify_chain(chain)
    # The window this finding is about: no signature covers events 6-8 yet, so the rewrite of 7
    # is undetectable until the next checkpoint (GATEHOUSE_AUDIT_CHECKPOINT_SECONDS, or the Nth
    # event). Verification cannot see it; it says how much is exposed, and since when.
    assert result.ok
    assert (result.covered_through, result.uncovered, result.uncovered_since) == (5, 3, sixth.created_at)
    assert result.coverage.startswith(
        "3 events after the newest checkpoint (sequence 5) are not covered by a signature yet, the oldest recorded at "
    )


def test_a_chain_without_checkpoints_is_all_uncovered(chain):
    result = verify_chain(chain)
    assert (result.ok, result.covered_through, result.uncovered) == (True, 0, 5)
    assert "5 events are not covered by a signature yet: there is no checkpoint" in result.coverage


def test_a_fully_signed_chain_has_nothing_uncovered(chain):
    sign_checkpoint(org=chain)
    result = verify_chain(chain)
    assert (result.ok, result.covered_through, result.uncovered, result.uncovered_since) == (True, 5, 0, None)
    assert result.coverage == "Every event is covered by a signed checkpoint."


def test_the_command_says_how_many_events_are_not_covered(chain, capsys):
    sign_checkpoint(org=chain)
    add_events(chain, 2)
    call_command("verify_audit", "--org", chain.slug)
    out = capsys.readouterr().out
    assert "OK: 7 events verified" in out
    assert "2 events after the newest checkpoint (sequence 5) are not covered by a signature yet" in out


def test_the_api_says_how_many_events_are_not_covered(chain, client_for):
    client = client_for("auditor")  # signing in is an event too
    signed = sign_checkpoint(org=chain).sequence
    add_events(chain, 2)
    first_uncovered = AuditEvent.objects.get(org=chain, sequence=signed + 1)
    response = client.post(reverse("api:audit:verify", kwargs={"org_slug": "acme"}))
    assert response.status_code == 200
    body = response.json()
    assert (body["ok"], body["covered_through"], body["uncovered"]) == (True, signed, 2)
    assert body["uncovered_since"].startswith(first_uncovered.created_at.strftime("%Y-%m-%dT%H:%M:%S"))
    assert body["coverage"].startswith(f"2 events after the newest checkpoint (sequence {signed})")
    recorded = AuditEvent.objects.get(org=chain, action="audit.verified")
    assert recorded.diff["uncovered"] == {"after": 2}


def test_the_integrity_page_says_how_many_events_are_not_covered(chain, client_for):
    client = client_for("auditor")
    signed = sign_checkpoint(org=chain).sequence
    add_events(chain, 4)
    text = client.get(reverse("audit:integrity", kwargs={"org_slug": "acme"})).content.decode()
    assert f"4 events after the newest checkpoint (sequence {signed}) are not covered by a signature yet" in text
    assert "every 60 seconds" in text
    assert "after every 1000 events" in text


# (b) A rewrite of an event a checkpoint covers is named at that event -------------------------


@pytest.mark.parametrize("through", [None, 4], ids=["all-hashes-and-head-recomputed", "hashes-up-to-4-recomputed"])
def test_a_rewrite_before_a_checkpoint_names_the_rewritten_event(chain, through):
    tasks.sign_checkpoints()  # what beat runs
    assert AuditCheckpoint.objects.get(org=chain).sequence == 5
    rewrite(chain, 3, through=through, target_label="Innocent")
    result = verify_chain(chain)
    assert (result.ok, result.first_bad_sequence, result.checked) == (False, 3, 2), result
    assert "its hash is not the one signed with the checkpoint" in result.reason
    assert "the event was changed and the hashes after it recomputed" in result.reason
    with pytest.raises(CommandError, match="BROKEN at sequence 3: "):
        call_command("verify_audit", "--org", chain.slug)


@pytest.mark.parametrize("rewritten", [2, 4, 5, 7, 8])
def test_a_rewrite_is_named_in_whichever_checkpoint_covers_it(chain, settings, rewritten):
    settings.GATEHOUSE_AUDIT_CHECKPOINT_EVERY_EVENTS = 3
    add_events(chain, 3)
    sign_checkpoint(org=chain)
    assert list(AuditCheckpoint.objects.filter(org=chain).order_by("sequence").values_list("sequence", flat=True)) == [
        3,
        6,
        8,
    ]
    rewrite(chain, rewritten, action="team.renamed")
    result = verify_chain(chain)
    assert (result.ok, result.first_bad_sequence) == (False, rewritten), result


def test_the_verify_api_names_the_rewritten_event(chain, client_for):
    sign_checkpoint(org=chain)
    rewrite(chain, 2, diff={"name": {"after": "Innocent"}})
    body = client_for("admin").post(reverse("api:audit:verify", kwargs={"org_slug": "acme"})).json()
    assert (body["ok"], body["first_bad_sequence"], body["checked"]) == (False, 2, 1)


def test_events_removed_with_the_chain_head_below_a_checkpoint_are_missing(chain):
    sign_checkpoint(org=chain)
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_no_update_or_delete")
        cursor.execute("DELETE FROM audit_auditevent WHERE org_id = %s AND sequence > 3", [chain.pk])
    AuditChainHead.objects.filter(chain=str(chain.pk)).update(
        sequence=3, hash=AuditEvent.objects.get(org=chain, sequence=3).hash
    )
    result = verify_chain(chain)
    assert (result.ok, result.first_bad_sequence) == (False, 4), result
    assert "covers events up to sequence 5" in result.reason


def test_a_forged_hash_list_names_nothing_but_the_checkpoint_still_catches_the_rewrite(chain):
    checkpoint = sign_checkpoint(org=chain)
    rewrite(chain, 3, target_label="Innocent")
    forged = bytearray(checkpoint.event_hashes)
    # The list made to agree with the rewritten event 3: it would name 4 instead, if it were believed.
    forged[2 * HASH_BYTES : 3 * HASH_BYTES] = bytes.fromhex(AuditEvent.objects.get(org=chain, sequence=3).hash)[
        :HASH_BYTES
    ]
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditcheckpoint DISABLE TRIGGER audit_checkpoint_no_update_or_delete")
    AuditCheckpoint.objects.filter(pk=checkpoint.pk).update(event_hashes=bytes(forged))
    assert not hashes_signature_valid(AuditCheckpoint.objects.get(pk=checkpoint.pk))
    result = verify_chain(chain)
    assert (result.ok, result.first_bad_sequence) == (False, 5), result
    assert "an event from sequence 1 to 5 was changed" in result.reason


# What a checkpoint holds --------------------------------------------------------------------


def test_a_long_stretch_is_signed_as_checkpoints_of_at_most_n_events(chain, settings):
    settings.GATEHOUSE_AUDIT_CHECKPOINT_EVERY_EVENTS = 2
    newest = sign_checkpoint(org=chain)
    checkpoints = list(AuditCheckpoint.objects.filter(org=chain).order_by("sequence"))
    assert [(c.first_sequence, c.sequence) for c in checkpoints] == [(1, 2), (3, 4), (5, 5)]
    assert newest.pk == checkpoints[-1].pk
    hashes = dict(AuditEvent.objects.filter(org=chain).values_list("sequence", "hash"))
    for checkpoint in checkpoints:
        assert hashes_signature_valid(checkpoint)
        assert checkpoint.hash == hashes[checkpoint.sequence]
        assert bytes(checkpoint.event_hashes) == b"".join(
            bytes.fromhex(hashes[s])[:HASH_BYTES] for s in range(checkpoint.first_sequence, checkpoint.sequence + 1)
        )
    assert sign_checkpoint(org=chain) is None


def test_a_broken_link_is_not_signed_over(chain):
    rewrite(chain, 3, through=3, target_label="Innocent")  # 4's prev_hash no longer matches 3
    checkpoint = sign_checkpoint(org=chain)
    assert (checkpoint.first_sequence, checkpoint.sequence) == (1, 3)
    assert sign_checkpoint(org=chain) is None
    assert verify_chain(chain).first_bad_sequence == 4


def test_beat_signs_every_org_whose_chain_moved_and_only_those(chain, other_org):
    record_event(actor=SYSTEM, org=None, action="auth.login_failed", target_label="nobody@x.test")
    tasks.sign_checkpoints()
    assert sorted(AuditCheckpoint.objects.values_list("org_id", "sequence")) == sorted(
        [(chain.pk, 5), (other_org.pk, AuditChainHead.objects.get(chain=str(other_org.pk)).sequence)]
    )
    tasks.sign_checkpoints()
    assert AuditCheckpoint.objects.count() == 2
    add_events(chain, 1)
    tasks.sign_checkpoints()
    assert list(AuditCheckpoint.objects.filter(org=chain).values_list("first_sequence", "sequence")) == [
        (6, 6),
        (1, 5),
    ]
    assert AuditCheckpoint.objects.count() == 3


# (c) Every Nth event asks for a checkpoint -------------------------------------------------


def test_the_nth_event_asks_for_a_checkpoint_on_commit_and_no_other_does(
    chain, settings, monkeypatch, django_capture_on_commit_callbacks
):
    settings.GATEHOUSE_AUDIT_CHECKPOINT_EVERY_EVENTS = 4
    asked: list[tuple] = []
    monkeypatch.setattr(tasks.sign_org_checkpoint, "apply_async", lambda args, **options: asked.append(args))
    with django_capture_on_commit_callbacks(execute=True):
        add_events(chain, 2)  # 6, 7
    assert asked == []
    with django_capture_on_commit_callbacks(execute=True):
        add_events(chain, 1)  # 8
    assert asked == [(str(chain.pk),)]
    tasks.sign_org_checkpoint(*asked[0])
    signed = AuditCheckpoint.objects.filter(org=chain).order_by("sequence")
    assert [(c.first_sequence, c.sequence) for c in signed] == [(1, 4), (5, 8)]


def test_asking_for_a_checkpoint_costs_no_query(chain, settings):
    settings.GATEHOUSE_AUDIT_CHECKPOINT_EVERY_EVENTS = 7
    with CaptureQueriesContext(connection) as ordinary:
        add_events(chain, 1)  # 6
    with CaptureQueriesContext(connection) as nth:
        add_events(chain, 1)  # 7
    assert len(nth.captured_queries) == len(ordinary.captured_queries)


def test_an_unreachable_broker_does_not_fail_the_change(
    chain, settings, monkeypatch, caplog, django_capture_on_commit_callbacks
):
    settings.GATEHOUSE_AUDIT_CHECKPOINT_EVERY_EVENTS = 6

    def unreachable(*args, **options):
        raise BrokerUnreachable("connection refused")

    monkeypatch.setattr(tasks.sign_org_checkpoint, "apply_async", unreachable)
    with caplog.at_level(logging.WARNING, logger="audit.services"), django_capture_on_commit_callbacks(execute=True):
        create_team(actor=SYSTEM, org=chain, name="Five")  # event 6
    assert AuditEvent.objects.filter(org=chain, sequence=6, action="team.created").exists()
    assert "could not ask for an audit checkpoint" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_every_nth_event_is_signed_without_waiting_for_beat(org, settings, celery_worker_on_test_queue):
    settings.GATEHOUSE_AUDIT_CHECKPOINT_EVERY_EVENTS = 5
    add_events(org, 3)  # org.created was 1: now 4
    assert not AuditCheckpoint.objects.filter(org=org).exists()
    add_events(org, 1)  # the 5th commits and asks the worker
    deadline = time.monotonic() + 20
    while not AuditCheckpoint.objects.filter(org=org).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    checkpoint = AuditCheckpoint.objects.get(org=org)
    assert (checkpoint.first_sequence, checkpoint.sequence) == (1, 5)
    result = verify_chain(org)
    assert (result.ok, result.covered_through, result.uncovered) == (True, 5, 0)

import itertools
import json
import threading

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.db.utils import ProgrammingError

from audit.context import Actor
from audit.models import AuditChainHead, AuditEvent
from audit.services import changes, event_hash, record_event, redact_secret, verify_chain
from orgs.services import create_team
from tests.conftest import SYSTEM

CANARY = "sk-canary-6f1d2b9e8a7c4d3e"


def test_events_are_chained_and_verify(org):
    events = list(AuditEvent.objects.filter(org=org).order_by("sequence"))
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    for previous, current in itertools.pairwise(events):
        assert current.prev_hash == previous.hash
    assert verify_chain(org).ok


@pytest.mark.parametrize("statement", ["UPDATE audit_auditevent SET action = 'x'", "DELETE FROM audit_auditevent"])
def test_update_and_delete_are_refused_by_the_database(org, statement):
    with pytest.raises(ProgrammingError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement)
    assert AuditEvent.objects.filter(org=org).exists()


def test_truncate_is_refused_by_the_database(org):
    count = AuditEvent.objects.count()
    with pytest.raises(ProgrammingError, match="TRUNCATE refused"), transaction.atomic(), connection.cursor() as c:
        c.execute("TRUNCATE audit_auditevent")
    assert AuditEvent.objects.count() == count > 0


def test_the_orm_cannot_edit_or_delete_an_event_either(org):
    event = AuditEvent.objects.filter(org=org).first()
    with pytest.raises(ProgrammingError), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(diff={})
    event.action = "edited"
    with pytest.raises(ProgrammingError), transaction.atomic():
        event.save()
    with pytest.raises(ProgrammingError), transaction.atomic():
        event.delete()
    assert AuditEvent.objects.get(pk=event.pk).action == "org.created"


# Tampering as a superuser would: the trigger off, inside the test's transaction ----------


@pytest.fixture
def chain(org):
    """acme with a chain of 5 events (org.created, then 4 teams) and a superuser's way around
    the append-only trigger. Everything is rolled back with the test."""
    for name in ("One", "Two", "Three", "Four"):
        create_team(actor=SYSTEM, org=org, name=name)
    assert list(AuditEvent.objects.filter(org=org).order_by("sequence").values_list("sequence", flat=True)) == [
        1,
        2,
        3,
        4,
        5,
    ]
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_no_update_or_delete")
    return org


def tamper(sql: str, params: list) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        assert cursor.rowcount >= 1


def event_at(org, sequence: int) -> AuditEvent:
    return AuditEvent.objects.get(org=org, sequence=sequence)


def assert_broken_at(org, sequence: int, reason: str) -> None:
    result = verify_chain(org)
    assert not result.ok
    assert (result.first_bad_sequence, result.checked) == (sequence, sequence - 1)
    assert reason in result.reason
    with pytest.raises(CommandError, match=f"BROKEN at sequence {sequence}: "):
        call_command("verify_audit", "--org", org.slug)


def test_an_edited_diff_is_detected(chain):
    tamper(
        "UPDATE audit_auditevent SET diff = %s WHERE org_id = %s AND sequence = 3",
        [json.dumps({"name": {"after": "Innocent"}}), chain.pk],
    )
    assert_broken_at(chain, 3, "content does not match its hash")


def test_an_edited_actor_is_detected(chain):
    tamper("UPDATE audit_auditevent SET actor_label = 'someone else' WHERE org_id = %s AND sequence = 2", [chain.pk])
    assert_broken_at(chain, 2, "content does not match its hash")


def test_an_edit_with_a_recomputed_hash_breaks_the_next_link(chain):
    event = event_at(chain, 3)
    event.diff = {"name": {"after": "Innocent"}}
    tamper(
        "UPDATE audit_auditevent SET diff = %s, hash = %s WHERE id = %s",
        [json.dumps(event.diff), event_hash(event), event.pk],
    )
    assert_broken_at(chain, 4, "prev_hash does not match")


def test_a_deleted_event_is_a_gap(chain):
    tamper("DELETE FROM audit_auditevent WHERE org_id = %s AND sequence = 3", [chain.pk])
    assert_broken_at(chain, 3, "sequence 3 is missing (next is 4)")


def test_a_deleted_first_event_is_a_gap(chain):
    tamper("DELETE FROM audit_auditevent WHERE org_id = %s AND sequence = 1", [chain.pk])
    assert_broken_at(chain, 1, "sequence 1 is missing")


def test_a_deleted_newest_event_disagrees_with_the_chain_head(chain):
    tamper("DELETE FROM audit_auditevent WHERE org_id = %s AND sequence = 5", [chain.pk])
    assert_broken_at(chain, 5, "chain head says 5 events, found 4")


def test_swapped_sequence_numbers_are_detected(chain):
    for old, new in ((2, -2), (3, 2), (-2, 3)):
        tamper("UPDATE audit_auditevent SET sequence = %s WHERE org_id = %s AND sequence = %s", [new, chain.pk, old])
    assert_broken_at(chain, 2, "prev_hash does not match")


def test_an_event_moved_to_another_org_breaks_both_chains(chain, other_org):
    tamper(
        "UPDATE audit_auditevent SET org_id = %s, sequence = 99 WHERE org_id = %s AND sequence = 4",
        [other_org.pk, chain.pk],
    )
    assert_broken_at(chain, 4, "sequence 4 is missing")
    assert not verify_chain(other_org).ok


def test_tampering_with_one_org_leaves_the_others_chain_valid(chain, other_org):
    tamper("UPDATE audit_auditevent SET action = 'x' WHERE org_id = %s AND sequence = 2", [chain.pk])
    assert not verify_chain(chain).ok
    assert verify_chain(other_org).ok
    call_command("verify_audit", "--org", "other")


def test_an_edited_newest_event_with_a_recomputed_hash_disagrees_with_the_chain_head(chain):
    event = event_at(chain, 5)
    event.diff = {"name": {"after": "Innocent"}}
    tamper(
        "UPDATE audit_auditevent SET diff = %s, hash = %s WHERE id = %s",
        [json.dumps(event.diff), event_hash(event), event.pk],
    )
    assert AuditChainHead.objects.get(chain=str(chain.pk)).hash != event_hash(event)
    result = verify_chain(chain)
    assert (result.ok, result.first_bad_sequence) == (False, 5)
    assert "does not match the chain head" in result.reason
    with pytest.raises(CommandError, match="BROKEN at sequence 5: "):
        call_command("verify_audit", "--org", chain.slug)


def test_the_platform_chain_verifies_too(db):
    for email in ("a@nowhere.test", "b@nowhere.test"):
        record_event(actor=Actor(kind="user", label=email), org=None, action="auth.login_failed", target_label=email)
    result = verify_chain(None)
    assert (result.ok, result.checked) == (True, 2)


@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_keep_one_unbroken_chain(org):
    """Events recorded at the same time on separate connections still form one gapless chain."""
    start = threading.Barrier(4)
    failures: list[BaseException] = []

    def append(worker: int) -> None:
        try:
            start.wait(timeout=10)
            for number in range(10):
                record_event(actor=SYSTEM, org=org, action="test.appended", diff={"n": {"after": f"{worker}-{number}"}})
        except BaseException as error:
            failures.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=append, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    result = verify_chain(org)
    assert result.ok, result
    assert AuditEvent.objects.filter(org=org, action="test.appended").count() == 40
    assert result.checked == AuditEvent.objects.filter(org=org).count()


# Secrets in diffs ------------------------------------------------------------------------


def test_changes_redacts_secret_fields_to_their_last_four_characters():
    diff = changes(
        {"api_key": None, "base_url": "https://a.test"},
        {"api_key": CANARY, "base_url": "https://b.test"},
        secret_fields=["api_key"],
    )
    assert diff == {
        "api_key": {"before": "", "after": "***4d3e"},
        "base_url": {"before": "https://a.test", "after": "https://b.test"},
    }
    assert CANARY[:-4] not in json.dumps(diff)


def test_changes_redacts_both_sides_of_a_rotated_secret():
    rotated = "sk-rotated-0123456789abcdef"
    diff = changes({"api_key": CANARY}, {"api_key": rotated}, secret_fields={"api_key"})
    assert diff == {"api_key": {"before": "***4d3e", "after": "***cdef"}}
    text = json.dumps(diff)
    assert CANARY[:-4] not in text
    assert rotated[:-4] not in text


def test_an_unchanged_secret_is_not_in_the_diff():
    assert changes({"api_key": CANARY, "name": "a"}, {"api_key": CANARY, "name": "b"}, secret_fields=["api_key"]) == {
        "name": {"before": "a", "after": "b"}
    }


def test_a_short_secret_shows_nothing_of_itself():
    assert redact_secret("short-pass1") == "***"
    assert redact_secret("") == ""
    assert redact_secret(None) == ""
    assert changes({}, {"token": "abc"}, secret_fields=["token"]) == {"token": {"before": "", "after": "***"}}


def test_a_recorded_secret_change_keeps_the_canary_out_of_the_database(org):
    record_event(
        actor=SYSTEM,
        org=org,
        action="credential.rotated",
        target_type="credential",
        diff=changes({"api_key": "sk-old-value-1234567890"}, {"api_key": CANARY}, secret_fields=["api_key"]),
    )
    with connection.cursor() as cursor:
        cursor.execute("SELECT string_agg(row_to_json(e)::text, '') FROM audit_auditevent e")
        (rows,) = cursor.fetchone()
    assert "***4d3e" in rows
    assert CANARY[:-4] not in rows
    assert verify_chain(org).ok

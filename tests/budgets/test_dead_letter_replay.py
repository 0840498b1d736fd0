"""Replaying and purging dead letters (budgets/replay.py) and `manage.py replay_dead_letters`:
the same store path as ingestion, exactly once, each action with its platform audit event."""

import io

import pytest
from django.core.management import CommandError, call_command

from audit.context import Actor
from audit.models import AuditEvent
from budgets.models import UsageHourly, UsageRecord
from budgets.replay import purge_dead_letters, replay_dead_letters
from tests.budgets.test_dead_letters import (
    accept_poison_again,
    dead_letters,
    drain,
    emit,
    gateway_fields,
    ledger,  # noqa: F401  (fixture)
    refuse_poison_in_the_database,
    stored_ids,
)

pytestmark = pytest.mark.django_db
STAFF = Actor(kind="user", id="staff-uuid", label="staff@gatehouse.test")


@pytest.fixture
def letters(ledger) -> dict[str, str]:  # noqa: F811
    """Three dead letters, by request id: two the database refused (poison-1, poison-2) and one
    with a NUL that can never be stored (nul). Returns request id -> dead letter id."""
    client = ledger["redis"]
    refuse_poison_in_the_database()
    emit(client, gateway_fields(ledger, request_id="poison-1", alias="poison-a"))
    emit(client, gateway_fields(ledger, request_id="nul", alias="gpt\x00"))
    emit(client, gateway_fields(ledger, request_id="poison-2", alias="poison-b"))
    emit(client, gateway_fields(ledger, request_id="fine"))
    drain()
    assert stored_ids() == {"fine"}
    return {letter[b"request_id"].decode(): letter_id.decode() for letter_id, letter in dead_letters(client)}


def test_replaying_after_a_fix_stores_the_event_and_removes_its_letter(ledger, letters):  # noqa: F811
    accept_poison_again()

    result = replay_dead_letters(actor=STAFF, ids=[letters["poison-1"]])

    assert (result.replayed, result.stored, result.inserted, result.still_refused) == (1, 1, 1, 0)
    assert stored_ids() == {"fine", "poison-1"}
    assert UsageHourly.objects.filter(org=ledger["org"], alias="poison-a").get().requests == 1
    remaining = {letter[b"request_id"] for _, letter in dead_letters(ledger["redis"])}
    assert remaining == {b"nul", b"poison-2"}


def test_a_replay_is_audited_on_the_platform_chain(ledger, letters):  # noqa: F811
    accept_poison_again()
    replay_dead_letters(actor=STAFF, ids=[letters["poison-1"]])
    event = AuditEvent.objects.get(action="usage.dead_letters_replayed")
    assert (event.org_id, event.actor_label, event.target_type, event.target_id) == (
        None,
        "staff@gatehouse.test",
        "usage_dead_letters",
        letters["poison-1"],
    )
    assert event.diff["stored"] == {"after": 1}
    assert event.diff["still_refused"] == {"after": 0}
    assert event.diff["dead_letters"] == {"after": [letters["poison-1"]]}


def test_a_letter_that_still_fails_stays_with_the_new_reason(ledger, letters):  # noqa: F811
    client = ledger["redis"]
    (old,) = [letter for letter_id, letter in dead_letters(client) if letter_id.decode() == letters["poison-1"]]

    result = replay_dead_letters(actor=STAFF, ids=[letters["poison-1"]])

    assert (result.replayed, result.stored, result.still_refused) == (1, 0, 1)
    (new_id, new), *_ = [(i, letter) for i, letter in dead_letters(client) if letter[b"request_id"] == b"poison-1"]
    assert new_id.decode() != letters["poison-1"]  # re-added: the old one is gone
    assert new[b"dead_letter.entry_id"] == old[b"dead_letter.entry_id"]  # where it first came from
    assert new[b"dead_letter.reason"].startswith(b"the database refused it")
    assert {key: value for key, value in new.items() if not key.startswith(b"dead_letter.")} == {
        key: value for key, value in old.items() if not key.startswith(b"dead_letter.")
    }
    assert len(dead_letters(client)) == 3
    assert AuditEvent.objects.get(action="usage.dead_letters_replayed").diff["still_refused"] == {"after": 1}


def test_replaying_all_stores_what_can_be_and_keeps_the_rest(ledger, letters):  # noqa: F811
    accept_poison_again()
    result = replay_dead_letters(actor=STAFF)
    assert (result.replayed, result.stored, result.still_refused) == (3, 2, 1)
    assert stored_ids() == {"fine", "poison-1", "poison-2"}
    ((_, left),) = dead_letters(ledger["redis"])
    assert (left[b"request_id"], left[b"dead_letter.reason"]) == (b"nul", b"alias contains a NUL character")
    assert AuditEvent.objects.get(action="usage.dead_letters_replayed").target_id == "all"


def test_a_letter_already_in_the_ledger_is_removed_without_counting_twice(ledger):  # noqa: F811
    """A dead letter of an event the ledger holds (set aside twice around a crash, say)."""
    client = ledger["redis"]
    refuse_poison_in_the_database()
    emit(client, gateway_fields(ledger, request_id="twice", alias="poison-x"))
    drain()
    accept_poison_again()
    emit(client, gateway_fields(ledger, request_id="twice", alias="poison-x"))
    drain()
    assert UsageHourly.objects.get(org=ledger["org"]).requests == 1

    result = replay_dead_letters(actor=STAFF)

    assert (result.replayed, result.stored, result.inserted) == (1, 1, 0)
    assert UsageRecord.objects.filter(request_id="twice").count() == 1
    assert UsageHourly.objects.get(org=ledger["org"]).requests == 1
    assert not dead_letters(client)


def test_replaying_an_unknown_id_changes_nothing(ledger, letters):  # noqa: F811
    result = replay_dead_letters(actor=STAFF, ids=["1-0"])
    assert result.replayed == 0
    assert len(dead_letters(ledger["redis"])) == 3
    assert not AuditEvent.objects.filter(action="usage.dead_letters_replayed").exists()


def test_purging_one_removes_it_for_good_and_is_audited(ledger, letters):  # noqa: F811
    assert purge_dead_letters(actor=STAFF, ids=[letters["nul"]]) == 1
    assert {letter[b"request_id"] for _, letter in dead_letters(ledger["redis"])} == {b"poison-1", b"poison-2"}
    event = AuditEvent.objects.get(action="usage.dead_letters_purged")
    assert (event.org_id, event.target_id) == (None, letters["nul"])
    assert event.diff["request_ids"] == {"after": ["nul"]}
    assert event.diff["reasons"] == {"after": ["alias contains a NUL character"]}


def test_purging_all(ledger, letters):  # noqa: F811
    assert purge_dead_letters(actor=STAFF) == 3
    assert not dead_letters(ledger["redis"])
    assert stored_ids() == {"fine"}
    assert AuditEvent.objects.get(action="usage.dead_letters_purged").diff["purged"] == {"after": 3}


# The command --------------------------------------------------------------------------------


def test_the_command_replays_one_by_id(ledger, letters):  # noqa: F811
    accept_poison_again()
    out = io.StringIO()
    call_command("replay_dead_letters", "--id", letters["poison-2"], stdout=out)
    assert out.getvalue() == "Replayed 1: 1 now in the ledger (1 new rows), 0 still refused and kept.\n"
    assert stored_ids() == {"fine", "poison-2"}
    assert AuditEvent.objects.get(action="usage.dead_letters_replayed").actor_label == "manage.py replay_dead_letters"


def test_the_command_replays_all(ledger, letters):  # noqa: F811
    accept_poison_again()
    out = io.StringIO()
    call_command("replay_dead_letters", "--all", stdout=out)
    assert out.getvalue().splitlines()[0] == "Replayed 3: 2 now in the ledger (2 new rows), 1 still refused and kept."
    assert len(dead_letters(ledger["redis"])) == 1


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        (["--id", "1-0"], "No dead letter with id 1-0"),
        (["--id", "not-an-id"], "is not a dead letter id"),
        ([], "one of the arguments --all --id is required"),
    ],
)
def test_the_command_refuses_what_it_cannot_find(ledger, letters, arguments, error):  # noqa: F811
    with pytest.raises(CommandError, match=error):
        call_command("replay_dead_letters", *arguments)
    assert len(dead_letters(ledger["redis"])) == 3

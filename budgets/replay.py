"""Replaying and purging dead letters (budgets/dead_letters.py): platform-level changes, each
with its audit event on the platform chain.

A replay sends the original fields through the same store path as ingestion. Those stored (or
found already in the ledger: storing is idempotent) leave the dead-letter stream; those still
refused stay, re-added with the new reason. The ledger rows, the audit event and the Redis
changes go together: Redis is changed last inside the transaction, so if it fails nothing is
committed, and a replay that is repeated stores nothing twice.
"""

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from django.db import transaction

from audit.context import Actor
from audit.services import record_event
from fleet.redis_client import redis_client

from . import dead_letters, ingestion
from .dead_letters import DeadLetter

CHUNK = 500  # dead letters per transaction (and per audit event) when replaying or purging all
AUDITED_IDS = 50  # ids listed in one audit event; the counts cover the rest


@dataclass
class ReplayResult:
    replayed: int = 0
    stored: int = 0  # now in the ledger (inserted, or there already)
    inserted: int = 0
    still_refused: int = 0


def _target(ids: Sequence[str] | None) -> dict[str, str]:
    if ids is None:
        return {"target_type": "usage_dead_letters", "target_id": "all", "target_label": "all dead letters"}
    label = f"dead letter {ids[0]}" if len(ids) == 1 else f"{len(ids)} dead letters"
    return {"target_type": "usage_dead_letters", "target_id": ",".join(ids)[:64], "target_label": label}


def _replay_chunk(*, actor: Actor, letters: list[DeadLetter], everything: bool) -> ReplayResult:
    by_id = {letter.id.encode(): letter for letter in letters}
    with transaction.atomic():
        outcome = ingestion.store_events([(letter_id, letter.fields) for letter_id, letter in by_id.items()])
        refused = {refusal.entry_id: refusal.reason for refusal in outcome.refused}
        ids = [letter.id for letter in letters]
        record_event(
            actor=actor,
            org=None,
            action="usage.dead_letters_replayed",
            **_target(None if everything else ids),
            diff={
                "replayed": {"after": len(letters)},
                "stored": {"after": len(letters) - len(refused)},
                "still_refused": {"after": len(refused)},
                "dead_letters": {"after": ids[:AUDITED_IDS]},
            },
        )
    # Redis changes only once the ledger rows and the audit event are committed: a failed commit
    # must leave every letter where it was (a replay that runs again is harmless).
    pipe = redis_client().pipeline(transaction=False)
    # Still refused: set aside again with today's reason (the original entry id is kept);
    # not counted again, as it is the same event.
    dead_letters.set_aside(
        pipe,
        [
            dead_letters.Letter(by_id[letter_id].entry_id.encode(), by_id[letter_id].fields, reason)
            for letter_id, reason in refused.items()
        ],
        at=time.time(),
        count=False,
    )
    pipe.xdel(dead_letters.stream_name(), *by_id)
    pipe.execute()
    return ReplayResult(len(letters), len(letters) - len(refused), outcome.inserted, len(refused))


def replay_dead_letters(*, actor: Actor, ids: Sequence[str] | None = None) -> ReplayResult:
    """Store dead letters again (those with `ids`, or all); those that still fail stay."""
    total = ReplayResult()
    for letters, everything in _chunks(ids):
        result = _replay_chunk(actor=actor, letters=letters, everything=everything)
        total.replayed += result.replayed
        total.stored += result.stored
        total.inserted += result.inserted
        total.still_refused += result.still_refused
    return total


def purge_dead_letters(*, actor: Actor, ids: Sequence[str] | None = None) -> int:
    """Delete dead letters (those with `ids`, or all) for good; returns how many went."""
    purged = 0
    for letters, everything in _chunks(ids):
        with transaction.atomic():
            letter_ids = [letter.id for letter in letters]
            record_event(
                actor=actor,
                org=None,
                action="usage.dead_letters_purged",
                **_target(None if everything else letter_ids),
                diff={
                    "purged": {"after": len(letters)},
                    "dead_letters": {"after": letter_ids[:AUDITED_IDS]},
                    "request_ids": {"after": [letter.request_id for letter in letters[:AUDITED_IDS]]},
                    "reasons": {"after": sorted({letter.reason for letter in letters})[:AUDITED_IDS]},
                },
            )
        purged += redis_client().xdel(dead_letters.stream_name(), *letter_ids)  # after the commit
    return purged


def _chunks(ids: Sequence[str] | None) -> Iterator[tuple[list[DeadLetter], bool]]:
    """The dead letters to act on, a chunk at a time: those named, or all that exist now (those
    re-added while replaying come after `until` and are not met again)."""
    if ids is not None:
        letters = dead_letters.find(ids)
        for start in range(0, len(letters), CHUNK):
            yield letters[start : start + CHUNK], False
        return
    until = dead_letters.newest_id()
    after = None
    while until is not None:
        letters = dead_letters.oldest_first(after=after, until=until, count=CHUNK)
        if not letters:
            return
        yield letters, True
        after = letters[-1].id

import pytest
from django.db import connection, transaction
from django.db.utils import ProgrammingError

from audit.models import AuditEvent
from audit.services import verify_chain


def test_events_are_chained_and_verify(org):
    events = list(AuditEvent.objects.filter(org=org).order_by("sequence"))
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    for previous, current in zip(events, events[1:], strict=False):
        assert current.prev_hash == previous.hash
    assert verify_chain(org).ok


@pytest.mark.parametrize("statement", ["UPDATE audit_auditevent SET action = 'x'", "DELETE FROM audit_auditevent"])
def test_update_and_delete_are_refused_by_the_database(org, statement):
    with pytest.raises(ProgrammingError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement)
    assert AuditEvent.objects.filter(org=org).exists()

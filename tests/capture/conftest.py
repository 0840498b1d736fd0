import pytest
from django.db import connection


@pytest.fixture(autouse=True)
def no_captured_content(django_db_blocker):
    """Django's flush leaves the partitioned table alone (it is not a managed model): start
    each test without rows from an earlier one."""
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute("TRUNCATE capture_capturedcontent")
    yield

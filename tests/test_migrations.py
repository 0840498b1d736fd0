"""The models and the migrations say the same thing: a model change without its migration fails here."""

import io

from django.core.management import call_command


def test_no_model_change_lacks_a_migration(db):
    out = io.StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out, stderr=out)  # exits non-zero on a change
    assert "No changes detected" in out.getvalue()

"""Audit export jobs, run by Celery. The task takes the export's id and calls
audit.export.run_export, which claims the export with a conditional UPDATE: a second delivery
of the same message finds it taken or finished and does nothing."""

from celery import shared_task

from . import export


@shared_task(name="audit.run_export", ignore_result=True)
def run_export(export_id: str) -> None:
    """Write one queued export's file and its SHA-256."""
    # Not retried: a failed export is marked failed and the user starts another one, rather
    # than a retry resuming a half-written file.
    export.run_export(export_id)

from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"

    def ready(self) -> None:
        # Celery autodiscovery finds audit/tasks.py; the export job lives in its own module.
        from . import export_tasks  # noqa: F401

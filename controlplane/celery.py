"""The Celery app. Tasks live in each app's tasks.py and are found by autodiscovery.

Worker and beat log through `settings.LOGGING` (controlplane/logs.py) rather than Celery's own
set-up, so their lines have the portal's shape; inside a task, `request_id` is the task id and
`parent_request_id` the portal request that enqueued it (carried in a message header).
"""

import logging.config
import os
from typing import Any

from celery import Celery, signals

from controlplane.request_context import request_meta

from .logs import TaskContext, current_task

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

app = Celery("controlplane")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

REQUEST_ID_HEADER = "gatehouse_request_id"


@signals.setup_logging.connect
def use_django_logging(**kwargs: Any) -> None:
    """Connected, this keeps Celery from installing its own handlers on the root logger."""
    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


@signals.before_task_publish.connect
def carry_request_id(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    """The portal request enqueueing a task, or the one behind the task enqueueing it."""
    task = current_task.get()
    request_id = request_meta.get().request_id or (task.parent_request_id if task is not None else "")
    if request_id and headers is not None:
        headers.setdefault(REQUEST_ID_HEADER, request_id)


@signals.task_prerun.connect
def enter_task_context(task_id: str = "", task: Any = None, **kwargs: Any) -> None:
    parent = str(getattr(task.request, REQUEST_ID_HEADER, None) or "") if task is not None else ""
    current_task.set(TaskContext(task_id=task_id, name=getattr(task, "name", ""), parent_request_id=parent))


@signals.task_postrun.connect
def leave_task_context(**kwargs: Any) -> None:
    current_task.set(None)

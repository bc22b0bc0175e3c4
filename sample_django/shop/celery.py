"""The Celery app: `celery -A shop.celery worker` (add `beat`, or `worker -B`, for beat_tick).

Setting DJANGO_SETTINGS_MODULE before the app is made turns on Celery's Django
support: the worker sets Django up, finds each app's tasks.py and closes stale
database connections around tasks.
"""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")

from django.conf import settings  # noqa: E402  (needs the variable above)

# The broker URL comes from the host (eep's enforced uwsgi ini sets it).
app = Celery("shop", broker=os.environ.get("CELERY_BROKER_URL", "memory://"))
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    beat_schedule={
        "beat-tick": {"task": "notes.tasks.beat_tick", "schedule": 5.0},
    },
    # Where beat remembers when each entry last ran; its directory must exist.
    beat_schedule_filename=os.environ.get(
        "CELERY_BEAT_SCHEDULE_FILE", str(settings.VAR_DIR / "celerybeat-schedule")
    ),
)
app.autodiscover_tasks()


@worker_process_init.connect
def leave_the_workers_process_group(**_: object) -> None:
    # uWSGI signals the attached worker's whole process group; pool children that
    # stay in it would die mid-task on a deploy. In their own group they finish.
    os.setpgid(0, 0)

"""Worker side: a task that sleeps, then writes a marker naming the release that ran it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from celery import Celery
from celery.signals import worker_process_init

from app.version import VERSION

# The broker URL comes from the host (eep's enforced uwsgi ini sets it).
celery = Celery("sample", broker=os.environ.get("CELERY_BROKER_URL", "memory://"))
celery.conf.update(task_acks_late=True, worker_prefetch_multiplier=1)
MARKERS = Path(os.environ.get("EEP_SHARED_DIR", "/tmp")) / "var" / "tasks"


@worker_process_init.connect
def leave_the_workers_process_group(**_: object) -> None:
    # uWSGI signals the attached worker's whole process group; pool children that
    # stay in it would die mid-task on a deploy. In their own group they finish.
    os.setpgid(0, 0)


@celery.task
def sleep_and_mark(seconds: float, task_id: str) -> None:
    started = time.time()
    MARKERS.mkdir(parents=True, exist_ok=True)
    (MARKERS / f"{task_id}.started").touch()  # tests wait for this, not a guessed time
    time.sleep(seconds)
    marker = {"id": task_id, "version": VERSION, "pid": os.getpid(), "started": started}
    (MARKERS / f"{task_id}.json").write_text(json.dumps(marker))

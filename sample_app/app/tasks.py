"""Worker side: a task that sleeps, then writes a marker naming the release that ran it,
and a periodic task that Celery beat queues every 5 s (when the tree attaches a beat)."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from celery import Celery, Task
from celery.signals import before_task_publish, worker_process_init

from app.version import VERSION

# The broker URL comes from the host (eep's enforced uwsgi ini sets it).
celery = Celery("sample", broker=os.environ.get("CELERY_BROKER_URL", "memory://"))
celery.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    # Read by `celery beat` only: the worker runs what beat queues.
    beat_schedule={"beat-tick": {"task": "app.tasks.beat_tick", "schedule": 5.0}},
)
VAR = Path(os.environ.get("EEP_SHARED_DIR", "/tmp")) / "var"
MARKERS = VAR / "tasks"


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


@before_task_publish.connect
def stamp_the_sender(sender: str = "", headers: dict | None = None, **_: object) -> None:
    # Runs in the process that queues a task (for beat_tick: the beat). The worker may
    # run queued ticks in a burst after its own restart; the sender's time and pid are
    # what tell one beat from two.
    if sender == "app.tasks.beat_tick" and headers is not None:
        headers.update(queued_at=time.time(), queued_by=os.getpid())


@celery.task(bind=True)
def beat_tick(self: Task) -> None:
    """Queued every 5 s by beat: one line per run (UTC time it was queued, pid of the beat
    that queued it, release that ran it), so runs can be counted: a second beat shows
    as a second pid and lines closer than 5 s."""
    queued_at = getattr(self.request, "queued_at", None) or time.time()
    queued_by = getattr(self.request, "queued_by", None) or os.getpid()
    when = datetime.fromtimestamp(queued_at, UTC).isoformat(timespec="milliseconds")
    VAR.mkdir(parents=True, exist_ok=True)
    with (VAR / "beat.log").open("a") as log:
        log.write(f"{when} {queued_by} {VERSION}\n")

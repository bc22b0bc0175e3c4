"""Worker side: a task that sleeps then writes a note, and beat's periodic tick."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime

from celery import Task
from celery.signals import before_task_publish
from django.conf import settings

from notes.models import Note
from shop.celery import app
from shop.version import VERSION


@app.task
def sleep_and_note(seconds: float, task_id: str) -> int:
    markers = settings.VAR_DIR / "tasks"
    markers.mkdir(parents=True, exist_ok=True)
    (markers / f"{task_id}.started").touch()  # tests wait for this, not a guessed time
    time.sleep(seconds)
    note = Note.objects.create(text=f"task {task_id}", done_by=VERSION)
    marker = {"id": task_id, "version": VERSION, "pid": os.getpid(), "note": note.pk}
    (markers / f"{task_id}.json").write_text(json.dumps(marker))
    return note.pk


@before_task_publish.connect
def stamp_the_sender(sender: str = "", headers: dict | None = None, **_: object) -> None:
    # Runs in the process that queues a task (for beat_tick: the beat). The worker may
    # run queued ticks in a burst after its own restart; the sender's time and pid are
    # what tell one beat from two.
    if sender == "notes.tasks.beat_tick" and headers is not None:
        headers.update(queued_at=time.time(), queued_by=os.getpid())


@app.task(bind=True)
def beat_tick(self: Task) -> None:
    """Scheduled every 5 s (shop/celery.py): one line per run (UTC time it was queued, pid
    of the beat that queued it, release that ran it), so runs can be counted."""
    queued_at = getattr(self.request, "queued_at", None) or time.time()
    queued_by = getattr(self.request, "queued_by", None) or os.getpid()
    when = datetime.fromtimestamp(queued_at, UTC).isoformat(timespec="milliseconds")
    settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
    with (settings.VAR_DIR / "beat.log").open("a") as log:
        log.write(f"{when} {queued_by} {VERSION}\n")

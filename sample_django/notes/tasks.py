"""Worker side: a task that sleeps then writes a note, and beat's periodic tick."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime

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


@app.task
def beat_tick() -> None:
    """Scheduled every 5 s (shop/celery.py): one line per run, so runs can be counted."""
    settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    with (settings.VAR_DIR / "beat.log").open("a") as log:
        log.write(f"{now} {VERSION}\n")

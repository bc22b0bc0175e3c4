"""Web side: `/` says which release answers, `/task` queues a task, `/health` for checks."""

from __future__ import annotations

import os
import re

from flask import Flask, abort, request

from app.tasks import sleep_and_mark
from app.version import VERSION

application = Flask(__name__)


@application.get("/")
def index() -> str:
    return f"sample {VERSION} pid {os.getpid()}\n"


@application.get("/health")
def health() -> str:
    return "ok\n"


@application.get("/task")
def task() -> str:
    seconds = float(request.args.get("seconds", "1"))
    task_id = request.args.get("id", "")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", task_id) or not 0 <= seconds <= 600:
        abort(400)
    sleep_and_mark.delay(seconds, task_id)
    return f"queued {task_id} by {VERSION}\n"


@application.get("/setting/<name>")
def setting(name: str) -> str:
    """The value of the app's setting SAMPLE_<name> (`invoke env.set`), or 404 when unset."""
    value = os.environ.get(f"SAMPLE_{name.upper()}")
    if value is None:
        abort(404)
    return value + "\n"

"""Web side: `/` says which release answers, `/task` queues a task, `/health` for checks,
`POST /upload?name=NAME` stores the body as an upload (nginx serves it at /media/NAME),
`/scheme` says how the request reached the site (http or https)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from flask import Flask, abort, request

from app.tasks import sleep_and_mark
from app.version import VERSION

application = Flask(__name__)
# The one place the app may write on an eep host; nginx serves media/ at /media/.
MEDIA = Path(os.environ.get("EEP_SHARED_DIR", "/tmp")) / "media"
# An upload's name: no path, no dotfile (nginx would refuse to serve it anyway).
UPLOAD_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


@application.get("/")
def index() -> str:
    return f"sample {VERSION} pid {os.getpid()}\n"


@application.get("/health")
def health() -> str:
    return "ok\n"


@application.get("/scheme")
def scheme() -> str:
    """wsgi.url_scheme and the X-Forwarded-Proto header, as the app receives them."""
    forwarded = request.headers.get("X-Forwarded-Proto", "-")
    return f"{request.environ['wsgi.url_scheme']} {forwarded}\n"


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


@application.post("/upload")
def upload() -> tuple[str, int]:
    name = request.args.get("name", "")
    if not UPLOAD_NAME.fullmatch(name) or request.content_length is None:
        abort(400)
    # Written beside it, then renamed: nginx never serves half a file. 0640: nginx
    # reads it through the app's group, no other account can.
    temp = MEDIA / f".{name}.{os.urandom(6).hex()}.part"
    with open(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640), "wb") as handle:
        handle.write(request.get_data())
    temp.replace(MEDIA / name)
    return f"stored /media/{name}\n", 201

"""Web side: `/` says which release answers, a few forms, `/task/` queues a task."""

from __future__ import annotations

import re

from django.db import connection
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from notes.models import Note, Upload
from notes.tasks import sleep_and_note
from shop.version import VERSION


def text(body: str, status: int = 200) -> HttpResponse:
    return HttpResponse(body, status=status, content_type="text/plain; charset=utf-8")


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    context = {"version": VERSION, "count": Note.objects.count()}
    return render(request, "notes/index.html", context)


@require_GET
def health(request: HttpRequest) -> HttpResponse:
    # A query, not just a response: without its database the app is not healthy, and
    # the error (a 500) fails the deploy's health check.
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return text("ok\n")


# CSRF-exempt so that tests can post with curl, which has no CSRF token. A real
# form behind a login keeps Django's CSRF protection.
@csrf_exempt
@require_POST
def add_note(request: HttpRequest) -> HttpResponse:
    body = request.POST.get("text", "").strip()
    if not body:
        return HttpResponseBadRequest("text is required\n")
    note = Note.objects.create(text=body)
    return text(f"note {note.pk}\n", status=201)


@csrf_exempt  # as above
@require_POST
def upload(request: HttpRequest) -> HttpResponse:
    if "file" not in request.FILES:
        return HttpResponseBadRequest("file is required\n")
    stored = Upload.objects.create(file=request.FILES["file"])
    return text(f"{stored.file.url}\n", status=201)


@require_GET
def task(request: HttpRequest) -> HttpResponse:
    task_id = request.GET.get("id", "")
    try:
        seconds = float(request.GET.get("seconds", "1"))
    except ValueError:
        seconds = -1
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", task_id) or not 0 <= seconds <= 600:
        return HttpResponseBadRequest("id: 1-64 of [A-Za-z0-9_-]; seconds: 0 to 600\n")
    sleep_and_note.delay(seconds, task_id)
    return text(f"queued {task_id} by {VERSION}\n")

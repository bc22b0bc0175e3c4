from __future__ import annotations

from django.contrib import admin

from notes.models import Note, Upload


@admin.register(Note)
class NoteAdmin(admin.ModelAdmin):
    list_display = ["text", "created", "done_by"]


@admin.register(Upload)
class UploadAdmin(admin.ModelAdmin):
    list_display = ["file", "created"]

from __future__ import annotations

from django.db import models


class Note(models.Model):
    text = models.TextField()
    created = models.DateTimeField(auto_now_add=True)
    # The release whose Celery worker wrote it, for notes made by a task.
    done_by = models.CharField(max_length=100, null=True, blank=True)

    def __str__(self) -> str:
        return self.text[:50]


class Upload(models.Model):
    # Stored under MEDIA_ROOT/uploads/; Django renames a file whose name is taken.
    file = models.FileField(upload_to="uploads/")
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.file.name

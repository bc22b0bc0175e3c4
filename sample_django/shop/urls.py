from __future__ import annotations

from django.conf import settings
from django.conf.urls.static import static
from django.contrib import admin
from django.urls import path

from notes import views

urlpatterns = [
    path("", views.index),
    path("notes/", views.add_note),
    path("upload/", views.upload),
    path("task/", views.task),
    path("health/", views.health),
    path("admin/", admin.site.urls),
    # Only with DJANGO_DEBUG=1 (runserver); on a host nginx serves /media/ itself.
    *static(settings.MEDIA_URL, document_root=settings.MEDIA_ROOT),
]

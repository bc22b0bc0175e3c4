"""Settings, all read from the environment the host provides (see README.md).

On an eep host the app may write only under $EEP_SHARED_DIR (media/ and var/); the
release itself is read-only at run time. Without EEP_SHARED_DIR (a laptop, the unit
tests) the app writes in var/ and media/ beside the code instead.
"""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent  # the release root, where manage.py is
SHARED_DIR = Path(os.environ.get("EEP_SHARED_DIR") or BASE_DIR)
VAR_DIR = SHARED_DIR / "var"  # SQLite, the beat schedule, task markers, beat.log

DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
# Left empty when unset: Django then refuses only what needs it (signing, sessions),
# so `collectstatic` at build time and `migrate` run without the secret.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or ("insecure-debug-only" if DEBUG else "")
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "").split()

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "notes",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "shop.urls"
WSGI_APPLICATION = "shop.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

if os.environ.get("PGDATABASE"):
    # A local PostgreSQL over its unix socket (PGHOST is the socket's directory) with
    # peer authentication: the database user is the app's system user, no password.
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ["PGDATABASE"],
            "USER": os.environ.get("PGUSER", ""),
            "HOST": os.environ.get("PGHOST", ""),
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "db.sqlite3",
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"

# `collectstatic` copies every app's static files into the release at build time;
# nginx serves them at /static/. The manifest storage puts a hash of each file's
# content in its name, so a file may be cached for long: a new content is a new name.
STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "static"
# Uploads outlive releases: they go to the shared directory, served by nginx at /media/.
MEDIA_URL = "/media/"
MEDIA_ROOT = SHARED_DIR / "media"
# nginx reads uploads through the app's group; nobody else needs to.
FILE_UPLOAD_PERMISSIONS = 0o640
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o750
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"},
}

# Everything to stderr: uWSGI and the Celery worker put it in the app's logs.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["stderr"], "level": "INFO"},
    "loggers": {"django": {"handlers": ["stderr"], "level": "INFO", "propagate": False}},
}

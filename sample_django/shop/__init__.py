"""eep's Django sample: the project package (settings, URLs, WSGI and Celery entry points)."""

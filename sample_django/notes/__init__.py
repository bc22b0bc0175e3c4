"""The notes app: a model, a few views, the Celery tasks and the static CSS."""

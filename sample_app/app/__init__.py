"""eep's sample application: a Flask app and a Celery task, used by the demo and the tests."""

"""Names and paths of this app on its hosts, fixed when the template was baked."""

PROJECT_NAME = {{ cookiecutter.project_name | tojson }}
SLUG = {{ cookiecutter.project_slug | tojson }}
# Runtime identity: runs uWSGI, Celery and the broker; no login, no SSH.
RUNTIME_USER = SLUG
# The developer's account: uploads and activates releases, controls the app
# through the literal sudo rules in config/sudoers. Never root.
DEPLOY_USER = {{ cookiecutter.__deploy_user | tojson }}
DOMAINS = [
{%- for name in cookiecutter.domain.replace(",", " ").split() %}
    {{ name | tojson }},
{%- endfor %}
]
WSGI_MODULE = {{ cookiecutter.wsgi_module | tojson }}
PYTHON_VERSION = {{ cookiecutter.python_version | tojson }}
USE_CELERY = {{ "True" if cookiecutter.use_celery == "y" else "False" }}
CELERY_APP = {{ cookiecutter.celery_app | tojson }}
# Celery beat attached too (uwsgi.ini): one instance, its schedule in shared/var.
USE_BEAT = {{ "True" if cookiecutter.celery_beat == "y" else "False" }}
KEEP_RELEASES = {{ cookiecutter.keep_releases | int }}
# "none", or "postgresql": a role and a database named SLUG (eep/database.py).
DATABASE = {{ cookiecutter.database | tojson }}

APP_ROOT = {{ cookiecutter.__app_root | tojson }}
RELEASES_DIR = f"{APP_ROOT}/releases"
CURRENT = f"{APP_ROOT}/current"
SHARED_DIR = f"{APP_ROOT}/shared"
SETTINGS_FILE = f"{SHARED_DIR}/env"
RUN_DIR = {{ cookiecutter.__run_dir | tojson }}
LOG_DIR = {{ cookiecutter.__log_dir | tojson }}
CONF_DIR = {{ cookiecutter.__conf_dir | tojson }}
SOCKET = f"{RUN_DIR}/web.sock"
DEPLOY_TRIGGER = f"{RUN_DIR}/deploy"

# HTTPS (eep/tls.py): "none", "self-signed" or "acme" (certbot, renewed by its timer).
TLS = {{ cookiecutter.tls | tojson }}
ACME_DIRECTORY = {{ cookiecutter.acme_directory | tojson }}
ACME_EMAIL = {{ cookiecutter.acme_email | tojson }}
HSTS = {{ "True" if cookiecutter.hsts == "y" else "False" }}

"""Provision and deploy {{ cookiecutter.project_slug }}: `invoke --list` shows the tasks, `invoke --help TASK` their options."""

from invoke import Collection, Exit, task


def _not_built(name: str) -> None:
    # Never a silent no-op: a task that does not exist yet says so and fails.
    raise Exit(f"error: `invoke {name}` is not implemented yet in this version of eep", code=2)


@task(
    help={
        "host": "root@HOST[:PORT] or ADMIN@HOST (sudo); several separated by commas",
        "check": "dry run: show what would change, with diffs, and change nothing",
        "identity": "SSH private key file to log in with",
    }
)
def provision(c, host="", check=False, identity=""):
    """Set up the server (once, as root): users, directories, packages, nginx, supervisor, sudoers."""
    _not_built("provision")


@task(
    help={
        "release": "the release tarball (e.g. dist/app-1.2.tar.gz)",
        "host": "deploy@HOST[:PORT]; defaults to eep.deploy_hosts in invoke.yaml",
        "stage": "upload, build and check the release, but do not activate it",
    }
)
def deploy(c, release, host="", stage=False):
    """Upload a release, build its virtualenv, run its checks and activate it gracefully."""
    _not_built("deploy")


@task(help={"release": "release id, as listed by `invoke releases`"})
def activate(c, release):
    """Activate a staged release: switch `current` and reload gracefully."""
    _not_built("activate")


@task(help={"to": "release id to go back to (default: the one before current)"})
def rollback(c, to=""):
    """Switch back to an earlier release and reload gracefully."""
    _not_built("rollback")


@task
def releases(c):
    """List the releases on the host: dates, versions, current and failed ones marked."""
    _not_built("releases")


@task
def status(c):
    """Show every process of the app, the current release and nginx's answer."""
    _not_built("status")


@task
def restart(c):
    """Reload the app gracefully (running tasks finish, no request fails)."""
    _not_built("restart")


@task(
    help={
        "follow": "keep printing new lines",
        "process": "only this process (uwsgi, celery, nginx)",
        "lines": "how many lines",
    }
)
def logs(c, follow=False, process="", lines=50):
    """Show the app's logs: uWSGI, Celery and nginx of this app only."""
    _not_built("logs")


ns = Collection(provision, deploy, activate, rollback, releases, status, restart, logs)

"""Provision and deploy {{ cookiecutter.project_slug }}: `invoke --list` shows the tasks, `invoke --help TASK` their options."""

import shlex
import sys

from invoke import Collection, Exit, task


def _hosts(c, given: str, setting: str) -> list[str]:
    from eep.remote import use_known_hosts

    use_known_hosts(c.config.eep.get("known_hosts") or "known_hosts")
    hosts = [h.strip() for h in given.split(",") if h.strip()] or c.config.eep[setting]
    if _by_name(c, given):
        # With an inventory, hosts are named by it (USER@HOST still names one directly):
        # each as root or as the deploy account.
        if setting == "provision_hosts":
            return [h.provision_spec() for _, h in _targets(c, given, setting)]
        return [h.deploy_spec() for _, h in _targets(c, given, setting) if h.runs_app]
    if not hosts:
        raise Exit(f"error: no host: pass --host or set eep.{setting} in invoke.yaml", code=1)
    return hosts


def _by_name(c, given: str) -> bool:
    """Whether the hosts are the inventory's (eep.hosts), named or all of them, rather
    than USER@HOST targets given with --host."""
    return bool(c.config.eep.get("hosts")) and "@" not in given


def _targets(c, given: str, setting: str):
    """The hosts a command acts on, each with its fleet (eep/fleet.py): the inventory
    eep.hosts when there is one (--host then picks some of its hosts by name), otherwise
    every host given or listed in eep.<setting>, each a server of its own."""
    from eep.fleet import resolve
    from eep.remote import HostError, use_known_hosts

    use_known_hosts(c.config.eep.get("known_hosts") or "known_hosts")
    names = [h.strip() for h in given.split(",") if h.strip()]
    try:
        targets = resolve(
            c.config.eep.get("hosts"),
            names,
            c.config.eep.get(setting) or [],
            c.config.eep.get("lb_health") or "/",
        )
    except HostError as error:
        raise Exit(f"error: {error}", code=1) from None
    if not targets:
        raise Exit("error: no host: pass --host or set eep.hosts in invoke.yaml", code=1)
    return targets


@task(
    help={
        "host": "root@HOST[:PORT] or ADMIN@HOST (sudo), or a host of eep.hosts;"
        " several separated by commas",
        "check": "dry run: show what would change, with diffs, and change nothing",
        "identity": "SSH private key file to log in with",
        "trust_new_host_key": "accept and record (in known_hosts) the key of a host seen first",
    }
)
def provision(c, host="", check=False, identity="", trust_new_host_key=False):
    """Set up the server (once, as root): users, directories, packages, nginx, supervisor, sudoers."""
    # Imported here so `invoke --list` stays fast (no SSH libraries loaded).
    from eep.provision import provision as run
    from eep.remote import HostError

    targets = _targets(c, host, "provision_hosts")
    try:
        reports = run(
            targets, check=check, identity=identity, trust_new_host_key=trust_new_host_key
        )
    except HostError as error:
        raise Exit(f"error: {error}", code=1) from None
    if any(report.failed for report in reports):
        raise Exit(code=1)


DEPLOY_HELP = {
    "host": "deploy@HOST[:PORT]; defaults to eep.deploy_hosts in invoke.yaml",
    "identity": "SSH private key file of the deploy account",
}


RELOAD_HELP = (
    "chain: web workers one at a time, no pause (default); all: every worker at once,"
    " fastest, requests wait about one app load"
)


def _reload_mode(reload: str, allowed: tuple[str, ...] = ("chain", "all")) -> str:
    if reload not in allowed:
        raise Exit(f"error: --reload must be one of {', '.join(allowed)}, not {reload!r}", code=1)
    return reload


def _on_hosts(c, host: str, action, setting: str = "deploy_hosts") -> None:
    """Run `action(spec)` for each host; one-line error and exit 1 on failure."""
    from eep.remote import HostError

    for spec in _hosts(c, host, setting):
        try:
            action(spec)
        except HostError as error:
            raise Exit(f"error: [{spec}] {error}", code=1) from None


ROLLING_HELP = {
    "host": "deploy@HOST[:PORT], or with eep.hosts some of its hosts by name (default: all);"
    " several separated by commas",
    "batch": "with eep.hosts: switch N web hosts at a time (default 1)",
    "keep_going": "with eep.hosts: when a host fails its health gate, go on with the"
    " others instead of putting every host back on the previous release",
}


def _rolling(c, host: str, batch: int, keep_going: bool, action) -> bool:
    """With an inventory (eep.hosts), run `action(fleet, hosts)` over the fleet, rolling
    host by host (eep/rolling.py), and return True; without one, return False: each host
    is then a server of its own, deployed as before (also USER@HOST given with --host)."""
    from eep.remote import HostError

    if not c.config.eep.get("hosts") or "@" in host:
        if batch != 1 or keep_going:
            raise Exit("error: --batch and --keep-going need eep.hosts in invoke.yaml", code=1)
        return False
    targets = _targets(c, host, "deploy_hosts")
    try:
        action(targets[0][0], [target for _, target in targets])
    except HostError as error:
        raise Exit(f"error: {error}", code=1) from None
    return True


@task(
    help={
        "release": "the release tarball (e.g. dist/app-1.2.tar.gz)",
        "stage": "upload, build and check the release, but do not activate it",
        "break_lock": "remove a deploy lock left by a deploy that died",
        "reload": RELOAD_HELP,
        **DEPLOY_HELP,
        **ROLLING_HELP,
    }
)
def deploy(
    c,
    release,
    host="",
    identity="",
    stage=False,
    break_lock=False,
    reload="chain",
    batch=1,
    keep_going=False,
):
    """Upload a release, build its virtualenv, run its checks and activate it gracefully."""
    from eep import rolling
    from eep.deploy import deploy as run

    mode = _reload_mode(reload)
    options = {"identity": identity, "break_lock": break_lock, "reload": mode}
    if _rolling(
        c,
        host,
        batch,
        keep_going,
        lambda fleet, hosts: rolling.deploy(
            fleet, hosts, release, stage=stage, batch=batch, keep_going=keep_going, **options
        ),
    ):
        return
    _on_hosts(
        c,
        host,
        lambda spec: run(
            release, spec, identity=identity, stage=stage, break_lock=break_lock, reload=mode
        ),
    )


@task(
    help={
        "release": "release id, as listed by `invoke releases`",
        "reload": RELOAD_HELP,
        "break_lock": "with eep.hosts: remove deploy locks left by a deploy that died",
        **DEPLOY_HELP,
        **ROLLING_HELP,
    }
)
def activate(
    c, release, host="", identity="", reload="chain", batch=1, keep_going=False, break_lock=False
):
    """Activate a staged release: switch `current` and reload gracefully."""
    from eep import rolling
    from eep.deploy import activate as run

    mode = _reload_mode(reload)
    if _rolling(
        c,
        host,
        batch,
        keep_going,
        lambda fleet, hosts: rolling.activate(
            fleet,
            hosts,
            release,
            identity=identity,
            reload=mode,
            batch=batch,
            keep_going=keep_going,
            break_lock=break_lock,
        ),
    ):
        return
    _on_hosts(c, host, lambda spec: run(release, spec, identity=identity, reload=mode))


@task(
    help={
        "to": "release id to go back to (default: the one before current)",
        "break_lock": "remove a deploy lock left by a deploy that died",
        "reload": "all: every web worker at once, fastest (default); chain: one at a time",
        **DEPLOY_HELP,
        **ROLLING_HELP,
    }
)
def rollback(
    c, to="", host="", identity="", break_lock=False, reload="all", batch=1, keep_going=False
):
    """Switch back to an earlier release and reload gracefully (all workers at once)."""
    from eep import rolling
    from eep.deploy import rollback as run

    mode = _reload_mode(reload)
    if _rolling(
        c,
        host,
        batch,
        keep_going,
        lambda fleet, hosts: rolling.rollback(
            fleet,
            hosts,
            to=to,
            identity=identity,
            reload=mode,
            batch=batch,
            keep_going=keep_going,
            break_lock=break_lock,
        ),
    ):
        return
    _on_hosts(
        c,
        host,
        lambda spec: run(spec, to=to, identity=identity, break_lock=break_lock, reload=mode),
    )


@task(help=DEPLOY_HELP)
def releases(c, host="", identity=""):
    """List the releases on the host: current and failed ones, when, how and by whom activated."""
    from eep.deploy import releases as run

    _on_hosts(c, host, lambda spec: run(spec, identity=identity))


@task(
    help={
        "host": "root@HOST (every check) or the deploy account (checks needing root are"
        " skipped); several separated by commas; defaults to eep.provision_hosts",
        "identity": "SSH private key file to log in with",
    }
)
def audit(c, host="", identity=""):
    """Check a live host against the threat model: a PASS/FAIL table, exit 1 on any failure."""
    from eep.audit import audit as run
    from eep.remote import HostError

    failed = []
    for fleet, one in _targets(c, host, "provision_hosts"):
        spec = one.provision_spec()
        try:
            run(spec, identity=identity, fleet=fleet, host=one) or failed.append(spec)
        except HostError as error:
            raise Exit(f"error: [{spec}] {error}", code=1) from None
    if failed:
        raise Exit(f"error: audit failed on {', '.join(failed)}", code=1)


def _one(label: str, action, *args, **kwargs):
    """`action(*args, **kwargs)`, or exit 1 with one line naming the host when it fails."""
    from eep.remote import HostError

    try:
        return action(*args, **kwargs)
    except HostError as error:
        raise Exit(f"error: [{label}] {error}", code=1) from None


def _balancer(c):
    """The lb host of eep.hosts, or None."""
    from eep.fleet import FleetError, load

    try:
        fleet = load(c.config.eep.get("hosts"), c.config.eep.get("lb_health") or "/")
    except FleetError as error:
        raise Exit(f"error: {error}", code=1) from None
    return fleet.lb if fleet else None


@task(help=DEPLOY_HELP)
def status(c, host="", identity=""):
    """Show every process of the app, the current release and nginx's answer; exit 1 if down."""
    from eep.control import status as run
    from eep.report import say

    down = []
    lb = _balancer(c)
    if not _by_name(c, host):
        _on_hosts(
            c, host, lambda spec: run(spec, identity=identity)["healthy"] or down.append(spec)
        )
        if lb is not None:  # a server of the inventory given as USER@HOST: its balancer too
            from eep.balancer import status as balancer_status

            if not _one(lb.name, balancer_status, lb.deploy_spec(), identity=identity)["healthy"]:
                down.append(lb.name)
    else:
        # With an inventory: each host's own lines, then the fleet's table, a row per host.
        from eep.balancer import status as balancer_status

        rows = []
        for _, target in _targets(c, host, "deploy_hosts"):
            name, spec = target.name, target.deploy_spec()
            if target.runs_app:
                found = _one(name, run, spec, identity=identity, name=name)
            elif target.has("lb"):
                found = _one(name, balancer_status, spec, identity=identity, name=name)
            else:
                continue  # a broker host of its own: `invoke audit` checks it
            rows.append((name, ",".join(sorted(target.roles)), found))
        width = max([len(row[0]) for row in rows] + [4])
        say(f"{'host':<{width}}  {'roles':<20} {'release':<40} health")
        for name, roles, found in rows:
            state = "up" if found["healthy"] else "DOWN"
            say(f"{name:<{width}}  {roles:<20} {found['release']:<40} {state}: {found['health']}")
        down = [name for name, _, found in rows if not found["healthy"]]
    if down:
        raise Exit(f"error: down on {', '.join(down)}", code=1)


@task(
    help={
        "reload": RELOAD_HELP + "; full: the uWSGI master too, re-reading uwsgi.ini",
        **DEPLOY_HELP,
    }
)
def restart(c, host="", identity="", reload="chain"):
    """Reload the app gracefully (running tasks finish, no request fails)."""
    from eep.control import restart as run

    mode = _reload_mode(reload, ("chain", "all", "full"))
    _on_hosts(c, host, lambda spec: run(spec, identity=identity, mode=mode))


@task(
    help={
        "now": "hard stop: kill running Celery tasks instead of waiting for them",
        "timeout": "seconds to wait for running tasks to finish",
        **DEPLOY_HELP,
    }
)
def stop(c, host="", identity="", now=False, timeout=600):
    """Stop the app; running Celery tasks finish first (the broker keeps queued ones)."""
    from eep.control import stop as run

    _on_hosts(c, host, lambda spec: run(spec, identity=identity, now=now, timeout=timeout))


@task(help=DEPLOY_HELP)
def start(c, host="", identity=""):
    """Start the app after `invoke stop` and wait until it answers."""
    from eep.control import start as run

    _on_hosts(c, host, lambda spec: run(spec, identity=identity))


def _one_deploy_host(c, host: str) -> str:
    """The one deploy host given or listed; exit 1 when there are several."""
    hosts = _hosts(c, host, "deploy_hosts")
    if len(hosts) != 1:
        raise Exit("error: several deploy hosts: choose one with --host", code=1)
    return hosts[0]


def _on_one_host(c, host: str, action) -> None:
    """Run `action(spec)` on the one deploy host; its exit status becomes this command's."""
    spec = _one_deploy_host(c, host)
    exited = _one(spec, action, spec)
    if exited:
        raise Exit(code=exited)


@task(
    name="run",
    help={
        "command": "the command; or put it after `--`: invoke run -- ./manage.py migrate",
        **DEPLOY_HELP,
    },
)
def run_command(c, command="", host="", identity=""):
    """Run one command on the host as the app user, in the current release, with its settings."""
    from eep.control import run

    if not command and "--" in sys.argv:
        # Everything after `--`, with the quoting the shell gave it.
        command = shlex.join(sys.argv[sys.argv.index("--") + 1 :])
    if not command:
        raise Exit("error: no command: invoke run -- COMMAND [ARGS...]", code=1)
    _on_one_host(c, host, lambda spec: run(spec, command, identity=identity))


@task(help=DEPLOY_HELP)
def shell(c, host="", identity=""):
    """An interactive shell on the host as the app user, in the current release."""
    from eep.control import shell as run

    _on_one_host(c, host, lambda spec: run(spec, identity=identity))


@task(
    help={
        "follow": "keep printing new lines",
        "process": "uwsgi (default), celery, redis, nginx (access) or nginx-error",
        "lines": "how many lines",
        **DEPLOY_HELP,
    }
)
def logs(c, host="", identity="", follow=False, process="", lines=50):
    """Show the app's logs: uWSGI with its attached processes, the broker, or nginx."""
    from eep.control import logs as run

    _on_hosts(
        c,
        host,
        lambda spec: run(spec, identity=identity, process=process, lines=lines, follow=follow),
    )


@task(
    help={
        "state": "on: visitors get 503 and config/maintenance.html; off: the app answers again",
        **DEPLOY_HELP,
    }
)
def maintenance(c, state, host="", identity=""):
    """Maintenance mode on or off: nginx answers visitors 503; deploys and checks still work."""
    from eep.maintenance import maintenance as run

    if state not in ("on", "off"):
        raise Exit(f"error: maintenance takes on or off, not {state!r}", code=1)
    _on_hosts(c, host, lambda spec: run(spec, state == "on", identity=identity))


@task(
    name="list",
    default=True,
    help={
        "show": "print the values too (they are secrets: mind who sees your screen)",
        **DEPLOY_HELP,
    },
)
def env_list(c, show=False, host="", identity=""):
    """List the app's settings (names only unless --show)."""
    from eep.settings import list_fleet, list_settings

    fleet = _app_hosts(c, host)
    if fleet is None:
        _on_one_host(c, host, lambda spec: list_settings(spec, identity=identity, show=show) or 0)
        return
    differ = _or_exit(lambda: list_fleet(fleet, identity=identity, show=show))
    if differ:
        names = ", ".join(differ)
        raise Exit(f"error: not the same on every host: {names} (env.set sets it on all)", code=1)


@task(
    name="set",
    help={
        "setting": "NAME=VALUE, or NAME alone to type the value at a prompt (kept out of your"
        " shell history: use that for secrets); more after `--`",
        "restart": "restart the app afterwards so it sees the change",
        **DEPLOY_HELP,
    },
)
def env_set(c, setting, restart=False, host="", identity=""):
    """Set settings of the app (environment variables of every process); a restart applies them."""
    from eep.settings import parse_assignments

    words = [setting]
    if "--" in sys.argv:
        words += sys.argv[sys.argv.index("--") + 1 :]
    values = _or_exit(lambda: parse_assignments(words))
    _change(c, host, {"op": "set", "values": values}, restart, identity)


@task(
    name="unset",
    help={
        "name": "the setting to remove; more after `--`",
        "restart": "restart the app afterwards",
        **DEPLOY_HELP,
    },
)
def env_unset(c, name, restart=False, host="", identity=""):
    """Remove settings of the app; a restart applies it."""
    from eep.settings import check_name

    names = [name] + (sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else [])
    _or_exit(lambda: [check_name(n) for n in names])
    _change(c, host, {"op": "unset", "names": names}, restart, identity)


def _or_exit(action):
    """`action()`, or exit 1 with its one-line error."""
    from eep.remote import HostError

    try:
        return action()
    except HostError as error:
        raise Exit(f"error: {error}", code=1) from None


def _app_hosts(c, host: str) -> dict[str, str] | None:
    """With an inventory: {name: deploy spec} of its app hosts (or of those named with
    --host); without one: None (one server, given with --host or eep.deploy_hosts)."""
    if not _by_name(c, host):
        return None
    return {t.name: t.deploy_spec() for _, t in _targets(c, host, "deploy_hosts") if t.runs_app}


def _change(c, host: str, request: dict, restart: bool, identity: str) -> None:
    """env.set / env.unset: on the one server, or with an inventory on every app host
    (they all run the same code, so they get the same settings), then, with --restart,
    a graceful reload of each host in turn."""
    from eep.control import restart as restart_app
    from eep.remote import HostError
    from eep.settings import change_settings

    fleet = _app_hosts(c, host)
    if fleet is None:
        spec = _one_deploy_host(c, host)
        fleet = {spec: spec}
    changed = False
    done: list[str] = []
    for name, spec in fleet.items():
        try:
            changed = bool(change_settings(spec, request, identity=identity, name=name)) or changed
        except HostError as error:
            finish = f"; done on {', '.join(done)}: run it again to finish" if done else ""
            raise Exit(f"error: [{name}] {error}{finish}", code=1) from None
        done.append(name)
    if changed and restart:
        for name, spec in fleet.items():
            _one(name, restart_app, spec, identity=identity, mode="chain")


@task(
    help={
        "to": "the template version to update to: a tag (e.g. v1.2), branch or commit;"
        " default: the template's default branch",
        "template": "the template's git URL, if not the one recorded in .cookiecutter.json",
    }
)
def update(c, to="", template=""):
    """Bring a newer version of the eep template into this tree, keeping your edits."""
    from eep.manifest import TREE
    from eep.update import UpdateError
    from eep.update import update as run

    try:
        conflicts = run(TREE, to=to, template=template)
    except UpdateError as error:
        raise Exit(f"error: {error}", code=1) from None
    if conflicts:
        raise Exit(
            f"error: conflicts to resolve (<<<<<<< markers), then commit: {', '.join(conflicts)}",
            code=1,
        )


env = Collection("env", env_list, env_set, env_unset)
{%- if cookiecutter.database == "postgresql" %}


@task(
    help={
        "label": "a word in the backup's name (default: manual)",
        "download": "also copy it to this file or directory here (created 0600)",
        **DEPLOY_HELP,
    }
)
def backup(c, label="", download="", host="", identity=""):
    """Back up the app's database now (pg_dump, custom format) into shared/backups on the host."""
    from eep.backups import backup as run

    _on_one_host(
        c, host, lambda spec: run(spec, identity=identity, label=label, download=download) and 0
    )


@task(help=DEPLOY_HELP)
def backups(c, host="", identity=""):
    """List the database backups on the host, oldest first."""
    from eep.backups import list_backups

    _on_one_host(c, host, lambda spec: list_backups(spec, identity=identity) and 0)


@task(
    help={
        "name": "the backup, as `invoke backups` lists it",
        "yes": "really replace the database with the backup",
        **DEPLOY_HELP,
    }
)
def restore(c, name, yes=False, host="", identity=""):
    """Replace the app's database with a backup; the app is stopped meanwhile (needs --yes)."""
    from eep.backups import restore as run

    _on_one_host(c, host, lambda spec: run(spec, name, identity=identity, yes=yes) or 0)


@task(
    help={
        "name": "the backup, as `invoke backups` lists it",
        "to": "file or directory here",
        **DEPLOY_HELP,
    }
)
def download(c, name, to=".", host="", identity=""):
    """Copy a database backup from the host to this machine (a new file, mode 0600)."""
    from eep.backups import download as run

    _on_one_host(c, host, lambda spec: run(spec, name, to, identity=identity) or 0)
{% endif %}

ns = Collection(
    provision,
    audit,
    deploy,
    activate,
    rollback,
    releases,
    status,
    restart,
    stop,
    start,
    logs,
    run_command,
    shell,
    env,
{%- if cookiecutter.database == "postgresql" %}
    backup,
    backups,
    restore,
    download,
{%- endif %}
    maintenance,
    update,
)

"""Benchmark `invoke provision` against an Ansible play doing the same, side by side.

    .venv/bin/python bench/ansible_compare.py [--rounds 3] [--again 5]

Each round boots two fresh test hosts from the same image: eep provisions one, the
play (ansible-core from PyPI, in its own venv under build/, made on the first run)
the other. Cold runs come first, then runs with nothing to do, alternated between
the two (and which one goes first alternates from round to round). Prints every run,
then medians and ratios; asserts nothing.

The play is written from the baked tree itself (its manifest, directories, packages),
so both install the same files with the same owners and modes: packages, the
accounts and group, the directories, every config file (sudoers through `visudo
-cf`), nginx's links and log files, supervisor's programs; handlers reload what
changed, as eep does. Ansible runs with pipelining on and its default SSH
connection sharing (ControlPersist 60 s), as its documentation recommends.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "e2e")]

from e2e_support import bake_tree  # noqa: E402

from testhosts import create_host, ensure_ready  # noqa: E402

VENV = REPO / "build" / "bench-ansible"

# What the play needs to know of the baked tree, read from its own modules.
TREE_FACTS = """
import json
from eep import accounts, app, layout, manifest, nginx, packages, supervisor
print(json.dumps({
    "slug": app.SLUG, "deploy": app.DEPLOY_USER, "app_root": app.APP_ROOT,
    "python": app.PYTHON_VERSION, "mark": accounts.MARK, "packages": packages.PACKAGES,
    "programs": supervisor.PROGRAMS, "ctl": supervisor.CTL,
    "drop_in_dir": supervisor.SERVICE_DROP_IN_DIR,
    "dirs": [[p, o, g, format(m, "04o")] for p, o, g, m in layout.DIRECTORIES],
    "run_dirs": layout.RUN_DIRECTORIES,
    "files": [[f.source, f.path, f.owner, f.group, format(f.mode, "04o")]
              for f in manifest.HOST_FILES],
    "retired": manifest.RETIRED_FILES, "logs": nginx.LOG_FILES,
    "enabled": nginx.ENABLED, "default_enabled": nginx.DEFAULT_ENABLED,
    "debian_default": nginx.DEBIAN_DEFAULT[0],
}))
"""

# Which handler a changed file notifies (the same reactions as eep's steps).
NOTIFY = {
    "config/tmpfiles.conf": "runtime dirs",
    "config/uwsgi-base.ini": "reload uwsgi",
    "config/no-release.py": "reload uwsgi",
    "config/redis.conf": "restart broker",
    "config/supervisor.conf": "update supervisor",
    "config/supervisor-service.conf": "daemon-reload",
    "config/nginx.conf": "reload nginx",
    "config/nginx-default.conf": "reload nginx",
}


def ansible_playbook() -> Path:
    """ansible-playbook from a venv of its own (ansible-core from PyPI), made once."""
    binary = VENV / "bin" / "ansible-playbook"
    if not binary.exists():
        print("installing ansible-core into build/bench-ansible ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(VENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, "ansible-core"], check=True)
    return binary


def write_play(tree: Path, path: Path) -> None:
    """The play, as JSON (which YAML reads), from the tree's own description of the host."""
    out = subprocess.run(
        [sys.executable, "-c", TREE_FACTS], cwd=tree, capture_output=True, text=True, check=True
    ).stdout
    t = json.loads(out)
    slug, ctl = t["slug"], t["ctl"]
    programs = " ".join(t["programs"])
    loop_item = {"owner": "{{ item.1 }}", "group": "{{ item.2 }}", "mode": "{{ item.3 }}"}
    tasks: list[dict] = [
        {
            "name": "Debian or Ubuntu with the python the tree was made for",
            "assert": {
                "that": [
                    "ansible_facts.os_family == 'Debian'",
                    "ansible_facts.python.version.major ~ '.' ~ "
                    f"ansible_facts.python.version.minor == '{t['python']}'",
                ]
            },
        },
        {
            "name": "packages",
            "apt": {
                "name": t["packages"],
                "install_recommends": False,
                "update_cache": True,
                "cache_valid_time": 3600,
            },
            "register": "installed",
        },
    ]
    if "redis-server" in t["packages"]:
        tasks.append(
            {
                "name": "no shared redis (when the packages brought it)",
                "systemd_service": {"name": "redis-server", "enabled": False, "state": "stopped"},
                "when": "installed is changed",
            }
        )
    tasks += [
        {
            "name": "services",
            "systemd_service": {"name": "{{ item }}", "enabled": True, "state": "started"},
            "loop": ["nginx", "supervisor"],
        },
        {"name": "app group", "group": {"name": slug, "system": True}},
        {
            "name": "runtime user",
            "user": {
                "name": slug,
                "group": slug,
                "system": True,
                "create_home": False,
                "home": t["app_root"],
                "shell": "/usr/sbin/nologin",
                "comment": t["mark"],
            },
        },
        {
            "name": "deploy account",
            "user": {
                "name": t["deploy"],
                "group": slug,
                "create_home": True,
                "home": f"/home/{t['deploy']}",
                "shell": "/bin/bash",
                "comment": t["mark"],
            },
        },
        {
            "name": "nginx in the app group",
            "user": {"name": "www-data", "groups": [slug], "append": True},
            "notify": "reload nginx",
        },
        {
            "name": "directories",
            "file": {"path": "{{ item.0 }}", "state": "directory", **loop_item},
            "loop": [*t["dirs"], [t["drop_in_dir"], "root", "root", "0755"]],
        },
    ]
    for source, dest, owner, group, mode in t["files"]:
        copy = {"src": str(tree / source), "dest": dest, "owner": owner, "group": group}
        task: dict = {"name": f"file {dest}", "copy": {**copy, "mode": mode}}
        if source == "config/sudoers":
            task["copy"]["validate"] = "visudo -cf %s"
        if source in NOTIFY:
            task["notify"] = NOTIFY[source]
        if source == "config/supervisor.conf":
            task["register"] = "programs"
        tasks.append(task)
    tasks += [
        {
            "name": "runtime dirs",
            "file": {
                "path": "{{ item.0 }}",
                "state": "{{ 'directory' if item.1 == 'directory' else 'touch' }}",
                "owner": "{{ item.2 }}",
                "group": "{{ item.3 }}",
                "mode": "{{ item.4 }}",
                "access_time": "preserve",
                "modification_time": "preserve",
            },
            "loop": t["run_dirs"],
        },
        {
            "name": "nginx log files",
            "file": {
                "path": "{{ item }}",
                "state": "touch",
                "owner": "root",
                "group": slug,
                "mode": "0640",
                "access_time": "preserve",
                "modification_time": "preserve",
            },
            "loop": t["logs"],
        },
        {
            "name": "sites enabled",
            "file": {"src": "{{ item.1 }}", "dest": "{{ item.0 }}", "state": "link"},
            "loop": [
                [t["enabled"], f"/etc/nginx/sites-available/{slug}"],
                [t["default_enabled"], "/etc/nginx/sites-available/eep-default"],
            ],
            "notify": "reload nginx",
        },
        {
            "name": "Debian's default site off",
            "file": {"path": t["debian_default"], "state": "absent"},
            "notify": "reload nginx",
        },
        {
            "name": "retired files",
            "file": {"path": "{{ item }}", "state": "absent"},
            "loop": t["retired"],
        },
        {"meta": "flush_handlers"},
        {
            "name": "supervisor programs running",
            "command": f"{ctl} status {programs}",
            "register": "status",
            "changed_when": False,
            "until": "'STARTING' not in status.stdout and 'BACKOFF' not in status.stdout",
            "retries": 40,
            "delay": 0.5,
            "failed_when": "status.stdout_lines | reject('search', 'RUNNING') | list | length > 0",
        },
    ]
    handlers = [
        {"name": "daemon-reload", "systemd_service": {"daemon_reload": True}},
        {"name": "runtime dirs", "command": "systemd-tmpfiles --create"},
        {"name": "update supervisor", "shell": f"{ctl} reread && {ctl} update {programs}"},
        # As eep: a changed program config means `update`, which restarts what changed.
        {
            "name": "reload uwsgi",
            "command": f"{ctl} signal HUP {slug}",
            "when": "programs is not changed",
        },
        {
            "name": "restart broker",
            "command": f"{ctl} restart {slug}-redis",
            "when": "programs is not changed",
        },
        {"name": "reload nginx", "shell": "nginx -t && systemctl reload nginx"},
    ]
    play = {
        "hosts": "all",
        "gather_facts": True,
        "gather_subset": ["!all", "min"],
        "tasks": tasks,
        "handlers": handlers,
    }
    path.write_text(json.dumps([play], indent=1))


def ansible_env(work: Path) -> dict[str, str]:
    return {
        **os.environ,
        "ANSIBLE_HOME": str(work / "home"),
        "ANSIBLE_LOCAL_TEMP": str(work / "tmp"),
        "ANSIBLE_CONTROL_PATH_DIR": str(work / "cp"),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "1",
    }


def run_ansible(playbook: Path, work: Path, host) -> tuple[float, int]:
    inventory = work / f"{host.name}.ini"
    ssh_args = (
        f"-o UserKnownHostsFile={host.known_hosts_path} -o GlobalKnownHostsFile=/dev/null"
        " -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"
    )
    inventory.write_text(
        f"{host.name} ansible_host=127.0.0.1 ansible_port={host.ssh_port} ansible_user=root"
        f" ansible_ssh_private_key_file={host.key_path}"
        f" ansible_python_interpreter=/usr/bin/python3 ansible_ssh_common_args='{ssh_args}'\n"
    )
    started = time.monotonic()
    result = subprocess.run(
        [str(ansible_playbook()), "-i", str(inventory), str(playbook)],
        capture_output=True,
        text=True,
        env=ansible_env(work),
    )
    took = time.monotonic() - started
    recap = re.search(r"ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", result.stdout)
    if result.returncode != 0 or not recap:
        raise SystemExit(f"error: ansible-playbook failed:\n{result.stdout[-3000:]}{result.stderr}")
    return took, int(recap.group(2))


def run_eep(tree, host) -> tuple[float, int]:
    started = time.monotonic()
    result = tree.provision(host)
    took = time.monotonic() - started
    if result.returncode != 0:
        detail = result.stderr.strip() or result.stdout[-500:]
        raise SystemExit(f"error: provision failed: {detail}")
    return took, int(re.findall(r"done: (\d+) changed", result.stdout)[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="fresh host pairs (cold runs)")
    parser.add_argument("--again", type=int, default=5, help="no-change runs per host and round")
    args = parser.parse_args()
    ensure_ready()
    ansible_playbook()
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tree = bake_tree(work, "bench")
        playbook = work / "play.yml"
        write_play(tree.path, playbook)
        for name in ("home", "tmp", "cp"):
            (work / name).mkdir()
        for round_ in range(args.rounds):
            hosts = {"eep": create_host("cmp-eep"), "ansible": None}
            try:
                hosts["ansible"] = create_host("cmp-ansible")
                tools = ["eep", "ansible"] if round_ % 2 == 0 else ["ansible", "eep"]
                for kind in ["cold"] + ["no change"] * args.again:
                    for tool in tools:
                        host = hosts[tool]
                        if tool == "eep":
                            took, changed = run_eep(tree, host)
                        else:
                            took, changed = run_ansible(playbook, work, host)
                        times.setdefault((tool, kind), []).append(took)
                        print(
                            f"round {round_ + 1}  {tool:<8} {kind:<10} {took:6.2f} s"
                            f"  {changed} changed",
                            flush=True,
                        )
            finally:
                for host in hosts.values():
                    if host is not None:
                        host.destroy()
            shutil.rmtree(work / "cp", ignore_errors=True)
            (work / "cp").mkdir()
    print()
    print(f"{'':<10} {'eep':>9} {'ansible':>9} {'ansible / eep':>14}   (medians)")
    for kind in ("cold", "no change"):
        eep, ansible = (statistics.median(times[(tool, kind)]) for tool in ("eep", "ansible"))
        print(f"{kind:<10} {eep:8.2f}s {ansible:8.2f}s {ansible / eep:13.1f}x")


if __name__ == "__main__":
    main()

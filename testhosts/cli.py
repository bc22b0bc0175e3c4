"""Command line: python -m testhosts COMMAND ..."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time

from . import cleanup, deps, host, image, releases, snapshots
from .errors import CommandError, HarnessError


def _cmd_up(args: argparse.Namespace) -> int:
    made = host.create_host(
        args.name,
        from_snapshot=args.from_snapshot,
        release=args.release,
        lan=args.lan,
        timeout=args.timeout,
    )
    print(made.ssh_line())
    print(made.http_url)
    if made.lan_ip:
        print(f"{made.lan_ip} on LAN {made.lan}")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    host.get_host(args.name).destroy()
    return 0


def _cmd_start(args: argparse.Namespace) -> int:
    deps.ensure_ready(build=False)
    host.get_host(args.name).start(timeout=args.timeout)
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    host.get_host(args.name).stop()
    return 0


def _cmd_reboot(args: argparse.Namespace) -> int:
    target = host.get_host(args.name)
    if not target.is_running():
        raise HarnessError(f"host {args.name} is not running")
    target.reboot(timeout=args.timeout)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    hosts = host.list_hosts()
    if not hosts:
        print("no test hosts")
    for item in hosts:
        status = item.status()
        memory = f"{item.memory_usage() / 2**20:.0f} MiB" if status == "running" else "-"
        print(
            f"{item.name:<24} {item.release:<9} {status:<8} ssh 127.0.0.1:{item.ssh_port:<5} "
            f"http 127.0.0.1:{item.http_port:<5} lan {_lan_column(item):<28} mem {memory}"
        )
    return 0


def _lan_column(item: host.Host) -> str:
    return f"{item.lan_ip} ({item.lan})" if item.lan else "-"


def _cmd_ssh(args: argparse.Namespace) -> int:
    target = host.get_host(args.name)
    command = target.ssh_command(args.user)
    if args.command:
        command.append(" ".join(args.command))
    sys.stdout.flush()
    os.execvp(command[0], command)


def _cmd_snapshot(args: argparse.Namespace) -> int:
    meta = host.get_host(args.name).snapshot(args.snapshot)
    print(f"snapshot {meta['name']}: {meta['bytes'] / 1e6:.0f} MB")
    return 0


def _cmd_snapshots(args: argparse.Namespace) -> int:
    if args.delete:
        snapshots.delete_snapshot(args.delete)
        return 0
    found = snapshots.list_snapshots()
    if not found:
        print("no snapshots")
    for meta in found:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(meta["created"]))
        print(
            f"{meta['name']:<24} {meta['bytes'] / 1e6:7.0f} MB  from "
            f"{meta['source_host']} at {when}"
        )
    return 0


def _cmd_cleanup(args: argparse.Namespace) -> int:
    deps.check_root()
    if args.all:
        cleanup.remove_all_state()
    done = cleanup.cleanup_leftovers()
    print(f"cleanup: {len(done)} leftovers removed")
    return 0


def _cmd_image(args: argparse.Namespace) -> int:
    deps.ensure_ready(build=False)
    image.build_image(args.release, rebuild=args.rebuild)
    print(image.ensure_base(args.release))
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors as one `error: ...` line and exit status 1, like all errors."""

    def error(self, message: str):  # type: ignore[override]
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(1)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m testhosts",
        description=(
            "Disposable Debian test hosts (systemd-nspawn, systemd as PID 1, "
            "real ssh on a loopback port). State lives in $EEP_TESTHOSTS_DIR "
            "(default /var/lib/eep-testhosts). Needs root."
        ),
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    release_help = f"Debian release (default {releases.DEFAULT})"

    def add(name: str, func, help_text: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.set_defaults(func=func)
        return cmd

    up = add("up", _cmd_up, "create and boot a host; print its ssh line and http URL")
    up.add_argument("name", help="host name (hostname too): a-z, 0-9, '-'")
    up.add_argument("--from-snapshot", metavar="S", help="boot from snapshot S")
    up.add_argument("--release", choices=sorted(releases.RELEASES), help=release_help)
    up.add_argument("--lan", metavar="LAN", help="join private LAN LAN (interface lan0)")
    up.add_argument("--timeout", type=float, default=60, help="boot timeout, s")

    down = add("down", _cmd_down, "destroy a host and everything it left")
    down.add_argument("name")

    start = add("start", _cmd_start, "boot a stopped host again (same disk)")
    start.add_argument("name")
    start.add_argument("--timeout", type=float, default=60)

    stop = add("stop", _cmd_stop, "shut a host down, keeping its disk")
    stop.add_argument("name")

    reboot = add("reboot", _cmd_reboot, "reboot a host for real (systemctl reboot)")
    reboot.add_argument("name")
    reboot.add_argument("--timeout", type=float, default=60)

    add("list", _cmd_list, "list hosts with status, ports, LAN address and memory")

    ssh = add("ssh", _cmd_ssh, "ssh into a host, or run CMD there")
    ssh.add_argument("name")
    ssh.add_argument("--user", default="root", help="remote user (default root)")
    ssh.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD")

    snap = add("snapshot", _cmd_snapshot, "save a host's disk state as snapshot SNAP")
    snap.add_argument("name")
    snap.add_argument("snapshot", metavar="SNAP")

    snaps = add("snapshots", _cmd_snapshots, "list snapshots (or delete one)")
    snaps.add_argument("--delete", metavar="SNAP", help="delete snapshot SNAP")

    clean = add("cleanup", _cmd_cleanup, "remove leftovers of crashed runs")
    clean.add_argument("--all", action="store_true", help="also destroy every existing host")

    img = add("image", _cmd_image, "build a release's image if missing")
    img.add_argument("--rebuild", action="store_true", help="build it anew")
    img.add_argument("--release", choices=sorted(releases.RELEASES), help=release_help)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="testhosts: %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.func(args)
    except (HarnessError, CommandError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 1

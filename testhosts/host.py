"""Disposable Debian hosts: systemd-nspawn guests reachable over real ssh."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import cgroups, deps, guest, image, locks, network, procs, releases, snapshots
from . import lan as lans
from .errors import CommandError, HarnessError
from .paths import check_host_name, netns_name, state_dir

log = logging.getLogger("testhosts")

SSH_ADDR = "127.0.0.1"
LOG_TAIL_LINES = 8


def root_key() -> tuple[Path, str]:
    """The harness's ssh key for logging into guests (created on first use)."""
    keys = state_dir().keys_dir
    private = keys / "id_ed25519"
    public = keys / "id_ed25519.pub"
    with locks.file_lock(keys / "keygen.lock"):
        if not (private.exists() and public.exists()):
            private.unlink(missing_ok=True)
            public.unlink(missing_ok=True)
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                 "eep-testhosts", "-f", str(private)],
                check=True,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
    return private, public.read_text().strip()


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last non-empty lines of a log, joined into one line."""
    try:
        text = _ANSI.sub("", path.read_text(errors="replace"))
    except FileNotFoundError:
        return "(no log)"
    picked = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(picked[-lines:])


def _mounts_below(path: Path) -> list[Path]:
    prefix = f"{path}/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mountpoint = line.split()[4].replace("\\040", " ")
        if mountpoint.startswith(prefix) or mountpoint == str(path):
            found.append(Path(mountpoint))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _unmount_below(path: Path) -> None:
    for mountpoint in _mounts_below(path):
        result = subprocess.run(["umount", str(mountpoint)], capture_output=True)
        if result.returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)
    left = _mounts_below(path)
    if left:
        raise HarnessError(f"could not unmount {left[0]}")


class BootError(HarnessError):
    """A host did not come up; names the console log and quotes its end."""

    def __init__(self, name: str, what: str, log_path: Path) -> None:
        self.name = name
        self.what = what
        self.log_path = log_path
        super().__init__(
            f"host {name}: {what}; console log {log_path}; last lines: " + _tail(log_path)
        )


class Host:
    """A running (or stopped) disposable Debian test host.

    Attributes: name, release (Debian codename), ssh_port, http_port, key_path (root's private key),
    known_hosts_path (pins this host's ed25519 key for [127.0.0.1]:ssh_port),
    rootfs (the guest's root tree as seen from the machine), dir (state dir),
    lan and lan_ip (the private LAN it is on and its address there, the
    guest's interface lan0; both None when it is on none).
    """

    def __init__(self, host_dir: Path, state: dict) -> None:
        self.dir = host_dir
        self._state = state
        self.name: str = state["name"]
        # Hosts made before there was a choice ran the default release.
        self.release: str = state.get("release") or releases.DEFAULT
        self.ssh_port: int = state["ssh_port"]
        self.http_port: int = state["http_port"]
        self.netns: str = state["netns"]
        self.lan: str | None = state.get("lan")
        self.lan_ip: str | None = state.get("lan_ip")
        self.base = Path(state["base"])
        # Read-only snapshot layers between the host's upper dir and the base.
        self.layers = [Path(p) for p in state.get("layers", [])]
        self.key_path = Path(state["key_path"])
        self.known_hosts_path = host_dir / "known_hosts"
        self.rootfs = host_dir / "root"
        self.log_path = Path(state["log_path"])
        self._runner: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        on_lan = f", lan={self.lan!r}, lan_ip={self.lan_ip!r}" if self.lan else ""
        return (
            f"Host({self.name!r}, release={self.release!r}, ssh_port={self.ssh_port},"
            f" http_port={self.http_port}{on_lan})"
        )

    # ---- ssh -----------------------------------------------------------------

    def ssh_command(self, user: str = "root") -> list[str]:
        """The ssh argv (without a remote command) that logs into this host."""
        return [
            "ssh",
            "-F", "none",
            "-i", str(self.key_path),
            "-o", f"UserKnownHostsFile={self.known_hosts_path}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10",
            "-p", str(self.ssh_port),
            f"{user}@{SSH_ADDR}",
        ]  # fmt: skip

    def ssh_line(self, user: str = "root") -> str:
        """The ssh command line a human can paste into a shell."""
        return shlex.join(self.ssh_command(user))

    @property
    def public_key(self) -> str:
        """The public half of key_path, to authorize it for other users."""
        return Path(f"{self.key_path}.pub").read_text().strip()

    @property
    def http_url(self) -> str:
        return f"http://{SSH_ADDR}:{self.http_port}/"

    def run(
        self,
        cmd: str,
        *,
        user: str = "root",
        check: bool = True,
        timeout: float = 600,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command on the host over ssh; output is captured as text."""
        result = subprocess.run(
            [*self.ssh_command(user), cmd],
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise CommandError(self.name, cmd, result.returncode, result.stdout, result.stderr)
        return result

    def _run_bytes(self, cmd: str, data: bytes, timeout: float = 120) -> bytes:
        result = subprocess.run(
            [*self.ssh_command(), cmd],
            input=data,
            capture_output=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise CommandError(
                self.name,
                cmd,
                result.returncode,
                result.stdout.decode(errors="replace"),
                result.stderr.decode(errors="replace"),
            )
        return result.stdout

    def put_file(
        self,
        path: str,
        data: bytes | str,
        mode: int = 0o644,
        owner: str | None = None,
    ) -> None:
        """Write data to path on the host atomically (via ssh and cat); creates parent dirs."""
        payload = data.encode() if isinstance(data, str) else data
        target = shlex.quote(path)
        parent = shlex.quote(os.path.dirname(path) or ".")
        chown = f'chown {shlex.quote(owner)} "$t"; ' if owner else ""
        self._run_bytes(
            f"set -e; mkdir -p {parent}; t=$(mktemp {parent}/.put.XXXXXX); "
            f'trap \'rm -f "$t"\' EXIT; cat > "$t"; '
            f'chmod {mode:o} "$t"; {chown}mv -f "$t" {target}; trap - EXIT',
            payload,
        )

    def read_file(self, path: str) -> bytes:
        """Content of a file on the host (via ssh and cat)."""
        return self._run_bytes(f"cat -- {shlex.quote(path)}", b"")

    def boot_id(self) -> str:
        return self.run("cat /proc/sys/kernel/random/boot_id", timeout=30).stdout.strip()

    # ---- state ---------------------------------------------------------------

    def _save_state(self) -> None:
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(self._state, indent=2))
        tmp.rename(self.dir / "state.json")

    def is_running(self) -> bool:
        """True while the host's runner (and so its nspawn loop) is alive."""
        if self._runner is not None and self._runner.poll() is not None:
            self._runner = None
        return locks.is_locked(self.dir / "runner.lock")

    def status(self) -> str:
        return "running" if self.is_running() else "stopped"

    def memory_usage(self) -> int:
        """Proportional memory (bytes) of the guest, nspawn and slirp4netns."""
        runner_pid = self._runner_pid()
        pids = [pid for pid in cgroups.pids(self.name) if pid != runner_pid]
        slirp = self._state.get("slirp_pid")
        if slirp and network.slirp_alive(slirp, self.dir / "slirp.sock"):
            pids.append(slirp)
        return procs.memory_pss(pids)

    def _runner_pid(self) -> int | None:
        try:
            pid = int((self.dir / "runner.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None
        argv = procs.cmdline(pid)
        if "testhosts.runner" in argv and str(self.dir) in argv:
            return pid
        return None

    # ---- lifecycle -----------------------------------------------------------

    def _mount_rootfs(self) -> None:
        if self.rootfs.is_mount():
            return
        lowers = [*self.layers, self.base]
        for path in lowers:
            if not path.is_dir():
                raise HarnessError(f"host {self.name}: its lower layer {path} is gone")
        self.rootfs.mkdir(exist_ok=True)
        options = (
            f"lowerdir={':'.join(map(str, lowers))},upperdir={self.dir / 'upper'},"
            f"workdir={self.dir / 'work'}"
        )
        result = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(self.rootfs)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise HarnessError(f"host {self.name}: overlay mount failed: {result.stderr.strip()}")

    def _ensure_network(self) -> None:
        """Create the netns and slirp4netns with both forwards, if not there."""
        api = self.dir / "slirp.sock"
        if network.slirp_alive(self._state.get("slirp_pid"), api):
            return
        network.add_netns(self.netns)
        pid = network.start_slirp(self.netns, api, self.dir / "slirp.log")
        self._state["slirp_pid"] = pid
        self._save_state()
        network.add_forward(api, self.ssh_port, 22)
        network.add_forward(api, self.http_port, 80)

    def _ensure_lan(self) -> None:
        """Plug the host's netns into its LAN, if it is on one and not plugged in;
        keep every other LAN's traffic off its uplink."""
        lans.keep_off_uplink(self.netns)
        if self.lan and self.lan_ip:
            lans.attach(self.lan, self.netns, self.lan_ip)

    def _leave_lan(self) -> None:
        if self.lan and self.lan_ip:
            with locks.file_lock(state_dir().lock_file):
                lans.detach(self.lan, self.lan_ip)

    def _launch_runner(self) -> None:
        (self.dir / "runner.pid").unlink(missing_ok=True)
        env = dict(os.environ)
        package_parent = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        with open(self.log_path, "ab") as out:
            self._runner = subprocess.Popen(
                [sys.executable, "-m", "testhosts.runner", str(self.dir)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd="/",
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + 15
        while not (self._runner_pid() == self._runner.pid and self.is_running()):
            if self._runner.poll() is not None or time.monotonic() > deadline:
                raise self._boot_error("the runner did not start")
            time.sleep(0.02)

    def _boot_error(self, what: str) -> BootError:
        return BootError(self.name, what, self.log_path)

    def _wait_booted(self, timeout: float, old_boot_id: str | None = None) -> str:
        """Wait for ssh (with a new boot id) and the end of systemd's startup."""
        deadline = time.monotonic() + timeout
        probe = [*self.ssh_command(), "cat /proc/sys/kernel/random/boot_id"]
        probe[probe.index("ConnectTimeout=10")] = "ConnectTimeout=2"
        boot_id = ""
        while True:
            if not self.is_running():
                raise self._boot_error("systemd-nspawn exited during boot")
            try:
                result = subprocess.run(
                    probe, capture_output=True, text=True, timeout=5,
                    stdin=subprocess.DEVNULL,
                )  # fmt: skip
                boot_id = result.stdout.strip() if result.returncode == 0 else ""
            except subprocess.TimeoutExpired:
                boot_id = ""
            if boot_id and boot_id != old_boot_id:
                break
            if time.monotonic() > deadline:
                raise self._boot_error(f"ssh did not answer within {timeout:.0f} s")
            time.sleep(0.1)
        remaining = max(deadline - time.monotonic(), 5)
        try:
            result = self.run("systemctl is-system-running --wait", check=False, timeout=remaining)
        except subprocess.TimeoutExpired:
            raise self._boot_error(
                f"systemd did not finish starting within {timeout:.0f} s"
            ) from None
        system_state = result.stdout.strip()
        if system_state == "degraded":
            listing = self.run(
                "systemctl list-units --failed --plain --no-legend", check=False
            ).stdout
            units = [line.split()[0] for line in listing.splitlines() if line.strip()]
            log.warning(
                "host %s: system is degraded; failed units: %s",
                self.name,
                ", ".join(units) or "?",
            )
        elif system_state != "running":
            raise self._boot_error(f"systemd reports {system_state!r}")
        return system_state

    def start(self, timeout: float = 60) -> None:
        """Boot the host (again), keeping its disk state. On a running host it
        only plugs the host into its LAN again if that was undone."""
        if self.is_running():
            with locks.file_lock(state_dir().lock_file):
                self._ensure_lan()
            return
        started = time.monotonic()
        with locks.file_lock(state_dir().lock_file):
            self._mount_rootfs()
            self._ensure_network()
            self._ensure_lan()
            self._state["desired"] = "running"
            self._save_state()
            self._launch_runner()
        state = self._wait_booted(timeout)
        log.info("host %s: up in %.1f s (%s)", self.name, time.monotonic() - started, state)

    def stop(self, timeout: float = 30) -> None:
        """Shut the guest down cleanly (SIGTERM to nspawn); disk state is kept."""
        self._switch_off(timeout, clean=True)

    def kill(self) -> None:
        """Cut the guest's power: every process of it SIGKILLed at once, no shutdown, no
        connection closed (a crashed or unplugged server); disk state is kept."""
        self._switch_off(0, clean=False)

    def _switch_off(self, timeout: float, *, clean: bool) -> None:
        if not self.dir.exists():
            raise HarnessError(f"host {self.name} has been destroyed")
        self._state["desired"] = "stopped"
        self._save_state()
        started = time.monotonic()
        pid = self._runner_pid()
        if clean and pid and self.is_running():
            procs.kill([pid], signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.is_running() and time.monotonic() < deadline:
                time.sleep(0.05)
        if self.is_running() or cgroups.pids(self.name):
            if clean:
                log.warning("host %s: no clean shutdown, killing it", self.name)
            cgroups.kill(self.name)
        cgroups.remove(self.name)
        if self._runner is not None:
            self._runner.wait(timeout=5)
            self._runner = None
        # A stopped host must not answer on the LAN: its netns still would
        # (ARP, and a refusal for every port), unlike a switched-off server.
        self._leave_lan()
        log.info("host %s: stopped in %.1f s", self.name, time.monotonic() - started)

    def reboot(self, timeout: float = 60) -> None:
        """Reboot for real (`systemctl reboot` in the guest) and wait until back."""
        old = self.boot_id()
        started = time.monotonic()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.run("systemctl reboot", check=False, timeout=15)
        self._wait_booted(timeout, old_boot_id=old)
        log.info("host %s: rebooted in %.1f s", self.name, time.monotonic() - started)

    def snapshot(self, name: str) -> dict:
        """Save the host's disk state as snapshot `name`; return its metadata.

        A running host is frozen (cgroup freezer) while its disk is copied, so
        the snapshot is consistent like a power cut; it then runs on unchanged.
        """
        started = time.monotonic()
        frozen = self.is_running() and cgroups.set_frozen(self.name, True)
        if self.is_running() and not frozen:
            raise HarnessError(f"host {self.name}: cannot freeze it for a snapshot")
        try:
            os.sync()
            meta = snapshots.save(name, self.dir / "upper", self.layers, self.base, self.name)
        finally:
            if frozen:
                cgroups.set_frozen(self.name, False)
        log.info(
            "host %s: snapshot %s saved in %.1f s (%d MB)",
            self.name,
            name,
            time.monotonic() - started,
            meta["bytes"] // 1_000_000,
        )
        return meta

    def destroy(self) -> None:
        """Stop the host and remove everything it had: processes, mounts, netns,
        cgroups, ports, files. Destroying a destroyed host does nothing."""
        if not self.dir.exists():
            return
        try:
            self.stop(timeout=20)
        except HarnessError as exc:
            log.warning("host %s: %s", self.name, exc)
        with locks.file_lock(state_dir().lock_file):
            teardown(self.dir, self.name)
            snapshots.remove_unused_layers()
        log.info("host %s: destroyed", self.name)


def teardown(host_dir: Path, name: str) -> None:
    """Remove every trace of a host, whatever state it is in; its LAN too
    when it was the LAN's last host. Callers hold the hosts lock."""
    state = _read_state(host_dir) or {}
    cgroups.kill(name)
    cgroups.remove(name)
    pids = procs.pids_referencing(host_dir)
    procs.kill(pids)
    if not procs.wait_gone(pids, 10):
        raise HarnessError(f"host {name}: processes {pids} do not die")
    _unmount_below(host_dir)
    if state.get("lan") and state.get("lan_ip"):
        lans.detach(state["lan"], state["lan_ip"])
    network.delete_netns(netns_name(name))
    shutil.rmtree(host_dir, ignore_errors=True)
    if host_dir.exists():
        raise HarnessError(f"host {name}: could not remove {host_dir}")
    state_dir().console_log(name).unlink(missing_ok=True)
    if state.get("lan") and state["lan"] not in {member for member, _ in _lan_members()}:
        lans.remove_lan(state["lan"])


def _read_state(host_dir: Path) -> dict | None:
    try:
        return json.loads((host_dir / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _load(host_dir: Path) -> Host:
    state = _read_state(host_dir)
    if state is None:
        raise HarnessError(f"no test host named {host_dir.name!r}")
    return Host(host_dir, state)


def get_host(name: str) -> Host:
    """The existing host called name (running or stopped)."""
    return _load(state_dir().host_dir(check_host_name(name)))


def list_hosts() -> list[Host]:
    hosts = []
    for host_dir in sorted(state_dir().hosts_dir.iterdir()):
        try:
            hosts.append(_load(host_dir))
        except HarnessError:
            continue
    return hosts


def _used_ports() -> set[int]:
    ports: set[int] = set()
    for host in list_hosts():
        ports.update((host.ssh_port, host.http_port))
    return ports


def _lan_members() -> list[tuple[str, str]]:
    """(LAN, address) of every host on a LAN."""
    return [(host.lan, host.lan_ip) for host in list_hosts() if host.lan and host.lan_ip]


def create_host(
    name: str,
    *,
    from_snapshot: str | None = None,
    release: str | None = None,
    lan: str | None = None,
    timeout: float = 60,
    owner_pid: int | None = None,
) -> Host:
    """Create and boot a host; return once ssh answers and systemd is up.

    from_snapshot: boot from a snapshot's disk state instead of the fresh image.
    release: the Debian codename of the fresh image (default: bookworm); a
    snapshot keeps the release of the host it was taken from.
    lan: put the host on the private LAN of that name (created with its
    first host) with the next free address; see testhosts/lan.py.
    owner_pid: the host belongs to this process; cleanup_leftovers() removes
    it once that process is gone (the pytest plugin passes its own pid).
    """
    check_host_name(name)
    if lan is not None:
        lans.check_lan_name(lan)
    distro = releases.get_release(release)
    if from_snapshot is not None and release is not None:
        raise HarnessError("a host from a snapshot runs the snapshot's release: give one, not both")
    deps.ensure_ready()
    layout = state_dir()
    started = time.monotonic()
    base = image.ensure_base(distro.codename) if from_snapshot is None else None
    key_path, pubkey = root_key()
    keys = guest.HostKeyJob(f"root@{name}")
    host_dir = layout.host_dir(name)
    created = False
    try:
        with locks.file_lock(layout.lock_file):
            try:
                host_dir.mkdir(mode=0o700)
            except FileExistsError:
                raise HarnessError(f"a test host named {name!r} exists") from None
            created = True
            owner_start = procs.start_time(owner_pid) if owner_pid else None
            layers: list[Path] = []
            if from_snapshot is not None:
                layers, base = snapshots.layers_of(from_snapshot)
                distro = releases.get_release(_release_of(base))
            elif base is not None and not base.is_dir():
                # Removed meanwhile by a cleanup that saw no host using it.
                base = image.ensure_base(distro.codename)
            assert base is not None
            state = {
                "name": name,
                "release": distro.codename,
                "netns": netns_name(name),
                "base": str(base),
                "layers": [str(p) for p in layers],
                "key_path": str(key_path),
                "log_path": str(layout.console_log(name)),
                "from_snapshot": from_snapshot,
                "owner_pid": owner_pid,
                "owner_start": owner_start,
                "desired": "running",
                "created": time.time(),
                "ssh_port": 0,
                "http_port": 0,
                "slirp_pid": None,
                "lan": lan,
                "lan_ip": lans.allocate_address(lan, _lan_members()) if lan else None,
            }
            layout.console_log(name).unlink(missing_ok=True)
            for sub in ("upper", "work", "apt-upper", "root"):
                (host_dir / sub).mkdir(mode=0o755)
            used = _used_ports()
            for attempt in range(5):
                state["ssh_port"] = network.free_port(used)
                state["http_port"] = network.free_port(used | {state["ssh_port"]})
                host = Host(host_dir, state)
                host._save_state()
                try:
                    host._ensure_network()
                    break
                except network.PortBusyError:
                    procs.kill([state["slirp_pid"]])
                    procs.wait_gone([state["slirp_pid"]], 5)
                    state["slirp_pid"] = None
                    if attempt == 4:
                        raise
            log.info(
                "host %s: ssh on 127.0.0.1:%d, http on 127.0.0.1:%d",
                name,
                host.ssh_port,
                host.http_port,
            )
            host._ensure_lan()
            if host.lan:
                log.info("host %s: %s on LAN %s", name, host.lan_ip, host.lan)
            host._mount_rootfs()
            guest.personalize(host.rootfs, name, pubkey)
            host_key = keys.install(host.rootfs)
            host.known_hosts_path.write_text(f"[{SSH_ADDR}]:{host.ssh_port} {host_key}\n")
            log.info("host %s: booting", name)
            host._launch_runner()
        system_state = host._wait_booted(timeout)
    except BaseException as exc:
        keys.cancel()
        if not created:
            raise
        kept = _keep_failed_log(layout.console_log(name)) if isinstance(exc, BootError) else None
        with locks.file_lock(layout.lock_file):
            teardown(host_dir, name)
        if isinstance(exc, BootError) and kept:
            raise BootError(name, exc.what, kept) from None
        raise
    log.info("host %s: up in %.1f s (%s)", name, time.monotonic() - started, system_state)
    return host


def _release_of(base: Path) -> str:
    """The release a base was unpacked from: image.base_id() prefixes the names of
    bases of every release but the default one with its codename."""
    prefix = base.name.split("-", 1)[0]
    return prefix if prefix in releases.RELEASES else releases.DEFAULT


def _keep_failed_log(path: Path) -> Path | None:
    if not path.exists():
        return None
    kept = path.with_name(f"{path.stem}.failed-{time.strftime('%Y%m%d-%H%M%S')}.log")
    shutil.copyfile(path, kept)
    return kept

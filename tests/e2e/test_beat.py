"""Celery beat (celery_beat=y): exactly one runs, whatever deploys, restarts, stops and
reboots do, and each scheduled run happens once.

The sample app's beat queues `beat_tick` every 5 s; each run appends "UTC time it was
queued, pid of the beat that queued it, release that ran it" to shared/var/beat.log.
A process watcher on the host samples the beat processes ten times a second. The tests
of this module share one host and run in order; the last one reads the whole log.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import tarfile
import time
from datetime import datetime
from pathlib import Path

import pytest
from e2e_support import bake_tree, build_sample_release

pytestmark = pytest.mark.e2e

SLUG = "ticker"
LOG = f"/srv/{SLUG}/shared/var/beat.log"
EVERY = 5.0  # the sample's schedule
# A beat killed by a restart before it wrote its pidfile is started again by uWSGI
# after its pidfile check gives up (10 s); plus its start and the schedule's 5 s.
LONGEST_GAP = 30.0
STOP_FILE = "/run/beat-watch.stop"

# Run on the host as root: every process of the app user that is a celery beat, ten times
# a second, until STOP_FILE appears; prints what it saw as one JSON line.
WATCH_SCRIPT = r"""
import json, os, pwd, sys, time
uid, stop = pwd.getpwnam(sys.argv[1]).pw_uid, sys.argv[2]
samples, pids, overlaps = 0, [], []
while not os.path.exists(stop):
    beats = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                args = handle.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "beat" in args and any(arg.rsplit("/", 1)[-1] == "celery" for arg in args):
            beats.append(int(pid))
    samples += 1
    if len(beats) > 1:
        overlaps.append([round(time.time(), 1), beats])
    pids += [pid for pid in beats if pid not in pids]
    time.sleep(0.1)
os.unlink(stop)
print(json.dumps({"samples": samples, "pids": pids, "overlaps": overlaps[:5]}))
"""


class BeatWatch:
    """WATCH_SCRIPT running on the host from start() until stop()."""

    def __init__(self, host) -> None:
        self.host = host
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.host.run(f"rm -f {STOP_FILE}")
        self.proc = subprocess.Popen(
            [*self.host.ssh_command(), f"python3 - {SLUG} {STOP_FILE}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.proc.stdin.write(WATCH_SCRIPT)
        self.proc.stdin.close()

    def stop(self) -> dict:
        self.host.run(f"touch {STOP_FILE}")
        out = self.proc.stdout.read()
        self.proc.wait(timeout=30)
        self.proc = None
        return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return bake_tree(tmp_path_factory.mktemp("trees"), SLUG, use_celery="y", celery_beat="y")


@pytest.fixture(scope="module")
def host(testhost_factory_module, tree):
    host = testhost_factory_module("beat")
    result = tree.provision(host)
    assert result.returncode == 0, result.stdout + result.stderr
    return host


@pytest.fixture(scope="module")
def watch(host):
    watcher = BeatWatch(host)
    yield watcher
    if watcher.proc is not None:
        watcher.proc.kill()


# Times (this machine's clock, which the host shares) between which the app was down
# on purpose: a gap in the ticks there is expected.
DOWN: list[tuple[float, float]] = []


def run(tree, host, *args: str) -> subprocess.CompletedProcess:
    result = tree.invoke(
        *args, "--host", f"{SLUG}-deploy@127.0.0.1:{host.ssh_port}", "--identity",
        str(tree.deploy_key),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def beats(host) -> list[tuple[int, str]]:
    """(pid, working directory) of every celery beat of the app user."""
    out = host.run(
        f"for p in $(pgrep -u {SLUG} -f ' beat '); do echo $p $(readlink /proc/$p/cwd); done",
        check=False,
    ).stdout
    return [(int(pid), cwd) for pid, _, cwd in (line.partition(" ") for line in out.splitlines())]


def ticks(host) -> list[tuple[float, int, str]]:
    """(time it was queued, pid of the beat, release that ran it) of every logged run."""
    out = host.run(f"cat {LOG}", check=False).stdout
    return [
        (datetime.fromisoformat(when).timestamp(), int(pid), version)
        for when, pid, version in (line.split() for line in out.splitlines())
    ]


def settled_beat(host, before: int | None, version: str, timeout: float = 90) -> int:
    """The pid of the one beat, once it is another process than `before` (the action
    restarted it), has run for 3 s in the current release, and a run it queued was
    logged by the worker of `version`."""
    current = host.run(f"readlink -f /srv/{SLUG}/current").stdout.strip()
    deadline = time.monotonic() + timeout
    seen: dict[int, float] = {}
    while time.monotonic() < deadline:
        found = beats(host)
        assert len(found) <= 1, f"two beats: {found}"
        if found and found[0][0] != before and found[0][1] == current:
            pid = found[0][0]
            seen.setdefault(pid, time.monotonic())
            logged = any(p == pid and v == version for _, p, v in ticks(host))
            if time.monotonic() - seen[pid] >= 3 and logged:
                return pid
        time.sleep(0.5)
    raise AssertionError(f"no settled beat on {current}: {beats(host)}, last pids {seen}")


def test_a_tree_without_beat_attaches_none(tmp_path):
    tree = bake_tree(tmp_path, "nobeat", use_celery="y", celery_beat="n")
    ini = (tree.path / "uwsgi.ini").read_text()
    assert "celery -A app.tasks worker" in ini
    assert " beat " not in ini and "beat.pid" not in ini


def test_first_deploy_runs_one_beat_with_its_schedule_in_shared(tree, host, dist):
    run(tree, host, "deploy", "--release", str(build_sample_release("v1", dist)))
    pid = settled_beat(host, None, "v1")
    assert host.run(f"cat /run/{SLUG}/uwsgi/beat.pid").stdout.strip() == str(pid)
    # When each job last ran is the app's own data, kept in shared/ across releases.
    schedule = host.run(
        f"stat -c '%U %G %a %n' /srv/{SLUG}/shared/var/celerybeat-schedule*"
    ).stdout.splitlines()
    assert schedule and all(line.startswith(f"{SLUG} {SLUG} ") for line in schedule), schedule
    assert host.run(f"ls /srv/{SLUG}/releases/*/celerybeat*", check=False).returncode != 0
    status = run(tree, host, "status").stdout
    assert re.search(rf"^beat +running, pid {pid}$", status, re.M), status
    assert re.search(rf"^process +celery beat +pid {pid} ", status, re.M), status
    worker = re.search(r"^celery +running, pid (\d+)$", status, re.M)
    assert worker and int(worker.group(1)) != pid, status


def test_each_deploy_restarts_the_one_beat_on_the_new_release(tree, host, dist, watch):
    watch.start()
    before = beats(host)[0][0]
    ini = (tree.path / "uwsgi.ini").read_text()
    # v3 brings a changed uwsgi.ini: a full reload of the master, which adopts the beat.
    releases = {"v2": None, "v3": ini + "; changed\n", "v4": None}
    for version, own_ini in releases.items():
        tarball = build_sample_release(version, dist)
        if own_ini is not None:
            tarball = _with_ini(tarball, version, own_ini)
        done = run(tree, host, "deploy", "--release", str(tarball))
        assert re.search(r"\] reload +[\d.]+ s  full$", done.stdout, re.M) or own_ini is None
        before = settled_beat(host, before, version)


def test_restarts_restart_the_one_beat(tree, host):
    before = beats(host)[0][0]
    for mode in ("chain", "full"):
        run(tree, host, "restart", "--reload", mode)
        before = settled_beat(host, before, "v4")


def test_a_beat_slow_to_stop_is_waited_for_never_run_beside_the_next(tree, host):
    ((before, _),) = beats(host)
    host.run(f"kill -STOP {before}")  # it gets the restart's TERM only once continued
    run(tree, host, "restart")
    for _ in range(8):
        assert [pid for pid, _ in beats(host)] == [before]
        time.sleep(1)
    host.run(f"kill -CONT {before}")
    settled_beat(host, before, "v4")


def test_a_crashed_master_s_successor_adopts_the_running_beat(host):
    ((beat, _),) = beats(host)
    master = host.run(f"cat /run/{SLUG}/uwsgi/uwsgi.pid").stdout.strip()
    host.run(f"kill -9 {master}")  # supervisor starts a new master

    def new_master() -> bool:
        pid = host.run(f"cat /run/{SLUG}/uwsgi/uwsgi.pid", check=False).stdout.strip()
        return pid not in ("", master) and host.run(f"kill -0 {pid}", check=False).returncode == 0

    deadline = time.monotonic() + 30
    while not new_master():
        assert time.monotonic() < deadline, "no new uWSGI master"
        time.sleep(0.5)
    time.sleep(2 * EVERY)
    assert [pid for pid, _ in beats(host)] == [beat]


def test_stop_stops_the_beat_and_start_brings_one_back(tree, host, watch):
    before = beats(host)[0][0]
    stopped_at = time.time()
    run(tree, host, "stop")
    assert beats(host) == []
    time.sleep(EVERY)  # a beat left running would log a run now
    run(tree, host, "start")
    settled_beat(host, before, "v4")
    DOWN.append((stopped_at, time.time()))
    seen = watch.stop()
    assert seen["samples"] > 100 and seen["overlaps"] == [], seen
    # v1's beat, then one per deploy and restart (a full reload may start a beat twice).
    assert 8 <= len(seen["pids"]) <= 13, seen


def test_after_a_reboot_one_beat_runs(host, watch):
    rebooted_at = time.time()
    host.reboot()
    watch.start()
    settled_beat(host, None, "v4")  # pids start over: it may have the old one's
    DOWN.append((rebooted_at, time.time()))
    time.sleep(2 * EVERY)
    seen = watch.stop()
    assert len(seen["pids"]) == 1 and seen["overlaps"] == [], seen


def test_each_scheduled_run_happened_once(host):
    runs = sorted(ticks(host))  # the worker's two pool processes may log a burst unordered
    assert len(runs) > 10, runs
    times = [when for when, _, _ in runs]
    gaps = [(b - a, a, b) for a, b in zip(times, times[1:], strict=False)]
    # No run twice: two beats, or a restarted one that forgot the last run, would queue
    # runs closer than the schedule's 5 s.
    closest = min(gaps)
    assert closest[0] > EVERY - 1, f"two runs {closest[0]:.2f} s apart"
    # None missed beyond what the restarts explain.
    longest = 0.0
    for gap, after, until in gaps:
        down = any(start - EVERY <= after and until <= end + LONGEST_GAP for start, end in DOWN)
        assert gap < LONGEST_GAP or down, f"no run for {gap:.1f} s after {after}"
        longest = longest if down else max(longest, gap)
    # Each beat queued its runs in one stretch: no beat came back after another took over.
    pids = [pid for _, pid, _ in runs]
    stretches = [pid for i, pid in enumerate(pids) if i == 0 or pids[i - 1] != pid]
    reboot = [i for i, (when, _, _) in enumerate(runs) if when > DOWN[-1][0]][0]
    for part in (pids[:reboot], pids[reboot:]):  # a pid may come again after a reboot
        changes = [pid for i, pid in enumerate(part) if i == 0 or part[i - 1] != pid]
        assert len(changes) == len(set(changes)), stretches
    duration = times[-1] - times[0]
    down = sum(end - start for start, end in DOWN)
    print(
        f"\n{len(runs)} runs by {len(set(pids))} beats in {duration:.0f} s ({down:.0f} s down on"
        f" purpose); runs {closest[0]:.2f} s apart at the closest, {longest:.1f} s at the"
        " farthest outside stop and reboot"
    )


def _with_ini(tarball: Path, version: str, ini: str) -> Path:
    """The release tarball with its own uwsgi.ini."""
    with tarfile.open(tarball) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar]
    with tarfile.open(tarball, "w:gz") as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
        info = tarfile.TarInfo(f"sample-{version}/uwsgi.ini")
        info.size = len(ini.encode())
        tar.addfile(info, io.BytesIO(ini.encode()))
    return tarball

"""Helpers of the end-to-end tests: baked trees that provision test hosts, host state snapshots."""

from __future__ import annotations

import difflib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import yaml
from cookiecutter.main import cookiecutter

REPO = Path(__file__).resolve().parents[2]


def deploy_key(directory: Path) -> Path:
    """The developer's key pair used for the deploy account of test trees."""
    key = directory / "deploy_ed25519"
    if not key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "dev@e2e", "-f", str(key)],
            check=True,
        )
    return key


@dataclass
class BakedTree:
    path: Path
    slug: str
    deploy_key: Path

    def invoke(
        self, *args: str, timeout: float = 600, input: str | None = None
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "invoke", *args],
            cwd=self.path,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
        )

    def trust(self, host) -> None:
        """Pin the test host's key in the tree, as a user would after verifying it."""
        known = self.path / "known_hosts"
        line = Path(host.known_hosts_path).read_text()
        if line not in (known.read_text() if known.exists() else ""):
            with known.open("a") as handle:
                handle.write(line)

    def provision(self, host, *args: str) -> subprocess.CompletedProcess:
        self.trust(host)
        spec = f"root@127.0.0.1:{host.ssh_port}"
        return self.invoke("provision", "--host", spec, "--identity", str(host.key_path), *args)

    def copy(self, destination: Path) -> BakedTree:
        shutil.copytree(self.path, destination)
        return BakedTree(destination, self.slug, self.deploy_key)


def bake_tree(directory: Path, slug: str, *, hooks: bool = True, **answers: str) -> BakedTree:
    """A baked tree; `hooks=False` skips the hook's checks, to bake an answer it refuses
    (and so test what the host-side checks do with it)."""
    key = deploy_key(directory)
    context = {
        "project_name": slug.title(),
        "project_slug": slug,
        "domain": f"{slug}.example.com",
        "deploy_ssh_key": key.with_suffix(".pub").read_text().strip(),
        **answers,
    }
    path = cookiecutter(
        str(REPO),
        no_input=True,
        output_dir=str(directory),
        extra_context=context,
        accept_hooks=hooks,
    )
    return BakedTree(Path(path), slug, key)


def build_sample_release(version: str, out: Path, extra: dict[str, bytes] | None = None) -> Path:
    """The sample app's release tarball for `version`, written into `out`; `extra`: files
    added or replaced in it (path inside the release -> content)."""
    build = REPO / "sample_app" / "build_release.py"
    done = subprocess.run(
        [sys.executable, str(build), version, str(out)], capture_output=True, text=True, check=True
    )
    path = Path(done.stdout.strip())
    if extra:
        prefix = f"sample-{version}/"
        with tarfile.open(path) as tar:
            members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar]
        with tarfile.open(path, "w:gz") as tar:
            for member, data in members:
                if member.name.removeprefix(prefix) not in extra:
                    tar.addfile(member, io.BytesIO(data) if data is not None else None)
            for name, data in extra.items():
                info = tarfile.TarInfo(prefix + name)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return path


# Everything provisioning may touch, except /run (pids change) and logs.
WATCHED = "/etc/eep /etc/nginx /etc/supervisor /etc/sudoers.d /etc/tmpfiles.d /srv /home"
WATCHED += " /etc/logrotate.d /etc/systemd/system"
WATCHED_FILES = "/etc/passwd /etc/group /etc/shadow /etc/gshadow"
# The broker's data changes while a Celery worker runs: the app's, not provisioning's.
APP_DATA = "! -path '*/shared/redis/*'"
# Where an app's directories go, one level deep (owners and modes only; /run/user
# comes and goes with each SSH login).
WATCHED_PARENTS = "/run /var/log /var/lib /var/www"


def snapshot_state(host) -> str:
    """Paths, owners, modes, file mtimes and checksums of what provisioning manages, packages,
    supervisor's programs and their states.

    Directory mtimes are left out: a temporary file checked and removed beside a
    config changes its directory's mtime, and nothing else.
    """
    return host.run(
        f"find {WATCHED} {WATCHED_FILES} -xdev -type d -printf '%p %M %u %g\\n' | sort;"
        f" find {WATCHED} {WATCHED_FILES} -xdev ! -type d {APP_DATA}"
        " -printf '%p %M %u %g %T@\\n' | sort;"
        f" find {WATCHED} -xdev -type f {APP_DATA} -exec md5sum {{}} + | sort; "
        # /run/agetty.reload: Debian 13's agetty touches it when an interface changes.
        f" find {WATCHED_PARENTS} -maxdepth 1 ! -path /run/user ! -path /run/agetty.reload"
        " -printf '%p %M %u %g\\n'"
        " 2>/dev/null | sort;"
        " supervisorctl status | awk '{print $1, $2}';"
        " dpkg-query -W -f='${Package} ${Version} ${Status}\\n' | md5sum;"
        " systemctl list-unit-files --state=enabled --no-legend | md5sum"
    ).stdout


def state_changes(before: str, after: str) -> list[str]:
    """The lines of two snapshot_state() outputs that differ (empty: nothing changed)."""
    return [
        line
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


# A bounded closed-loop load generator, run ON the test host (its own network
# namespace) against nginx on 127.0.0.1: prints one JSON line of results.
LOAD_SCRIPT = r"""
import http.client, json, ssl, sys, threading, time
host, seconds, concurrency = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
keep_timeline = "timeline" in sys.argv[4:]  # every request as [start s, latency ms, ok]
# "https": to port 443 by name (it must resolve on the host), the certificate unchecked.
tls = ssl._create_unverified_context() if "https" in sys.argv[4:] else None
latencies, failures, timeline, lock = [], [], [], threading.Lock()
answers = {}  # the first two words of each 2xx body ("sample v2"): which release answered
began, began_wall = time.monotonic(), time.time()
deadline = began + seconds
def worker():
    while time.monotonic() < deadline:
        start = time.monotonic()
        try:
            if tls:
                conn = http.client.HTTPSConnection(host, 443, timeout=10, context=tls)
            else:
                conn = http.client.HTTPConnection("127.0.0.1", 80, timeout=10)
            conn.request("GET", "/", headers={"Host": host})
            response = conn.getresponse()
            body = response.read()
            conn.close()
            ok = 200 <= response.status < 300
            detail = response.status
        except Exception as error:
            ok, detail = False, repr(error)
        with lock:
            if ok:
                said = " ".join(body.decode(errors="replace").split()[:2])
                answers[said] = answers.get(said, 0) + 1
            latencies.append(time.monotonic() - start)
            if not ok:
                failures.append(detail)
            if keep_timeline:
                timeline.append([round(start - began, 3), round(latencies[-1] * 1000, 1), ok])
threads = [threading.Thread(target=worker) for _ in range(concurrency)]
[t.start() for t in threads]
[t.join() for t in threads]
latencies.sort()
pick = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 1)
print(json.dumps({"requests": len(latencies), "failed": len(failures),
                  "failures": [str(f) for f in failures[:5]],
                  "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": pick(1.0),
                  "answers": answers,
                  **({"timeline": timeline, "began": began_wall} if keep_timeline else {})}))
"""


class load_test:  # noqa: N801 - used as a context manager, reads like a function
    """Run LOAD_SCRIPT on the host while the `with` body runs; `.stats` afterwards."""

    def __init__(
        self,
        host,
        server_name: str,
        *,
        seconds: float,
        concurrency: int,
        timeline: bool = False,
        https: bool = False,
    ) -> None:
        args = f"{server_name} {seconds} {concurrency}" + (" timeline" if timeline else "")
        args += " https" if https else ""
        self.command = [*host.ssh_command(), f"python3 - {args}"]
        self.stats: dict = {}

    def __enter__(self) -> load_test:
        self.proc = subprocess.Popen(
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.proc.stdin.write(LOAD_SCRIPT)
        self.proc.stdin.close()
        return self

    def __exit__(self, *exc) -> None:
        out = self.proc.stdout.read()
        self.proc.wait(timeout=120)
        lines = out.strip().splitlines()
        assert lines, f"the load generator printed nothing (exit {self.proc.returncode})"
        self.stats = json.loads(lines[-1])


def audit_as_root(tree: BakedTree, host) -> subprocess.CompletedProcess:
    spec = f"root@127.0.0.1:{host.ssh_port}"
    return tree.invoke("audit", "--host", spec, "--identity", str(host.key_path))


def audit_fails_on_mode(tree: BakedTree, host, path: str, kind: str, mode: str, right: str):
    """chmod `path` to `mode`: the root audit must fail naming it ("<path> is <kind>
    <owner:group> <mode>"); the right mode is put back whatever happens."""
    host.run(f"chmod {mode} {path}")
    try:
        failed = audit_as_root(tree, host)
        assert failed.returncode == 1
        named = f"{path} is {kind} {tree.slug}:{tree.slug} {mode}"
        assert named in failed.stdout, failed.stdout
    finally:
        host.run(f"chmod {right} {path}")


# -- HTTPS against an offline ACME server: Pebble, from Debian, on a test host -------------
# Pebble's own HTTPS listener gets a certificate from a CA made here; that CA goes into
# the host's trust store (test-only), so certbot verifies the directory as it would Let's
# Encrypt's. Pebble's issuing root is fetched from its management endpoint (:15000/roots/0).

PEBBLE_SETUP = r"""
set -e
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends pebble openssl curl ca-certificates >/dev/null
echo "127.0.0.1 {domain}" >> /etc/hosts
mkdir -p /etc/pebble && cd /etc/pebble
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj /CN=listener-ca -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout listener.key -out listener.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > san.ext
openssl x509 -req -in listener.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
  -extfile san.ext -out listener.crt 2>/dev/null
cat > config.json <<EOF
{{"pebble": {{"listenAddress": "127.0.0.1:14000", "managementListenAddress": "127.0.0.1:15000",
  "certificate": "/etc/pebble/listener.crt", "privateKey": "/etc/pebble/listener.key",
  "httpPort": 80, "tlsPort": 5001, "ocspResponderURL": "",
  "externalAccountBindingRequired": false}}}}
EOF
# A second Pebble whose certificates live 90 seconds (certificateValidityPeriod): the
# audit must read one between 2/3 of its lifetime and its end, also on a busy machine.
sed -e 's/:14000/:14001/; s/:15000/:15001/; s/5001/5002/' \
  -e 's/"httpPort"/"certificateValidityPeriod": 90, "httpPort"/' config.json > short.json
cp ca.crt /usr/local/share/ca-certificates/pebble-listener.crt
update-ca-certificates >/dev/null
"""
PEBBLE_START = (
    "systemd-run --unit pebble{unit} -E PEBBLE_VA_NOSLEEP=1 -E PEBBLE_WFE_NONCEREJECT=0"
    " /usr/bin/pebble -config /etc/pebble/{config}.json"
    " && for i in $(seq 50); do curl -sf https://localhost:{port}/roots/0 -o /dev/null && break;"
    " sleep 0.2; done"
).format
DIRECTORY = "https://localhost:14000/dir"
ROOT_PEM = "/root/pebble-root.pem"  # Pebble's issuing root, as fetched onto the host
SHORT_LIVED = "https://localhost:14001/dir"  # the second Pebble: 90-second certificates

# Requests over HTTPS from the host itself, trusting only Pebble's root, for `seconds` with
# `concurrency` clients; one JSON line: requests, failed, failures, serials (how many
# certificates answered), p99_ms (the 99th percentile of a request's time, connect included).
HTTPS_LOAD = r"""
import http.client, json, ssl, sys, threading, time
seconds, concurrency, cafile, name = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
context = ssl.create_default_context(cafile=cafile)
done, failures, serials, times, lock = [0], [], set(), [], threading.Lock()
deadline = time.monotonic() + seconds
def worker():
    while time.monotonic() < deadline:
        began = time.monotonic()
        try:
            conn = http.client.HTTPSConnection(name, 443, timeout=10, context=context)
            conn.connect()  # the certificate now: a closing worker's answer drops the socket
            serial = conn.sock.getpeercert()["serialNumber"]
            conn.request("GET", "/health")
            response = conn.getresponse()
            response.read()
            conn.close()
            ok, detail = response.status == 200, response.status
        except Exception as error:
            ok, detail, serial = False, repr(error), None
        with lock:
            times.append(time.monotonic() - began)
            done[0] += 1
            serials.add(serial)
            if not ok:
                failures.append(str(detail))
threads = [threading.Thread(target=worker) for _ in range(concurrency)]
[t.start() for t in threads]
[t.join() for t in threads]
times.sort()
p99 = round(times[int(len(times) * 0.99)] * 1000) if times else None
print(json.dumps({"requests": done[0], "failed": len(failures), "failures": failures[:5],
                  "serials": len(serials - {None}), "p99_ms": p99}))
"""


def start_https_load(host, domain: str, seconds: int, concurrency: int) -> subprocess.Popen:
    """HTTPS_LOAD running on the host against `domain` (trusting Pebble's root only);
    `https_load_stats` waits for it and returns its figures."""
    load = subprocess.Popen(
        [*host.ssh_command(), f"python3 - {seconds} {concurrency} {ROOT_PEM} {domain}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    load.stdin.write(HTTPS_LOAD)
    load.stdin.close()
    return load


def https_load_stats(load: subprocess.Popen) -> dict:
    stats = json.loads(load.stdout.read().strip().splitlines()[-1])
    load.wait(timeout=60)
    return stats


def write_inventory(tree: BakedTree, hosts: dict, roles: dict[str, list[str]], **eep) -> None:
    """The tree's eep.hosts: each test host named in `roles` with its roles, reached on its
    SSH port, on its LAN address; `eep`: other settings (lb_health=...). Every host's key
    is pinned, also of those outside the inventory."""
    config = tree.path / "invoke.yaml"
    settings = yaml.safe_load(config.read_text())
    settings["eep"]["hosts"] = {
        name: {"ssh": f"127.0.0.1:{host.ssh_port}", "private": host.lan_ip, "roles": roles[name]}
        for name, host in hosts.items()
        if name in roles
    }
    settings["eep"].update(eep)
    config.write_text(yaml.safe_dump(settings))
    for host in hosts.values():
        tree.trust(host)

"""Static files, uploads and maintenance mode, as nginx serves them on a provisioned host.

The tests of this module share one host and run in order: v1's static files, v2's, a
rollback to v1's; uploads of every kind; maintenance on, a deploy during it, off.
"""

from __future__ import annotations

import gzip
import re
import shlex
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from e2e_support import REPO, bake_tree, build_sample_release

sys.path.insert(0, str(REPO / "sample_app"))
from build_release import static_files  # noqa: E402

pytestmark = pytest.mark.e2e

SLUG = "shop"
DOMAIN = f"{SLUG}.example.com"
FLAG = f"/srv/{SLUG}/maintenance"
YEAR = "public, max-age=31536000, immutable"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return bake_tree(tmp_path_factory.mktemp("trees"), SLUG, use_celery="n")


@pytest.fixture(scope="module")
def host(testhost_factory_module, tree):
    host = testhost_factory_module("stat")
    result = tree.provision(host)
    assert result.returncode == 0, result.stdout + result.stderr
    return host


def as_deploy(tree, host, *args: str) -> subprocess.CompletedProcess:
    spec = f"{SLUG}-deploy@127.0.0.1:{host.ssh_port}"
    return tree.invoke(*args, "--host", spec, "--identity", str(tree.deploy_key))


def deploy(tree, host, dist, version: str) -> None:
    result = as_deploy(tree, host, "deploy", "--release", str(build_sample_release(version, dist)))
    assert result.returncode == 0, result.stdout + result.stderr


def get(host, path: str, *options: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of a request to nginx, from the host."""
    url = shlex.quote(f"http://127.0.0.1{path}")
    extra = " ".join(shlex.quote(o) for o in options)
    out = host._run_bytes(f"curl -s -i -H 'Host: {DOMAIN}' {extra} {url}", b"")
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode().splitlines()
    fields = (line.partition(":") for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v.strip() for k, _, v in fields}, body


def status_and_body(host, path: str, *options: str) -> tuple[int, bytes]:
    status, _, body = get(host, path, *options)
    return status, body


def hashed_css(version: str) -> str:
    return next(name for name in static_files(version) if name.endswith(".css"))


def test_static_files_are_served_with_cache_headers_by_name(tree, host, dist):
    deploy(tree, host, dist, "v1")
    status, headers, body = get(host, "/static/version.txt")
    assert (status, body) == (200, b"sample v1\n")
    # Not hashed: a deploy may change it, so browsers ask again every time.
    assert headers["cache-control"] == "no-cache"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-type"].startswith("text/plain")

    status, headers, body = get(host, f"/{hashed_css('v1')}")
    assert (status, headers["content-type"]) == (200, "text/css")
    assert headers["cache-control"] == YEAR
    assert b'"sample v1"' in body

    # The precompressed copy, to clients that accept it.
    status, headers, body = get(host, "/static/version.txt", "-H", "Accept-Encoding: gzip")
    assert (status, headers["content-encoding"]) == (200, "gzip")
    assert headers["vary"] == "Accept-Encoding"
    assert gzip.decompress(body) == b"sample v1\n"

    # No listing, no dotfiles.
    status, _, body = get(host, "/static/")
    assert status == 403 and b"version.txt" not in body
    host.run(f"echo SECRET > /srv/{SLUG}/current/static/.env")
    try:
        status, _, body = get(host, "/static/.env")
        assert status == 404 and b"SECRET" not in body
    finally:
        host.run(f"rm /srv/{SLUG}/current/static/.env")


def test_deploy_and_rollback_switch_the_static_files_at_once(tree, host, dist):
    # Even with nginx.conf keeping open files for a minute: the site turns that cache off.
    host.put_file(
        "/etc/nginx/conf.d/open-files.conf",
        "open_file_cache max=1000 inactive=60s;\nopen_file_cache_valid 60s;\n",
    )
    host.run("nginx -t -q && systemctl reload nginx")
    try:
        assert get(host, "/static/version.txt")[2] == b"sample v1\n"  # now in that cache
        deploy(tree, host, dist, "v2")
        assert get(host, "/static/version.txt")[2] == b"sample v2\n"
        assert get(host, f"/{hashed_css('v2')}")[0] == 200
        assert get(host, f"/{hashed_css('v1')}")[0] == 404

        back = as_deploy(tree, host, "rollback")
        assert back.returncode == 0, back.stdout + back.stderr
        assert get(host, "/static/version.txt")[2] == b"sample v1\n"
        assert get(host, f"/{hashed_css('v1')}")[0] == 200
        assert get(host, f"/{hashed_css('v2')}")[0] == 404
    finally:
        host.run("rm /etc/nginx/conf.d/open-files.conf && systemctl reload nginx")


UPLOADS = {
    "page.html": b"<script>document.title = 'ran'</script>\n",
    "image.svg": b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>\n',
    "code.js": b"alert(document.cookie)\n",
    "script.py": b"print('this ran on the server')\n",
    "photo.png": b"\x89PNG\r\n\x1a\n<html><script>alert(1)</script></html>",
}


def upload(host, name: str, data: bytes) -> tuple[int, bytes]:
    """POST the sample app's /upload?name=NAME: its status and answer."""
    url = shlex.quote(f"http://127.0.0.1/upload?name={name}")
    out = host._run_bytes(
        f"curl -s -w '\\n%{{http_code}}' -H 'Host: {DOMAIN}'"
        f" -H 'Content-Type: application/octet-stream' --data-binary @- {url}",
        data,
    )
    body, _, status = out.rpartition(b"\n")
    return int(status), body


def test_uploads_are_served_as_bytes_never_run_or_rendered(host):
    for name, data in UPLOADS.items():
        assert upload(host, name, data) == (201, f"stored /media/{name}\n".encode())
    # The app's files, readable by nginx through the app's group.
    owners = host.run(f"stat -c '%U:%G %a' /srv/{SLUG}/shared/media/page.html").stdout
    assert owners.strip() == f"{SLUG}:{SLUG} 640"

    for name in ("page.html", "image.svg", "code.js", "script.py"):
        status, headers, body = get(host, f"/media/{name}")
        # The bytes as stored (script.py was not run), as a download nothing renders.
        assert (status, body) == (200, UPLOADS[name]), name
        assert headers["content-type"] == "application/octet-stream", name
        assert headers["content-disposition"] == "attachment", name
        assert headers["content-security-policy"] == "default-src 'none'; sandbox", name
        assert headers["x-content-type-options"] == "nosniff", name

    # An image keeps its type and is shown inline; nosniff: never taken for the HTML in it.
    status, headers, body = get(host, "/media/photo.png")
    assert (status, body) == (200, UPLOADS["photo.png"])
    assert headers["content-type"] == "image/png"
    assert headers["x-content-type-options"] == "nosniff"
    assert "content-disposition" not in headers

    host.run(f"echo SECRET > /srv/{SLUG}/shared/media/.hidden", user="root")
    status, _, body = get(host, "/media/.hidden")
    assert status == 404 and b"SECRET" not in body
    status, _, body = get(host, "/media/")
    assert status == 403 and b"page.html" not in body
    # Names with a path or a leading dot are the app's to refuse.
    assert upload(host, "..%2Fescape", b"x")[0] == 400
    assert upload(host, ".htaccess", b"x")[0] == 400


def from_outside(host, path: str, headers: dict[str, str]) -> int:
    """The status nginx gives a request from the network (not from the host itself)."""
    request = urllib.request.Request(host.http_url.rstrip("/") + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_maintenance_mode_answers_503_and_lets_the_deploy_tooling_through(tree, host, dist):
    assert get(host, "/")[0] == 200
    on = as_deploy(tree, host, "maintenance", "on")
    assert on.returncode == 0, on.stdout + on.stderr
    assert re.search(r"\] maintenance [\d.]+ s  on: visitors get 503", on.stdout), on.stdout
    assert re.search(r"\] maintenance on in [\d.]+ s", on.stdout), on.stdout
    flag = host.run(f"stat -c '%U:%G %a' {FLAG}; cat {FLAG}").stdout.splitlines()
    assert flag[0] == f"{SLUG}-deploy:{SLUG} 640"
    assert re.fullmatch(r"on since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ by \S+@\S+", flag[1]), flag

    page = (tree.path / "config" / "maintenance.html").read_bytes()
    for path, method in (("/", "GET"), ("/health", "GET"), ("/upload?name=x", "POST")):
        status, headers, body = get(host, path, "-X", method)
        assert (status, body) == (503, page), path
        assert headers["retry-after"] == "120"
        assert headers["cache-control"] == "no-store"
    # The deploy tooling's check, from the host itself, reaches the app ...
    assert status_and_body(host, "/health", "-H", "X-Eep-Check: 1") == (200, b"ok\n")
    # ... the same header from the network does not.
    assert from_outside(host, "/health", {"Host": DOMAIN, "X-Eep-Check": "1"}) == 503
    # Files nginx serves itself are still served.
    assert status_and_body(host, "/static/version.txt") == (200, b"sample v1\n")
    assert get(host, "/media/photo.png")[0] == 200

    again = as_deploy(tree, host, "maintenance", "on")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already on: unchanged" in again.stdout
    assert re.search(r"\] maintenance on \(unchanged\) in", again.stdout), again.stdout
    assert host.run(f"sed -n 1p {FLAG}").stdout.strip() == flag[1]  # the first `on` stands

    status = as_deploy(tree, host, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"maintenance {flag[1]}: visitors get 503" in status.stdout
    assert "GET /health on shop.example.com -> 200" in status.stdout

    # Deploys work in maintenance mode: their checks pass, visitors still get the page.
    deploy(tree, host, dist, "v3")
    status, _, body = get(host, "/", "-H", "X-Eep-Check: 1")
    assert status == 200 and body.startswith(b"sample v3 ")
    assert get(host, "/")[0] == 503
    assert get(host, "/static/version.txt")[2] == b"sample v3\n"


def audit_modes(tree, host) -> str:
    spec = f"root@127.0.0.1:{host.ssh_port}"
    result = tree.invoke("audit", "--host", spec, "--identity", str(host.key_path))
    line = re.search(r"\] (PASS|FAIL) +directories as provisioned.*", result.stdout)
    assert line, result.stdout + result.stderr
    return line.group(0)


def test_the_audit_checks_the_flag_and_maintenance_ends_with_off(tree, host):
    assert "] PASS" in audit_modes(tree, host)
    host.run(f"chmod 0604 {FLAG}")
    failed = audit_modes(tree, host)
    assert re.search(rf"FAIL +directories as provisioned, .*: {FLAG} is .* 0604", failed), failed
    assert as_deploy(tree, host, "maintenance", "on").returncode == 0  # writes it anew
    assert "] PASS" in audit_modes(tree, host)

    off = as_deploy(tree, host, "maintenance", "off")
    assert off.returncode == 0, off.stdout + off.stderr
    assert "off: the app answers visitors again" in off.stdout
    assert host.run(f"test -e {FLAG}", check=False).returncode == 1
    status, _, body = get(host, "/")
    assert status == 200 and body.startswith(b"sample v3 ")
    assert "maintenance" not in as_deploy(tree, host, "status").stdout

    again = as_deploy(tree, host, "maintenance", "off")
    assert again.returncode == 0 and "already off: unchanged" in again.stdout
    wrong = as_deploy(tree, host, "maintenance", "maybe")
    assert wrong.returncode == 1
    assert wrong.stderr.strip() == "error: maintenance takes on or off, not 'maybe'"

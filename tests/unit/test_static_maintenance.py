"""nginx's rules for static files, uploads and maintenance mode, and the maintenance
switch, read from a baked tree (the site itself passes the real `nginx -t` in
test_configs.py; tests/e2e/test_static_media.py serves it on a host)."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys

import pytest
from treecode import run_in_tree

DJANGO_HASHED_NAMES = """
import django, json, sys, tempfile
from django.conf import settings
settings.configure(STATIC_ROOT=tempfile.mkdtemp(), STATIC_URL="/static/")
django.setup()
from django.contrib.staticfiles.storage import ManifestStaticFilesStorage
from django.core.files.base import ContentFile
storage = ManifestStaticFilesStorage()
names = ["css/app.css", "js/vendor.min.js", "admin/img/icon-yes.svg", "fonts/a.woff2"]
print(json.dumps([storage.hashed_name(n, ContentFile(n.encode() * 7)) for n in names]))
"""


def block(text: str, opening: str) -> str:
    """The `{ ... }` block that starts on the line `opening`, nested blocks included
    (braces in quoted strings, as in a regex, do not count)."""
    start = text.index(opening + " {\n")
    depth, quoted = 0, False
    for end in range(start, len(text)):
        quoted ^= text[end] == '"'
        if not quoted:
            depth += {"{": 1, "}": -1}.get(text[end], 0)
        if text[end] == "}" and not quoted and depth == 0:
            return text[start : end + 1]
    raise AssertionError(f"{opening}: no closing brace")


@pytest.fixture
def site(bake) -> str:
    return (bake().project_path / "config" / "nginx.conf").read_text()


def test_static_and_media_never_reach_uwsgi(site):
    static = block(site, "    location ^~ /static/")
    media = block(site, "    location ^~ /media/")
    app = block(site, "    location /")
    for files in (static, media):
        assert "uwsgi" not in files
        assert "autoindex off;" in files
        # Dotfiles (.env, .git/...) answer 404, before any other nested rule.
        assert re.search(r"location ~ /\\\. \{\s+return 404;", files)
    assert site.count("uwsgi_pass") == 1 and "uwsgi_pass" in app
    # ^~ wins over regex locations; and the server has none of its own that could take
    # /media/x.py to the app.
    assert not re.search(r"^    location ~", site, re.M)


def test_hashed_names_as_django_makes_them_are_cached_a_year(site):
    static = block(site, "    location ^~ /static/")
    hashed = re.search(r'location ~ "(.+)" \{', static).group(1)
    hashed_rules = block(static, f'        location ~ "{hashed}"')
    assert 'Cache-Control "public, max-age=31536000, immutable"' in hashed_rules
    assert 'Cache-Control "no-cache"' in static.replace(hashed_rules, "")
    names = json.loads(run_in_tree(".", DJANGO_HASHED_NAMES))
    assert all(re.search(hashed, f"/static/{name}") for name in names), names
    for plain in ("css/app.css", "version.txt", "js/jquery-3.7.1.min.js", "a.b.c.d.e.f.css"):
        assert not re.search(hashed, f"/static/{plain}"), plain


def test_uploads_render_inline_only_as_images_audio_or_video(site):
    media = block(site, "    location ^~ /media/")
    # Everything else: a download of unknown type, sandboxed, never sniffed.
    assert "types { }\n        default_type application/octet-stream;" in media
    assert "add_header Content-Disposition attachment;" in media
    assert """add_header Content-Security-Policy "default-src 'none'; sandbox" always;""" in media
    inline = re.search(r'location ~\* "\\\.\((.+)\)\$" \{', media)
    listed = set(inline.group(1).replace("jpe?g", "jpg|jpeg").split("|"))
    types = block(media, "            types")
    typed = {
        ext: kind
        for kind, *exts in re.findall(r"^\s+(\S+) ([^;{]+);", types, re.M)
        for ext in exts[0].split()
    }
    assert set(typed) == listed
    assert {kind.split("/")[0] for kind in typed.values()} == {"image", "audio", "video"}
    assert not listed & {"svg", "html", "htm", "xml", "js", "pdf", "xhtml"}
    inline_rules = block(media, "        " + inline.group(0).removesuffix(" {"))
    assert "add_header X-Content-Type-Options nosniff always;" in inline_rules


def test_maintenance_is_tested_per_request_at_the_layout_path(bake):
    tree = bake().project_path
    site = (tree / "config" / "nginx.conf").read_text()
    facts = run_in_tree(
        tree,
        "from eep.layout import MAINTENANCE_FLAG, MAINTENANCE_FLAG_STATE\n"
        "from eep.manifest import host_file\n"
        "print(MAINTENANCE_FLAG, MAINTENANCE_FLAG_STATE.ownership,"
        " host_file('config/maintenance.html').path)",
    ).split()
    assert facts[:3] == ["/srv/shop/maintenance", "shop-deploy:shop", "0640"]
    app = block(site, "    location /")
    assert f"if (-f {facts[0]}) {{" in app
    # The bypass needs the header AND a request from the host itself.
    assert 'if ($eep_client ~ "^1 (127\\.0\\.0\\.1|::1)$") {' in app
    assert app.index("return 503;") < app.index("uwsgi_pass")
    page = block(site, "    location = /.eep/maintenance.html")
    assert "internal;" in page and f"alias {facts[3]};" in page
    assert "add_header Retry-After 120 always;" in page
    # No cache of open files: the flag and `current` are looked at on every request.
    assert re.findall(r"open_file_cache\s+\S+;", site) == ["open_file_cache off;"]
    assert site.index("open_file_cache off;") < site.index("    location")


def test_the_maintenance_page_is_self_contained_and_escapes_the_name(bake):
    name = 'Bob\'s <script>alert("x")</script> & Co'
    page = (bake(project_name=name).project_path / "config" / "maintenance.html").read_text()
    assert page.startswith("<!doctype html>\n")
    title = re.search(r"<h1>(.*) is down for maintenance</h1>", page).group(1)
    assert html.unescape(title) == name
    assert "<script" not in page.replace(html.escape("<script"), "")
    assert not re.search(r"\b(src|href)=", page)


FAKE_SESSION = """
import json
from eep.maintenance import set_maintenance
from eep.pathstate import PathState, directory, regular_file

class Remote:
    def __init__(self, have):
        self.have, self.commands = have, []
    def stat(self, path):
        return self.have
    def run(self, command, **options):
        self.commands.append(command)
        if " mv -f " in command:
            self.have = regular_file("shop-deploy", "shop", 0o640)
        elif command.startswith("rm -f"):
            self.have = None

class Session:
    who = "dev@laptop"
    def __init__(self, have):
        self.remote = Remote(have)

session = Session(HAVE_STATE)
try:
    changed = set_maintenance(session, TURN_ON)
except Exception as error:
    changed = f"{type(error).__name__}: {error}"
print(json.dumps([changed, session.remote.commands]))
"""


@pytest.mark.parametrize(
    ("have", "on", "changed", "command"),
    [
        ("None", True, True, "umask 027 && rm -f /srv/shop/maintenance.eep-new && printf"),
        ("regular_file('shop-deploy', 'shop', 0o640)", True, False, None),
        # Another owner or mode: written anew, with the layout's.
        ("regular_file('shop-deploy', 'shop', 0o604)", True, True, "umask 027"),
        ("regular_file('root', 'root', 0o644)", True, True, "umask 027"),
        ("None", False, False, None),
        ("regular_file('shop-deploy', 'shop', 0o640)", False, True, "rm -f /srv/shop/maintenance"),
        (
            "directory('shop-deploy', 'shop', 0o750)",
            True,
            "HostError: /srv/shop/maintenance is a directory; remove it, then try again",
            None,
        ),
    ],
)
def test_set_maintenance_acts_only_on_the_difference(bake, have, on, changed, command):
    code = FAKE_SESSION.replace("HAVE_STATE", have).replace("TURN_ON", str(on))
    result, commands = json.loads(run_in_tree(bake().project_path, code))
    assert result == changed
    if command is None:
        assert commands == []
    else:
        assert len(commands) == 1 and commands[0].startswith(command), commands
    if on and changed is True:
        assert "'on since " in commands[0] and " by dev@laptop'" in commands[0]
        assert commands[0].endswith(
            "> /srv/shop/maintenance.eep-new && mv -f"
            " /srv/shop/maintenance.eep-new /srv/shop/maintenance"
        )


def test_maintenance_takes_on_or_off_only(bake):
    tree = bake().project_path
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "maintenance", "maybe", "--host", "x@127.0.0.1:9"],
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr == "error: maintenance takes on or off, not 'maybe'\n"
    assert proc.stdout == ""

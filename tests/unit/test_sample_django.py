"""sample_django: its release tarball, and the unpacked release at work on SQLite.

The release runs in subprocesses (manage.py, or a short script after django.setup())
with the Python that runs pytest, so these tests need Django there and skip without it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sqlite3
import subprocess
import sys
import tarfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "sample_django" / "build_release.py"
VERSION = "1.2.3"
HASHED_CSS = re.compile(r"/static/notes/site\.[0-9a-f]{12}\.css")


def load_build_module():
    spec = importlib.util.spec_from_file_location("sample_django_build_under_test", BUILD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = load_build_module().build


@dataclass
class Release:
    root: Path
    shared: Path

    def env(self, **extra: str) -> dict[str, str]:
        """The environment eep gives the app, less the secret; SQLite as no PGDATABASE is set."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DJANGO_", "PG", "CELERY_")) and k != "EEP_SHARED_DIR"
        }
        env.update(EEP_SHARED_DIR=str(self.shared), DJANGO_ALLOWED_HOSTS="testserver")
        env.update(extra)
        return env

    def manage(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=self.root,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def script(self, code: str, **env: str) -> dict:
        """Run `code` in the release after django.setup(); it prints one JSON object."""
        setup = "import django, json, os\n"
        setup += "os.environ['DJANGO_SETTINGS_MODULE'] = 'shop.settings'\ndjango.setup()\n"
        done = subprocess.run(
            [sys.executable, "-c", setup + code],
            cwd=self.root,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    def table(self, name: str) -> tuple[list[str], int, list[str]]:
        """Columns and row count of a table, and the notes migrations applied."""
        db = sqlite3.connect(self.shared / "var" / "db.sqlite3")
        try:
            columns = [row[1] for row in db.execute(f"PRAGMA table_info({name})")]
            (count,) = db.execute(f"SELECT count(*) FROM {name}").fetchone()
            applied = db.execute(
                "SELECT name FROM django_migrations WHERE app = 'notes' ORDER BY id"
            ).fetchall()
        finally:
            db.close()
        return columns, count, [row[0] for row in applied]


def unpack(tarball: Path, where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(where, filter="data")
    (root,) = where.iterdir()
    return root


def new_release(
    tmp: Path,
    version: str = VERSION,
    shared: Path | None = None,
    *,
    migration: str | None = None,
    failing_migration: bool = False,
) -> Release:
    built = build(version, tmp / "out", migration=migration, failing_migration=failing_migration)
    root = unpack(built, tmp / "release")
    if shared is None:
        shared = tmp / "shared"
        (shared / "var").mkdir(parents=True)
    return Release(root, shared)


@pytest.fixture(scope="module")
def tarball(tmp_path_factory) -> Path:
    return build(VERSION, tmp_path_factory.mktemp("out"))


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Release:
    """The plain release after what eep runs: its build (collectstatic) and pre_activate."""
    made = new_release(tmp_path_factory.mktemp("plain"))
    # The build step: no secret, and no database (one that cannot be reached).
    collected = made.manage("collectstatic", "--noinput", PGDATABASE="shop", PGHOST="/nowhere")
    assert collected.returncode == 0, collected.stderr
    migrated = made.manage("migrate", "--noinput")
    assert migrated.returncode == 0, migrated.stderr
    return made


def test_tarball_members(tarball):
    assert tarball.name == f"django-{VERSION}.tar.gz"
    top = f"django-{VERSION}"
    with tarfile.open(tarball) as tar:
        members = {m.name: m for m in tar.getmembers()}
        version_py = tar.extractfile(f"{top}/shop/version.py").read().decode()
        eep_toml = tar.extractfile(f"{top}/eep.toml").read().decode()
        requirements = tar.extractfile(f"{top}/requirements.txt").read().decode()
    names = {name.removeprefix(f"{top}/") for name in members}
    assert all(name.startswith(f"{top}/") for name in members)
    assert not any(name.startswith("/") or ".." in name.split("/") for name in members)
    assert all(m.isfile() for m in members.values())
    for needed in [
        "manage.py",
        "requirements.txt",
        "eep.toml",
        "shop/settings.py",
        "shop/urls.py",
        "shop/wsgi.py",
        "shop/celery.py",
        "notes/models.py",
        "notes/tasks.py",
        "notes/migrations/0001_initial.py",
        "notes/static/notes/site.css",
        "notes/templates/notes/index.html",
    ]:
        assert needed in names
    # Nothing of the build, the checkout or a local run.
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)
    assert not {"build_release.py", "README.md", "ruff.toml", "__init__.py"} & names
    assert not any(name.split("/")[0] in {"static", "media", "var"} for name in names)
    assert not any(name.startswith("notes/migrations/0002") for name in names)
    assert version_py == f'VERSION = "{VERSION}"\n'
    config = tomllib.loads(eep_toml)["release"]
    assert config == {
        "build": ["python manage.py collectstatic --noinput"],
        "pre_activate": ["python manage.py migrate --noinput"],
        "health": "/health/",
    }
    pins = [line for line in requirements.splitlines() if line.strip()]
    assert all(re.fullmatch(r"[A-Za-z][\w.\-\[\]]*==[\w.]+", line) for line in pins)
    assert {re.split(r"[\[=]", line)[0].lower() for line in pins} == {
        "django",
        "psycopg",
        "celery",
        "redis",
    }


def test_build_command_line(tmp_path):
    done = subprocess.run(
        [sys.executable, str(BUILD), "4.5", str(tmp_path), "--with-migration", "tag"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == str(tmp_path / "django-4.5.tar.gz")
    with tarfile.open(tmp_path / "django-4.5.tar.gz") as tar:
        assert "django-4.5/notes/migrations/0002_note_tag.py" in tar.getnames()


def test_build_refuses_a_bad_field_name(tmp_path):
    with pytest.raises(ValueError):
        build("1", tmp_path, migration="Robert'); DROP TABLE")


def test_build_steps_ran_without_secret_or_database(release):
    manifest = json.loads((release.root / "static" / "staticfiles.json").read_text())
    hashed = manifest["paths"]["notes/site.css"]
    assert HASHED_CSS.fullmatch(f"/static/{hashed}")
    assert (release.root / "static" / hashed).is_file()
    assert (release.root / "static" / "admin" / "css").is_dir()
    columns, _, applied = release.table("notes_note")
    assert columns == ["id", "text", "created", "done_by"]
    assert applied == ["0001_initial"]


def test_models_match_migrations(release):
    done = release.manage("makemigrations", "--check", "--dry-run")
    assert done.returncode == 0, done.stdout + done.stderr


PAGES = """
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

c = Client()
seen = {}
first = c.get("/")
seen["first"] = [first.status_code, first.content.decode()]
added = c.post("/notes/", {"text": "hello from a test"})
seen["added"] = [added.status_code, added.content.decode()]
seen["empty"] = c.post("/notes/", {"text": " "}).status_code
second = c.get("/")
seen["second"] = second.content.decode()
health = c.get("/health/")
seen["health"] = [health.status_code, health.content.decode()]
upload = c.post("/upload/", {"file": SimpleUploadedFile("hello.txt", b"uploaded bytes")})
seen["upload"] = [upload.status_code, upload.content.decode()]
seen["no_file"] = c.post("/upload/").status_code
task = c.get("/task/?seconds=0&id=page-1")
seen["task"] = [task.status_code, task.content.decode()]
seen["bad_task"] = c.get("/task/?seconds=1&id=../x").status_code
seen["admin"] = [c.get("/admin/").status_code, c.get("/admin/login/").status_code]
print(json.dumps(seen))
"""


def test_pages(release):
    seen = release.script(PAGES, DJANGO_SECRET_KEY="a-test-secret")
    status, page = seen["first"]
    assert status == 200
    count = int(re.search(rf"^django {re.escape(VERSION)} notes (\d+)$", page, re.M).group(1))
    css = HASHED_CSS.search(page).group(0)
    assert (release.root / css.removeprefix("/")).is_file()

    assert seen["added"][0] == 201 and re.fullmatch(r"note \d+\n", seen["added"][1])
    assert seen["empty"] == 400
    assert f"django {VERSION} notes {count + 1}\n" in seen["second"]
    assert seen["health"] == [200, "ok\n"]

    status, url = seen["upload"]
    assert status == 201 and url.startswith("/media/uploads/hello")
    stored = release.shared / "media" / url.strip().removeprefix("/media/")
    assert stored.read_bytes() == b"uploaded bytes"
    # Readable by nginx through the app's group, by no one else.
    assert stored.stat().st_mode & 0o777 == 0o640
    assert stored.parent.stat().st_mode & 0o777 == 0o750
    assert seen["no_file"] == 400

    assert seen["task"] == [200, f"queued page-1 by {VERSION}\n"]  # memory:// broker
    assert seen["bad_task"] == 400
    assert seen["admin"] == [302, 200]


ONE_GET = """
from django.test import Client
print(json.dumps(Client(raise_request_exception=False).get(PATH).status_code))
"""


def test_serving_needs_the_secret(release):
    # Without DJANGO_SECRET_KEY (and no DJANGO_DEBUG) every request fails: a release
    # deployed without it fails its health check rather than serving half-configured.
    assert release.script(ONE_GET.replace("PATH", "'/health/'")) == 500


def test_health_fails_when_the_database_cannot_be_reached(release, tmp_path):
    code = ONE_GET.replace("PATH", "'/health/'")
    env = {"DJANGO_SECRET_KEY": "s", "PGDATABASE": "shop", "PGHOST": str(tmp_path / "nowhere")}
    assert release.script(code, **env) == 500


TASKS = """
from notes.models import Note
from notes.tasks import beat_tick, sleep_and_note

pk = sleep_and_note.apply(args=(0, "eager-1")).get()
beat_tick.apply().get()
beat_tick.apply().get()
note = Note.objects.get(pk=pk)
print(json.dumps({"done_by": note.done_by, "text": note.text}))
"""


def test_tasks_run_eagerly(release):
    seen = release.script(TASKS)
    assert seen == {"done_by": VERSION, "text": "task eager-1"}
    markers = release.shared / "var" / "tasks"
    assert (markers / "eager-1.started").is_file()
    assert json.loads((markers / "eager-1.json").read_text())["version"] == VERSION
    lines = (release.shared / "var" / "beat.log").read_text().splitlines()
    assert len(lines) == 2
    line = rf"\d{{4}}-\d\d-\d\dT[\d:.]+\+00:00 \d+ {re.escape(VERSION)}"  # time, pid, release
    assert all(re.fullmatch(line, x) for x in lines)


CELERY = """
from shop.celery import app

app.loader.import_default_modules()
entry = app.conf.beat_schedule["beat-tick"]
print(json.dumps({
    "broker": app.conf.broker_url,
    "acks_late": app.conf.task_acks_late,
    "prefetch": app.conf.worker_prefetch_multiplier,
    "beat_task": entry["task"],
    "beat_every": entry["schedule"],
    "beat_task_known": entry["task"] in app.tasks,
    "schedule_file": app.conf.beat_schedule_filename,
}))
"""


def test_celery_configuration(release, tmp_path):
    seen = release.script(CELERY)
    assert seen == {
        "broker": "memory://",
        "acks_late": True,
        "prefetch": 1,
        "beat_task": "notes.tasks.beat_tick",
        "beat_every": 5.0,
        "beat_task_known": True,
        "schedule_file": str(release.shared / "var" / "celerybeat-schedule"),
    }
    broker = "redis+socket:///run/shop/redis/redis.sock"
    schedule = str(tmp_path / "schedule")
    seen = release.script(CELERY, CELERY_BROKER_URL=broker, CELERY_BEAT_SCHEDULE_FILE=schedule)
    assert seen["broker"] == broker and seen["schedule_file"] == schedule


def test_a_failing_migration_leaves_the_database_as_it_was(tmp_path):
    first = new_release(tmp_path / "v1")
    assert first.manage("migrate", "--noinput").returncode == 0
    first.script("from notes.models import Note\nNote.objects.create(text='kept')\nprint(1)")
    before = first.table("notes_note")

    broken = new_release(tmp_path / "v2", "2.0", shared=first.shared, failing_migration=True)
    assert (broken.root / "notes/migrations/0002_fails_midway.py").is_file()
    done = broken.manage("migrate", "--noinput")
    assert done.returncode != 0
    assert "fails on purpose" in done.stderr
    # The column the migration added before it failed went with it: one transaction.
    assert (
        broken.table("notes_note")
        == before
        == (
            ["id", "text", "created", "done_by"],
            1,
            ["0001_initial"],
        )
    )


def test_a_release_with_a_new_field_migrates_an_older_database(tmp_path):
    first = new_release(tmp_path / "v1")
    assert first.manage("migrate", "--noinput").returncode == 0

    second = new_release(tmp_path / "v2", "2.0", shared=first.shared, migration="tag")
    done = second.manage("migrate", "--noinput")
    assert done.returncode == 0, done.stderr
    columns, _, applied = second.table("notes_note")
    assert columns == ["id", "text", "created", "done_by", "tag"]
    assert applied == ["0001_initial", "0002_note_tag"]
    # The model has the field too: no migration is missing, and it can be written.
    check = second.manage("makemigrations", "--check", "--dry-run")
    assert check.returncode == 0, check.stdout + check.stderr
    code = "from notes.models import Note\nnote = Note.objects.create(text='t', tag='x')\n"
    code += "print(json.dumps(Note.objects.get(pk=note.pk).tag))"
    assert second.script(code) == "x"

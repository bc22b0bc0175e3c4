"""Package the Django sample as a release tarball.

    build_release.py VERSION OUT_DIR [--with-migration FIELD] [--failing-migration]

makes OUT_DIR/django-VERSION.tar.gz holding django-VERSION/. The two options build
variants for tests: --with-migration adds a nullable text field FIELD to Note (the
model and a migration for it); --failing-migration adds a migration that changes the
schema and then raises, to show that a failed migration leaves the database as it was.
"""

from __future__ import annotations

import argparse
import io
import re
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# What a release holds; anything else here (a local var/, media/, static/) stays out.
TOP_LEVEL = ["manage.py", "requirements.txt", "eep.toml", "shop", "notes"]

ADD_FIELD = """\
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("notes", "{previous}")]

    operations = [
        migrations.AddField(
            "note", "{field}", models.CharField(max_length=100, null=True, blank=True)
        ),
    ]
"""

MODEL_FIELD = """
# Added by build_release.py --with-migration, with migrations/{migration}.py.
Note.add_to_class("{field}", models.CharField(max_length=100, null=True, blank=True))
"""

FAILING = """\
from django.db import migrations, models


def fail(apps, schema_editor):
    raise RuntimeError("this migration fails on purpose, after changing the schema")


class Migration(migrations.Migration):
    dependencies = [("notes", "{previous}")]

    operations = [
        migrations.AddField("note", "half_done", models.CharField(max_length=10, null=True)),
        migrations.RunPython(fail),
    ]
"""


def source_files() -> list[str]:
    names = []
    for top in TOP_LEVEL:
        path = HERE / top
        if path.is_file():
            names.append(top)
            continue
        for found in sorted(path.rglob("*")):
            name = found.relative_to(HERE).as_posix()
            if found.is_file() and "__pycache__" not in found.parts:
                names.append(name)
    return names


def build(
    version: str, out_dir: Path, *, migration: str | None = None, failing_migration: bool = False
) -> Path:
    if migration is not None and not re.fullmatch(r"[a-z][a-z0-9_]{0,39}", migration):
        raise ValueError(f"not a field name: {migration!r}")
    top = f"django-{version}"
    extra = {
        "shop/version.py": f'VERSION = "{version}"\n',
        # A static file whose content is the version: which release nginx serves it from.
        "notes/static/notes/version.txt": f"{version}\n",
    }
    previous, number = "0001_initial", 2
    if migration:
        name = f"{number:04d}_note_{migration}"
        extra[f"notes/migrations/{name}.py"] = ADD_FIELD.format(previous=previous, field=migration)
        models = (HERE / "notes/models.py").read_text()
        extra["notes/models.py"] = models + MODEL_FIELD.format(migration=name, field=migration)
        previous, number = name, number + 1
    if failing_migration:
        name = f"{number:04d}_fails_midway"
        extra[f"notes/migrations/{name}.py"] = FAILING.format(previous=previous)

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{top}.tar.gz"
    with tarfile.open(target, "w:gz") as tar:
        for name in source_files():
            if name not in extra:  # shop/version.py, and models.py in a variant
                tar.add(HERE / name, arcname=f"{top}/{name}", recursive=False)
        for name, content in sorted(extra.items()):
            data = content.encode()
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("version")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--with-migration", metavar="FIELD", dest="migration")
    parser.add_argument("--failing-migration", action="store_true")
    args = parser.parse_args()
    print(
        build(
            args.version,
            args.out_dir,
            migration=args.migration,
            failing_migration=args.failing_migration,
        )
    )


if __name__ == "__main__":
    main()

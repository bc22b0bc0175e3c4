"""Run the real tools over generated config files: sudo's visudo, nginx -t,
supervisor's own config loader and the uwsgi binary the tree uses on the host.

Each function returns None when the tool accepts the file and the tool's
complaint (a string) when it refuses it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from string import Template

NGINX_MAIN = """\
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{}}
http {{
    include /etc/nginx/mime.types;
    include {site};
}}
"""


def _run(cmd: list[str], **kwargs) -> str | None:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    return None if proc.returncode == 0 else (proc.stdout + proc.stderr).strip()


def check_sudoers(path: Path) -> str | None:
    return _run(["visudo", "-c", "-q", "-f", str(path)])


# config/nginx-balancer.conf's $real_ip as eep/manifest.py renders it for a balancer at
# 10.0.0.10 (tests/unit/test_lb_tls.py checks that it does).
BALANCER_LINES = """set_real_ip_from 10.0.0.10;
real_ip_header X-Forwarded-For;
set $eep_proto $scheme;
if ($realip_remote_addr = "10.0.0.10") {
    set $eep_proto $http_x_forwarded_proto;
}"""


def check_nginx_site(path: Path, balancer: str = BALANCER_LINES) -> str | None:
    """nginx -t of a site, with the snippet it includes rendered as `balancer` says."""
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy("/etc/nginx/uwsgi_params", tmp)
        # The site's log directory exists only on a provisioned host: log into tmp.
        site = Path(tmp) / "site.conf"
        text = re.sub(
            r"^(\s*(?:access|error)_log) /\S+;",
            rf"\1 {tmp}/site.log;",
            path.read_text(),
            flags=re.M,
        )
        # The snippet made from eep.hosts.
        snippet = path.with_name("nginx-balancer.conf")
        if snippet.exists():
            rendered = Path(tmp) / "balancer.conf"
            rendered.write_text(Template(snippet.read_text()).substitute(real_ip=balancer))
            text = re.sub(r"include \S+/nginx-balancer\.conf;", f"include {rendered};", text)
        site.write_text(text)
        main = Path(tmp) / "nginx.conf"
        main.write_text(NGINX_MAIN.format(tmp=tmp, site=site))
        return _run(["nginx", "-t", "-q", "-p", tmp, "-c", str(main)])


def check_uwsgi_ini(path: Path) -> str | None:
    # --strict refuses unknown options; the asap hook exits before anything starts.
    cmd = ["uwsgi-core", "--strict", "--plugin", "python3", "--ini", str(path)]
    return _run([*cmd, "--hook-asap", "exit:0"], stdin=subprocess.DEVNULL)


HOST_INI_VALUES = {"WEB": "no", "WORKER": "yes", "BEAT": "yes", "BROKER": "yes"}


def check_uwsgi_base_ini(path: Path) -> str | None:
    """The enforced ini as the host reads it: with config/host.ini rendered for a
    worker host (its `if-not-opt = eep-web=yes` block applies) at the path it includes."""
    text = path.read_text()
    host_ini = re.search(r"^ini = (/\S+/host\.ini)$", text, re.M)
    if host_ini is None:
        return "the enforced ini does not include host.ini"
    rendered = re.sub(
        r"\$([A-Z_]+)",
        lambda m: HOST_INI_VALUES.get(m.group(1), "x"),
        (path.parent / "host.ini").read_text(),
    )
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "host.ini").write_text(rendered)
        copy = Path(tmp) / "uwsgi.ini"
        copy.write_text(text.replace(host_ini.group(1), f"{tmp}/host.ini"))
        return check_uwsgi_ini(copy)


# Supervisor's loader resolves user and group names and checks that log
# directories exist; the app's accounts and its /var/log/<slug> only exist on
# the server, so the check maps unknown names to a fixed id and accepts log
# paths under /var/log. Everything else is the real loader.
SUPERVISOR_LOADER = textwrap.dedent(
    """
    import sys
    from supervisor import datatypes, options

    def lookup(real):
        def find(name):
            try:
                return real(name)
            except ValueError:
                return 4242
        return find

    def log_dir(real):
        def check(path):
            try:
                return real(path)
            except ValueError:
                if path.startswith("/var/log/"):
                    return path
                raise
        return check

    datatypes.name_to_uid = lookup(datatypes.name_to_uid)
    datatypes.name_to_gid = lookup(datatypes.name_to_gid)
    options.name_to_uid = datatypes.name_to_uid
    datatypes.existing_dirpath = log_dir(datatypes.existing_dirpath)
    opts = options.ServerOptions()
    opts.realize(args=["-c", sys.argv[1]])
    opts.process_config(do_usage=False)
    for group in opts.process_group_configs:
        print(group.name, [p.name for p in group.process_configs])
    """
)


def check_supervisor_conf(path: Path) -> str | None:
    with tempfile.TemporaryDirectory() as tmp:
        main = Path(tmp) / "supervisord.conf"
        main.write_text(
            f"[supervisord]\nlogfile={tmp}/supervisord.log\npidfile={tmp}/s.pid\n"
            f"[include]\nfiles = {path}\n"
        )
        return _run([sys.executable, "-c", SUPERVISOR_LOADER, str(main)])


def check_haproxy(path: Path) -> str | None:
    """`haproxy -c` on a configuration file (checks it; binds and starts nothing)."""
    return _run(["haproxy", "-c", "-q", "-f", str(path)])

"""Provisioning never takes over a name or path that eep did not make for the app.

One host with `shop` provisioned and serving v1. Each hostile tree below names something
that already exists there: a system account or group, /run/lock, /var/lib/dpkg, a web
root of another owner, shop's broker program or domain, Debian's default nginx site.
Provisioning it must fail with one line naming what it refused, before changing anything:
files, owners, modes, accounts, supervisor programs and nginx sites stay as they were,
and shop still serves. The trees are baked without the hook, which refuses most of these
answers already: what is tested here is the host-side refusal, the one that knows the host.
"""

from __future__ import annotations

import re
import shlex

import pytest
from e2e_support import BakedTree, bake_tree, build_sample_release, snapshot_state, state_changes

pytestmark = pytest.mark.e2e

SHOP = "shop"
NOT_EEPS = "refusing to take over what eep did not create: "

# (id, slug, other answers, preparation on the host, the refusal after NOT_EEPS)
HOSTILE = [
    (
        "app-root-is-var-lib-dpkg",
        "dpkg",
        {"web_root": "/var/lib"},
        "",
        r"/var/lib/dpkg exists \(root:root 0755\) and is not eep's",
    ),
    (
        "existing-group",
        "ssl-cert",
        {},
        # What Debian's ssl-cert package makes: a group that reads TLS private keys.
        "getent group ssl-cert || groupadd --system ssl-cert",
        "group ssl-cert exists and was not made by eep for this app",
    ),
    ("existing-system-user", "sshd", {}, "", "user sshd exists and was not made by eep"),
    ("supervisorctl-all", "all", {}, "", r"'all' is a supervisorctl keyword"),
    (
        "shadows-another-apps-broker",
        f"{SHOP}-redis",
        {},
        "",
        f"supervisor program {SHOP}-redis is already defined in"
        f" /etc/supervisor/conf.d/{SHOP}.broker.conf",
    ),
    (
        "another-apps-domain",
        "blog",
        {"domain": f"blog.example.com {SHOP}.example.com"},
        "",
        f"server name {SHOP}.example.com is already served by /etc/nginx/sites-enabled/{SHOP}",
    ),
    ("run-lock", "lock", {}, "", r"/run/lock exists \(root:root 1777\) and is not eep's"),
    ("var-log-journal", "journal", {}, "", r"/var/log/journal exists \(root:\S+ \d+\)"),
    ("var-log-apt", "apt", {}, "", r"/var/log/apt exists \(root:root 0755\)"),
    ("var-log-private", "private", {}, "", r"/var/log/private (exists|is also managed by)"),
    (
        "web-root-of-another-owner",
        "wiki",
        {"web_root": "/srv/alice"},
        "id alice || useradd alice; install -d -o alice -g alice -m 755 /srv/alice",
        r"/srv/alice \(directory alice:alice 0755\) is not a directory only root can change",
    ),
    (
        "nginx-default-site",
        "default",
        {},
        "",
        "/etc/nginx/sites-available/default exists and was not written by eep",
    ),
]


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> BakedTree:
    return bake_tree(tmp_path_factory.mktemp("trees"), SHOP)


@pytest.fixture(scope="module")
def host(testhost_factory_module, shop, tmp_path_factory):
    """shop provisioned and serving v1."""
    host = testhost_factory_module("adopt")
    provisioned = shop.provision(host)
    assert provisioned.returncode == 0, provisioned.stdout + provisioned.stderr
    release = build_sample_release("v1", tmp_path_factory.mktemp("dist"))
    deploy = f"{SHOP}-deploy@127.0.0.1:{host.ssh_port}"
    deployed = shop.invoke(
        "deploy", "--release", str(release), "--host", deploy, "--identity", str(shop.deploy_key)
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert_shop_serves(host)
    return host


def assert_shop_serves(host) -> None:
    url = shlex.quote("http://127.0.0.1/")
    out = host.run(f"curl -s -w ' %{{http_code}}' -H 'Host: {SHOP}.example.com' {url}").stdout
    assert out.startswith("sample v1 pid ") and out.endswith(" 200"), out


def supervisor_pids(host) -> str:
    """Program names, states and pids: a program restarted in between shows a new pid."""
    return host.run("supervisorctl status | awk '{print $1, $2, $4}'", check=False).stdout


@pytest.mark.parametrize(
    ("slug", "answers", "prepare", "refusal"),
    [pytest.param(*case[1:], id=case[0]) for case in HOSTILE],
)
def test_provisioning_refuses_and_changes_nothing(host, tmp_path, slug, answers, prepare, refusal):
    if prepare:
        host.run(prepare)
    tree = bake_tree(tmp_path, slug, hooks=False, **answers)
    before, programs = snapshot_state(host), supervisor_pids(host)
    result = tree.provision(host)
    assert result.returncode == 1, result.stdout + result.stderr
    failed = re.findall(r"\] FAILED: (.*)", result.stderr)
    assert len(failed) == 1 and re.match(re.escape(NOT_EEPS) + refusal, failed[0]), result.stderr
    # Nothing but the reading steps ran: no line says changed.
    assert not re.search(r"\] changed ", result.stdout), result.stdout
    assert state_changes(before, snapshot_state(host)) == []
    assert supervisor_pids(host) == programs
    assert_shop_serves(host)


def test_the_first_app_reprovisions_with_nothing_changed(host, shop):
    again = shop.provision(host)
    assert again.returncode == 0, again.stdout + again.stderr
    assert re.search(r"\] done: 0 changed, \d+ ok$", again.stdout, re.M), again.stdout


def test_an_app_with_names_of_its_own_is_still_accepted(host, shop, tmp_path):
    blog = bake_tree(tmp_path, "blog")
    first = blog.provision(host)
    assert first.returncode == 0, first.stdout + first.stderr
    for tree in (blog, shop):
        again = tree.provision(host)
        assert re.search(r"\] done: 0 changed, \d+ ok$", again.stdout, re.M), again.stdout
    assert_shop_serves(host)


def test_a_server_name_taken_outside_the_usual_files_is_refused_by_nginx_t(host, tmp_path):
    # A site that the check before any change does not read (nginx.conf includes it from
    # elsewhere): nginx -t only warns, exit 0; provisioning must not enable the new site.
    site = "server { listen 80; server_name taken.example.com; return 200 other; }"
    nginx_conf = "/etc/nginx/nginx.conf"
    host.run(
        f"mkdir -p /etc/nginx/extra && echo {shlex.quote(site)} > /etc/nginx/extra/other.conf"
        f" && sed -i 's|^\\s*include /etc/nginx/sites-enabled/\\*;|&\\n"
        f"include /etc/nginx/extra/*.conf;|' {nginx_conf} && nginx -t && systemctl reload nginx"
    )
    wiki = bake_tree(tmp_path, "wiki", domain="taken.example.com")
    result = wiki.provision(host)
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        "FAILED: nginx -t refused the site, previous kept: server name taken.example.com is also"
        " claimed by another site" in result.stderr
    ), result.stderr
    sites = host.run("ls /etc/nginx/sites-enabled /etc/nginx/sites-available").stdout
    assert "wiki" not in sites.split()
    served = host.run("curl -s -H 'Host: taken.example.com' http://127.0.0.1/").stdout
    assert served == "other"
    assert_shop_serves(host)

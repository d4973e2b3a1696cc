#!/usr/bin/env bash
# Runs the whole test suite, installing what it needs first (Debian packages with apt-get
# when run as root, Python packages into .venv). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh

# Debian packages the suite uses: setpriv (tests as an unprivileged user), python3-venv,
# Docker Engine (containers, and systemd test hosts), debootstrap (the test hosts' root
# filesystem, built once and cached in /var/cache/opsagent-test), busybox-static (test images),
# PostgreSQL (the collector's storage tests, the postgres health check and benches), Redis
# (the redis health check), Chromium and its WebDriver (the dashboard, driven headless by
# Selenium), nftables and iproute2 (IP blocking inside network namespaces the tests create),
# fail2ban (its stock filters, which watches load unchanged), openssh-server (sshd for the
# SFTP offsite copies of backups and fleet SSH connections), sudo (fleet runs' sudo -n).
missing=()
command -v setpriv >/dev/null || missing+=(util-linux)
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v chromium >/dev/null || missing+=(chromium)
command -v nft >/dev/null || missing+=(nftables)
command -v ip >/dev/null || missing+=(iproute2)
[ -f /etc/fail2ban/filter.d/sshd.conf ] || missing+=(fail2ban)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v sudo >/dev/null || missing+=(sudo)
[ -x /usr/bin/python3 ] && ! /usr/bin/python3 -c 'import ensurepip' 2>/dev/null && missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
        echo "missing Debian packages: ${missing[*]} (run this script as root to install them)" >&2
    fi
fi

opsagent_venv dev
echo "== schemas are generated from the models"
.venv/bin/python -m agent.playbook.schema --check
echo "== ruff"
.venv/bin/ruff check .
echo "== mypy (strict on agent/)"
.venv/bin/mypy
echo "== pytest"
.venv/bin/pytest "$@"

#!/usr/bin/env bash
# Runs the whole test suite, installing what it needs first (Debian packages with apt-get
# when run as root, Python packages into .venv). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh

# Debian packages the suite uses: setpriv (tests as an unprivileged user), python3-venv.
missing=()
command -v setpriv >/dev/null || missing+=(util-linux)
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

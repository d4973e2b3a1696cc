# Sourced by the scripts here: makes sure .venv exists with opsagent installed.
# Uses Debian's /usr/bin/python3 when present (readable by every user, so tests can also
# run the agent as an unprivileged user); installs python3-venv with apt-get if needed.
# $1: the pip extra to install ("" or "dev").
opsagent_venv() {
    local extra="${1:-}" py=python3
    [ -x /usr/bin/python3 ] && py=/usr/bin/python3
    if ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
        else
            echo "python3-venv is missing: run apt-get install python3-venv as root" >&2
            return 1
        fi
    fi
    if [ ! -x .venv/bin/python ]; then
        "$py" -m venv .venv
        .venv/bin/pip install -q --upgrade pip
    fi
    local target="."
    [ -n "$extra" ] && target=".[$extra]"
    local log
    log=$(mktemp)
    if ! .venv/bin/pip install -q --disable-pip-version-check -e "$target" >"$log" 2>&1; then
        cat "$log" >&2; rm -f "$log"
        echo "installing opsagent into .venv failed" >&2
        return 1
    fi
    rm -f "$log"
}

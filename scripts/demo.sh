#!/usr/bin/env bash
# The agent's main job on the embedded demo playbook: no root, no daemon, no server.
# It converges a sandbox directory and a worker process, shows that a second run has
# nothing to do, breaks the host the way an operator or a crash would, and repairs it.
# OPSAGENT_DEMO_DIR picks the sandbox (default /tmp/opsagent-demo).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
opsagent_venv ""
sandbox="${OPSAGENT_DEMO_DIR:-/tmp/opsagent-demo}"
run() { echo; echo "\$ opsagent $*"; .venv/bin/opsagent "$@"; }
pb=(playbooks/demo.yaml -e "sandbox=$sandbox")
if [ -e "$sandbox" ]; then  # start from scratch: stop an earlier demo's worker, clear its files
    .venv/bin/opsagent apply "${pb[@]}" -e worker_state=absent >/dev/null 2>&1 || true
    rm -rf -- "$sandbox"
fi

run validate playbooks/
rc=0; run plan "${pb[@]}" || rc=$?
[ "$rc" = 3 ] || { echo "expected plan to find drift (exit 3), got $rc" >&2; exit 1; }
run apply "${pb[@]}" --diff
run apply "${pb[@]}" -v

echo; echo "# breaking it: loosen a secret's mode, edit the config, kill the worker"
chmod 0644 "$sandbox/etc/secret.env"
echo "greeting = edited by hand" >> "$sandbox/etc/demo.conf"
kill -9 "$(cat "$sandbox/run/demo-worker.pid")"
sleep 0.2
rc=0; run apply "${pb[@]}" --check --diff || rc=$?
[ "$rc" = 3 ] || { echo "expected --check to report drift (exit 3), got $rc" >&2; exit 1; }
run apply "${pb[@]}"
echo; echo "\$ opsagent apply ${pb[*]} --json > $sandbox/report.json"
.venv/bin/opsagent apply "${pb[@]}" --json > "$sandbox/report.json"
.venv/bin/python - "$sandbox/report.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
print(f"report {report['id']}: {report['summary']}")
PY
echo
echo "The demo worker keeps running (pid $(cat "$sandbox/run/demo-worker.pid"))."
echo "Stop it with: .venv/bin/opsagent apply playbooks/demo.yaml -e sandbox=$sandbox -e worker_state=absent"

#!/usr/bin/env bash
# The agent's main job on the embedded demo playbook: `opsagent run`, the service, keeping a
# sandbox directory and a worker process in their desired state, reporting to an embedded
# collector (`opsagent server` on SQLite, 127.0.0.1). No root, no external server. It starts
# both, breaks the host the way an operator or a crash would (kill -9 the worker, loosen a
# secret's mode, edit a config), shows the agent repairing each within moments from its
# events, shows `opsagent status` and what the collector received, and prints the dashboard
# URL. On a terminal both keep running until Ctrl-C; otherwise (CI) they are stopped.
# OPSAGENT_DEMO_DIR picks the sandbox (default /tmp/opsagent-demo); the agent's config,
# state and log, and the collector's database, go to "$OPSAGENT_DEMO_DIR.agent".
# OPSAGENT_DEMO_PORT picks the collector's port (default 8080, or a free one if taken).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
opsagent_venv collector
repo=$(pwd)
sandbox="${OPSAGENT_DEMO_DIR:-/tmp/opsagent-demo}"
home="$sandbox.agent"
oa=("$repo/.venv/bin/opsagent")
say() { echo; echo "# $*"; }
run() { echo; echo "\$ opsagent $*"; "${oa[@]}" "$@"; }
waitfor() {  # waitfor SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds
    local deadline=$((SECONDS + $1)) what=$2; shift 2
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || { echo "timed out waiting for $what" >&2; exit 1; }
        sleep 0.05
    done
}
if [ -e "$sandbox" ] || [ -e "$home" ]; then  # start from scratch: stop an earlier demo
    [ -f "$home/agent.pid" ] && kill "$(cat "$home/agent.pid")" 2>/dev/null || true
    "${oa[@]}" apply playbooks/demo.yaml -e "sandbox=$sandbox" -e worker_state=absent \
        --state-dir "$home/state" >/dev/null 2>&1 || true
    rm -rf -- "$sandbox" "$home"
fi
mkdir -p "$home"
port="${OPSAGENT_DEMO_PORT:-8080}"
port=$(.venv/bin/python - "$port" <<'PY'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    s.close(); s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
PY
)
url="http://127.0.0.1:$port"
say "the collector: opsagent server --db $home/collector.db --listen 127.0.0.1:$port"
"${oa[@]}" server --db "$home/collector.db" --listen "127.0.0.1:$port" 2>"$home/collector.log" &
collector=$!
echo "$collector" > "$home/collector.pid"
trap 'kill "$collector" 2>/dev/null || true' EXIT
waitfor 30 "the collector" .venv/bin/python -c "import httpx; httpx.get('$url/healthz').raise_for_status()"
"${oa[@]}" server token add demo-host --db "$home/collector.db" > "$home/token"
chmod 600 "$home/token"
echo "token for demo-host written to $home/token (stored hashed by the collector)"
cat > "$home/agent.yaml" <<YAML
# yaml-language-server: \$schema=$repo/schemas/agent.schema.json
host: demo-host
playbooks: [$repo/playbooks/demo.yaml]
vars: {sandbox: $sandbox}
state_dir: $home/state
reconcile_interval: 60s
log_format: text
collector: {url: "$url", token_file: $home/token}
YAML

run validate playbooks/
rc=0; run plan playbooks/demo.yaml -e "sandbox=$sandbox" || rc=$?
[ "$rc" = 3 ] || { echo "expected plan to find drift (exit 3), got $rc" >&2; exit 1; }

say "the service: opsagent run --config $home/agent.yaml (log: $home/agent.log)"
"${oa[@]}" run --config "$home/agent.yaml" 2>"$home/agent.log" &
agent=$!
echo "$agent" > "$home/agent.pid"
trap 'kill "$agent" "$collector" 2>/dev/null || true' EXIT
pidfile="$sandbox/run/demo-worker.pid"
waitfor 30 "the first reconcile" grep -q "processes:demo-worker: changed" "$home/agent.log"
cat "$home/agent.log"
run status --config "$home/agent.yaml"

say "kill -9 the worker: its pidfd wakes the agent, which starts a new one"
old=$(cat "$pidfile")
lines=$(wc -l < "$home/agent.log")
kill -9 "$old"
waitfor 10 "a new worker" sh -c "tail -n +$((lines + 1)) $home/agent.log | grep -q 'processes:demo-worker: changed state'"
tail -n +"$((lines + 1))" "$home/agent.log"

say "loosen a secret's mode and edit the config: inotify wakes the agent, which repairs both"
say "(the config change also restarts the worker: a handler, like Ansible's notify)"
lines=$(wc -l < "$home/agent.log")
chmod 0644 "$sandbox/etc/secret.env"
echo "greeting = edited by hand" >> "$sandbox/etc/demo.conf"
waitfor 10 "the repairs" sh -c "tail -n +$((lines + 1)) $home/agent.log | grep -q 'processes:demo-worker: changed restart'"
grep -q 'edited by hand' "$sandbox/etc/demo.conf" && { echo "the config was not repaired" >&2; exit 1; }
[ "$(stat -c %a "$sandbox/etc/secret.env")" = 600 ] || { echo "the mode was not repaired" >&2; exit 1; }
tail -n +"$((lines + 1))" "$home/agent.log"
run status --config "$home/agent.yaml"

say "what the collector received (GET $url/api/v1/hosts/demo-host)"
waitfor 15 "the reports to arrive" .venv/bin/python - "$url" <<'PY'
import sys, httpx
host = httpx.get(sys.argv[1] + "/api/v1/hosts/demo-host").raise_for_status().json()
sys.exit(0 if host["drift_24h"] >= 2 else 1)
PY
.venv/bin/python - "$url" <<'PY'
import sys, httpx
base = sys.argv[1]
host = httpx.get(base + "/api/v1/hosts/demo-host").json()
print(f"host {host['name']}: {len(host['resources'])} resources, {host['failing']} failing, "
      f"{host['drift_24h']} drift repairs in 24 h, revision {host['revision']}")
for t in httpx.get(base + "/api/v1/hosts/demo-host/reports?limit=50").json()[::-1]:
    if t["type"] == "run" and t["summary"]["changed"]:
        for r in t["results"]:
            for c in r["changes"]:
                print(f"  {t['created_at']}  {r['kind']}:{r['name']}  {c['field']}  {c['label']}")
PY
echo
echo "dashboard: $url/   API: $url/api/v1/hosts   metrics: $url/metrics"
if [ -t 1 ] && [ -z "${CI:-}" ]; then
    echo "the agent and the collector keep running; Ctrl-C stops both"
    trap 'echo; kill -TERM "$agent" "$collector" 2>/dev/null || true; wait || true; exit 0' INT TERM
    wait "$agent" || true
fi

say "stop the agent (SIGTERM: it finishes the action in flight, flushes its reports, saves its state)"
kill -TERM "$agent"
wait "$agent" || true
kill -TERM "$collector"
wait "$collector" || true
trap - EXIT
tail -n 1 "$home/agent.log"
echo
echo "The demo worker keeps running (pid $(cat "$pidfile")): the agent is not its init."
echo "Start the agent again: .venv/bin/opsagent run --config $home/agent.yaml"
echo "Stop the worker: .venv/bin/opsagent apply playbooks/demo.yaml -e sandbox=$sandbox -e worker_state=absent --state-dir $home/state"

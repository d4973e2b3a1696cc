#!/usr/bin/env bash
# The agent's main job on the embedded demo playbook: `opsagent run`, the service, keeping a
# sandbox directory and a worker process in their desired state. No root, no daemon, no
# server. It starts the agent, breaks the host the way an operator or a crash would (kill -9
# the worker, loosen a secret's mode, edit a config), shows the agent repairing each within
# moments from its events, shows `opsagent status`, and stops the agent gracefully.
# OPSAGENT_DEMO_DIR picks the sandbox (default /tmp/opsagent-demo); the agent's config,
# state and log go to "$OPSAGENT_DEMO_DIR.agent".
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
opsagent_venv ""
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
cat > "$home/agent.yaml" <<YAML
# yaml-language-server: \$schema=$repo/schemas/agent.schema.json
host: demo-host
playbooks: [$repo/playbooks/demo.yaml]
vars: {sandbox: $sandbox}
state_dir: $home/state
reconcile_interval: 60s
log_format: text
YAML

run validate playbooks/
rc=0; run plan playbooks/demo.yaml -e "sandbox=$sandbox" || rc=$?
[ "$rc" = 3 ] || { echo "expected plan to find drift (exit 3), got $rc" >&2; exit 1; }

say "the service: opsagent run --config $home/agent.yaml (log: $home/agent.log)"
"${oa[@]}" run --config "$home/agent.yaml" 2>"$home/agent.log" &
agent=$!
echo "$agent" > "$home/agent.pid"
trap 'kill "$agent" 2>/dev/null || true' EXIT
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

say "stop the agent (SIGTERM: it finishes the action in flight and saves its state)"
kill -TERM "$agent"
wait "$agent" || true
trap - EXIT
tail -n 1 "$home/agent.log"
echo
echo "The demo worker keeps running (pid $(cat "$pidfile")): the agent is not its init."
echo "Start the agent again: .venv/bin/opsagent run --config $home/agent.yaml"
echo "Stop the worker: .venv/bin/opsagent apply playbooks/demo.yaml -e sandbox=$sandbox -e worker_state=absent --state-dir $home/state"

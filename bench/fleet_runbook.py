#!/usr/bin/env python3
"""Fleet runbook: one runbook over 10 hosts, opsagent beside ansible-playbook.

usage: fleet_runbook.py [--hosts 10] [--runs 5] [--warmup 1] [--forks 10]
                        [--tools opsagent,ansible,ansible-pipelining] [--only opsagent|ansible]

Hosts: tests/harness/fleet.py boots N systemd test hosts (real systemd as PID 1 in Docker,
sshd, nftables; the checkout mounted read-only so <repo>/.venv/bin/opsagent runs inside),
once for the whole bench, untimed. Both tools reach them over SSH on Docker's bridge as root,
with one ed25519 client key and host key checking against the same known_hosts file (each
host's own key, by IP). So, unlike the peer kit's scenarios, nothing here runs under
`unshare --net`: the hosts are only reachable through the bridge.

The same five steps on every host (bench/fleet/runbook.yaml, bench/fleet/playbook.yml):
  1 demo.service is active   2 restart it   3 block 203.0.113.7 for 1h in table inet opsagent
  4 touch /tmp/bench-marker  5 demo.service is active again
Tools (each: WARMUP uncounted runs, then RUNS counted, one tool after the other):
  opsagent            opsagent remediate bench/fleet/runbook.yaml -i inventory.yaml
                        --forks 10 --yes --known-hosts KH, every host running the agent
                        service as production hosts do (packaging/opsagent.service, one
                        small playbook; started untimed before this tool's runs): each
                        host's `opsagent fleet-exec` hands the request to it over its fleet
                        socket, verified per run from the incident record (served_by)
  opsagent-process    the same command with no agent service on the hosts: each host's
                        `opsagent fleet-exec` runs the steps in its own process
  ansible             ansible-playbook -i inventory.ini -f 10 playbook.yml, stock
                        configuration (no ansible.cfg: pipelining off; Ansible's default
                        ssh_args, ControlPersist=60s, so one connection per host per run)
  ansible-pipelining  the same with bench/fleet/ansible-pipelining.cfg (pipelining = True),
                        the tuned-peer figure
Every run starts cold on the controller side: no SSH connection is left over from the run
before (Ansible's ControlPersist masters from a run are ended before the next one).

Timing: each run is one call of the peer kit's wholeproc.py (-n 1 --warmup 0), whole process,
start-up included, output kept in /tmp/bench/results/fleet-runbook-<tool>.log. wall, cpu
(controller: user + sys of the tool and every child it waited for) and peak RSS come from it;
remote_cpu is the CPU the N hosts' cgroups used during the run (sshd, the remote Python of
either tool, systemctl, nft), read from cgroup v2 cpu.stat around the timed call.

Verified after every run, warm-ups included (or the script prints no figure and exits 1):
exit code 0; the tool's recap for every host (opsagent: `changed changed=3 ok=2`; Ansible:
ok=5 changed=3 unreachable=0 failed=0); and on every host: demo.service active with a new
ActiveEnterTimestamp and MainPID, 203.0.113.7 in blocked4 with a 1h timeout and a fresh
expiry (the element is deleted before each run), table inet opsagent holding exactly the four
sets and two chains of agent.firewall.nft (no rule duplicated by a repeat), /tmp/bench-marker
present (removed before each run).

After opsagent's runs, untimed diagnostics say where its time goes (`# phases:` lines on
stderr, see opsagent_phases; --no-phases skips them).

Prints `RESULT scenario=fleet-runbook tool=T metric=M value=V unit=U min= max= ...` lines
and ratios of medians (opsagent over each Ansible figure).
Environment: PEERS_DIR (default <repo>/../shared/bench/peers), PEERS_VENV (/tmp/peers-venv),
BENCH_ROOT (/tmp/bench).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
PEERS_DIR = os.path.abspath(os.environ.get("PEERS_DIR")
                            or os.path.join(REPO, "..", "shared", "bench", "peers"))
PEERS_VENV = os.environ.get("PEERS_VENV", "/tmp/peers-venv")
BENCH_ROOT = os.environ.get("BENCH_ROOT", "/tmp/bench")
RESULTS = os.path.join(BENCH_ROOT, "results")
SCENARIO = "fleet-runbook"
TOOLS = ("opsagent", "opsagent-process", "ansible", "ansible-pipelining")
IP = "203.0.113.7"
MARKER = "/tmp/bench-marker"
ROW = re.compile(r"^A\s+(user s|sys s|cpu s|wall s|peak MiB)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)",
                 re.M)
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
                   re.M)
# One fixed script per host for the state read (no data in it): the unit, the table, the marker.
PROBE = ("systemctl show -p ActiveState -p ActiveEnterTimestampMonotonic -p MainPID "
         "demo.service; echo @@; nft -j list table inet opsagent; echo @@; "
         f"test -e {MARKER} && echo marker")


class VerifyError(Exception):
    pass


def load() -> str:
    """The machine's 1-minute load average (others' work on it shows here)."""
    with open("/proc/loadavg") as fh:
        return fh.read().split()[0]


def note(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- host state
def table_shape(doc: dict) -> tuple:
    """Sets, chains and rules of table inet opsagent, without handles and elements."""
    sets, chains, rules = [], [], []
    for item in doc.get("nftables", []):
        if "set" in item:
            s = item["set"]
            sets.append((s["name"], s["type"], tuple(s.get("flags", ())), s.get("size")))
        elif "chain" in item:
            c = item["chain"]
            chains.append((c["name"], c.get("hook"), c.get("prio"), c.get("policy")))
        elif "rule" in item:
            r = item["rule"]
            rules.append((r["chain"], json.dumps(r["expr"], sort_keys=True)))
    return tuple(sorted(sets)), tuple(sorted(chains)), tuple(sorted(rules))


def expected_shape() -> tuple:
    """What agent.firewall.nft's ensure() makes, as table_shape() reads it back: the four
    sets, input/forward at priority -10, four drop rules each (one per set)."""
    from agent.firewall import nft

    sets = []
    for v in (4, 6):
        sets.append((nft._ADDR_SET[v], nft._TYPE[v], ("timeout",), nft.SET_SIZE))
        sets.append((nft._NET_SET[v], nft._TYPE[v], ("interval", "timeout"), None))
    chains = [(name, hook, nft.PRIORITY, "accept") for name, hook in nft.CHAINS]
    rules = []
    for chain, _ in nft.CHAINS:
        for v in (4, 6):
            for name in (nft._ADDR_SET[v], nft._NET_SET[v]):
                expr = [{"match": {"op": "==", "left": {"payload": {
                    "protocol": nft._PROTO[v], "field": "saddr"}}, "right": f"@{name}"}},
                    {"drop": None}]
                rules.append((chain, json.dumps(expr, sort_keys=True)))
    return tuple(sorted(sets)), tuple(sorted(chains)), tuple(sorted(rules))


def read_state(fh) -> dict:
    r = fh.exec(["sh", "-c", PROBE], timeout=30)
    unit_text, nft_text, marker = (r.output.split("@@\n") + ["", ""])[:3]
    props = dict(line.split("=", 1) for line in unit_text.splitlines() if "=" in line)
    state = {"active": props.get("ActiveState"),
             "entered": props.get("ActiveEnterTimestampMonotonic"),
             "pid": props.get("MainPID"), "marker": marker.strip() == "marker",
             "shape": None, "elem": None}
    try:
        doc = json.loads(nft_text)
    except ValueError:
        return state  # no table
    state["shape"] = table_shape(doc)
    for item in doc.get("nftables", []):
        s = item.get("set")
        if s and s["name"] == "blocked4":
            for e in s.get("elem", []):
                if isinstance(e, dict) and e.get("elem", {}).get("val") == IP:
                    state["elem"] = (e["elem"].get("timeout"), e["elem"].get("expires"))
    return state


def states(fleet, pool) -> dict:
    return dict(zip(fleet.names, pool.map(read_state, fleet.hosts), strict=True))


def reset_host(fh, drop_table: bool) -> None:
    """Before a run: the marker gone, the element gone (the table too when asked)."""
    argv = ["sh", "-c", f"rm -f {MARKER}; "
            + ("nft delete table inet opsagent 2>/dev/null; " if drop_table else
               f"nft delete element inet opsagent blocked4 '{{ {IP} }}' 2>/dev/null; ")
            + "true"]
    r = fh.exec(argv, timeout=30)
    if r.exit_code != 0:
        raise VerifyError(f"{fh.name}: reset failed: {r.output}")


def verify_hosts(before: dict, after: dict, t0: float, shape: tuple) -> None:
    problems = []
    for name, b in before.items():
        a = after[name]
        if a["active"] != "active":
            problems.append(f"{name}: demo.service is {a['active']}")
        if not a["entered"] or a["entered"] == b["entered"] or a["pid"] == b["pid"]:
            problems.append(f"{name}: demo.service was not restarted "
                            f"(ActiveEnterTimestampMonotonic {b['entered']} -> {a['entered']},"
                            f" MainPID {b['pid']} -> {a['pid']})")
        if not a["marker"]:
            problems.append(f"{name}: {MARKER} is missing")
        if a["shape"] != shape:
            problems.append(f"{name}: table inet opsagent is not as agent.firewall.nft makes "
                            f"it: {a['shape']}")
        if a["elem"] is None:
            problems.append(f"{name}: {IP} is not in blocked4")
        else:
            timeout, expires = a["elem"]
            fresh = 3600 - (time.monotonic() - t0) - 1.0
            if timeout != 3600 or expires is None or expires < fresh:
                problems.append(f"{name}: {IP} has timeout {timeout}, expires {expires} "
                                f"(expected 3600 and at least {fresh:.0f})")
    if problems:
        raise VerifyError("; ".join(problems[:12]) + (" ..." if len(problems) > 12 else ""))


# ---------------------------------------------------------------- remote CPU
def cpu_file(container) -> str:
    """The file holding the container's CPU use: cgroup v2 cpu.stat (usage_usec), or v1
    cpuacct.usage (ns) on a hybrid host. Its own cgroup, not systemd's sub-cgroups in it."""
    container.reload()
    pid, cid = container.attrs["State"]["Pid"], container.id
    with open(f"/proc/{pid}/cgroup") as fh:
        lines = [line.rstrip("\n").split(":", 2) for line in fh]
    for _, ctrls, path in lines:
        parts = path.strip("/").split("/")
        own = next((i for i, part in enumerate(parts) if cid in part), None)
        if own is None:
            continue
        rel = "/".join(parts[:own + 1])
        if "cpuacct" in ctrls.split(","):
            found = f"/sys/fs/cgroup/{ctrls}/{rel}/cpuacct.usage"
        elif ctrls == "":
            found = f"/sys/fs/cgroup/{rel}/cpu.stat"
            if not os.path.exists(found):
                found = f"/sys/fs/cgroup/unified/{rel}/cpu.stat"
        else:
            continue
        if os.path.exists(found):
            return found
    raise VerifyError(f"no CPU accounting file for container {cid[:12]} ({lines})")


def cpu_seconds(files: list[str]) -> float:
    total = 0.0
    for path in files:
        with open(path) as fh:
            text = fh.read()
        if path.endswith("cpuacct.usage"):
            total += int(text) / 1e9
        else:
            total += int(next(ln.split()[1] for ln in text.splitlines()
                              if ln.startswith("usage_usec"))) / 1e6
    return total


# ---------------------------------------------------------------- tools
def commands(tool: str, fleet, forks: int) -> tuple[list[str], dict[str, str]]:
    env: dict[str, str] = {}
    if tool.startswith("opsagent"):
        return ([fleet.opsagent_path, "remediate", os.path.join(HERE, "fleet", "runbook.yaml"),
                 "-i", str(fleet.inventory), "--forks", str(forks), "--yes",
                 "--known-hosts", str(fleet.known_hosts)], env)
    if tool == "ansible-pipelining":
        env["ANSIBLE_CONFIG"] = os.path.join(HERE, "fleet", "ansible-pipelining.cfg")
    return ([os.path.join(PEERS_VENV, "bin", "ansible-playbook"), "-i",
             str(fleet.ansible_inventory), "-f", str(forks),
             os.path.join(HERE, "fleet", "playbook.yml")], env)


def opsagent_recap(text: str) -> dict[str, dict[str, str]]:
    """RECAP lines (`th1   changed      changed=3  ok=2`): host -> {status, counts...}."""
    found: dict[str, dict[str, str]] = {}
    if "\nRECAP\n" not in text:
        return found
    for line in text.split("\nRECAP\n", 1)[1].splitlines():
        words = line.split()
        if len(words) < 2 or "=" in words[0] or "=" in words[1]:
            continue
        found[words[0]] = {"status": words[1],
                           **dict(w.split("=", 1) for w in words[2:] if "=" in w)}
    return found


def verify_log(tool: str, text: str, names: list[str]) -> None:
    if tool.startswith("opsagent"):
        recap = opsagent_recap(text)
        bad = {n: recap.get(n) for n in names
               if (r := recap.get(n)) is None or r["status"] != "changed"
               or r.get("changed") != "3" or r.get("ok") != "2"
               or r.get("failed", "0") != "0"}
        if bad:
            raise VerifyError(f"opsagent: RECAP is not `changed changed=3 ok=2` on {bad}")
        return
    recaps = {m[1]: tuple(int(x) for x in m.groups()[1:]) for m in RECAP.finditer(text)}
    want = (5, 3, 0, 0)  # ok, changed, unreachable, failed
    bad = {n: recaps.get(n) for n in names if recaps.get(n) != want}
    if bad:
        raise VerifyError(f"{tool}: recap (ok, changed, unreachable, failed) is not {want} "
                          f"on {bad}")


def end_leftovers(marker: str) -> int:
    """End the processes a run left behind (Ansible's ControlPersist masters, which detach
    from the timed process group): found by our scratch dir in their command line, each
    ended by its pid."""
    ended = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 15)
                ended += 1
            except ProcessLookupError:
                pass
    return ended


def timed_run(argv: list[str], env: dict[str, str], work: str, log: str) -> dict:
    shell = f"cd {shlex.quote(work)} && exec {shlex.join(argv)} >>{shlex.quote(log)} 2>&1"
    p = subprocess.run([sys.executable, os.path.join(PEERS_DIR, "wholeproc.py"), "-n", "1",
                        "--warmup", "0", "--timeout", "900", "--", "sh", "-c", shell],
                       capture_output=True, text=True, env=env, timeout=1000)
    rows = {m[1]: float(m[3]) for m in ROW.finditer(p.stdout)}
    rc = re.search(r"A exit codes: \[(-?\d+)\]", p.stdout)
    if p.returncode != 0 or rc is None or "wall s" not in rows:
        raise VerifyError(f"timer failed ({p.returncode}): {p.stdout}{p.stderr}")
    return {"rc": int(rc[1]), "wall": rows["wall s"], "cpu": rows["cpu s"],
            "peak": rows["peak MiB"]}


def verify_served(tool: str, env: dict[str, str], names: list[str]) -> None:
    """The run's incident record says what ran each host's steps: the host's agent service
    (tool opsagent) or a process of their own (opsagent-process)."""
    p = subprocess.run([os.path.join(REPO, ".venv", "bin", "opsagent"), "incident", "list",
                        "--json", "-n", "1"], capture_output=True, text=True, env=env,
                       timeout=60)
    try:
        hosts = {h["name"]: h.get("served_by") or "" for h in json.loads(p.stdout)[0]["hosts"]}
    except (ValueError, LookupError, TypeError) as e:
        raise VerifyError(f"{tool}: no incident record to read ({e}): {p.stderr}") from None
    want = "agent service" if tool == "opsagent" else "process"
    bad = {n: hosts.get(n) for n in names if not str(hosts.get(n)).startswith(want)}
    if bad:
        raise VerifyError(f"{tool}: steps not run by {want!r} on {bad}")


def run_tool(tool: str, fleet, args, scratch: str, pool, cpu_files: list[str]) -> list[dict]:
    if tool == "opsagent":
        fleet.start_agent_services()  # untimed; stopped again before the other tools
        time.sleep(2.0)  # past the service's start-up reconcile
    else:
        fleet.stop_agent_services()
    argv, extra = commands(tool, fleet, args.forks)
    home = os.path.join(scratch, "home")
    os.makedirs(home, exist_ok=True)
    env = {**os.environ, "HOME": home, "OPSAGENT_STATE_DIR": os.path.join(scratch, "state"),
           "LC_ALL": "C.UTF-8", **extra}
    env.pop("ANSIBLE_CONFIG", None) if "ANSIBLE_CONFIG" not in extra else None
    log = os.path.join(RESULTS, f"fleet-runbook-{tool}.log")
    open(log, "w").close()
    shape = expected_shape()
    runs = []
    for i in range(args.warmup + args.runs):
        list(pool.map(lambda fh, first=(i == 0): reset_host(fh, first), fleet.hosts))
        before = states(fleet, pool)
        with open(log, "a") as fh:
            fh.write(f"\n===== {tool} run {i + 1} ({'warm-up' if i < args.warmup else 'timed'})"
                     f" {time.strftime('%H:%M:%S')}\n")
        size = os.path.getsize(log)
        t0, cpu0 = time.monotonic(), cpu_seconds(cpu_files)
        r = timed_run(argv, env, scratch, log)
        r["remote_cpu"] = cpu_seconds(cpu_files) - cpu0
        leftovers = end_leftovers(scratch)
        with open(log) as fh:
            fh.seek(size)
            text = fh.read()
        if r["rc"] != 0:
            raise VerifyError(f"{tool} run {i + 1} exited {r['rc']}; output:\n{text[-3000:]}")
        verify_log(tool, text, fleet.names)
        if tool.startswith("opsagent"):
            verify_served(tool, env, fleet.names)
        verify_hosts(before, states(fleet, pool), t0, shape)
        note(f"{tool} run {i + 1}{' (warm-up)' if i < args.warmup else ''}: wall "
             f"{r['wall']:.3f} s, cpu {r['cpu']:.3f} s, remote cpu {r['remote_cpu']:.3f} s, "
             f"verified on {len(fleet.names)} hosts; load {load()}"
             + (f"; ended {leftovers} leftover process(es)" if leftovers else ""))
        if i >= args.warmup:
            runs.append(r)
    return runs


# ---------------------------------------------------------------- where opsagent's time goes
def _spread(vals: list[float]) -> str:
    return f"median {statistics.median(vals):.3f} s (min {min(vals):.3f}, max {max(vals):.3f})"


def opsagent_phases(fleet, pool) -> None:
    """Untimed diagnostics (`# phases:` notes, no RESULT): the parts of a run measured apart.
    ssh: agent.fleet.ssh.Connection.open to every host at once (TCP, handshake, host key
    check, login) and one `opsagent --version` over it (the remote interpreter's start);
    local: the runbook run on a host by its own agent (`opsagent remediate`, no -i) through
    docker exec, on one host alone (with its steps' durations from the incident record)
    and then on every host at once."""
    from agent.fleet.ssh import Connection, SSHOptions
    from agent.inventory import load_inventory

    inv = load_inventory(str(fleet.inventory))
    options = SSHOptions(known_hosts=[str(fleet.known_hosts)])

    def ssh_parts(host) -> tuple[float, float]:
        t0 = time.monotonic()
        conn = Connection.open(host, options)
        t1 = time.monotonic()
        try:
            r = conn.run([fleet.opsagent_path, "--version"], timeout=60)
        finally:
            conn.close()
        if r.exit_code != 0:
            raise VerifyError(f"{host.name}: opsagent --version over SSH exited {r.exit_code}")
        return t1 - t0, time.monotonic() - t1

    parts = list(pool.map(ssh_parts, inv.hosts.values()))
    note(f"phases: ssh connect+login, {len(parts)} hosts at once: "
         f"{_spread([c for c, _ in parts])}")
    note(f"phases: `opsagent --version` over SSH, {len(parts)} hosts at once: "
         f"{_spread([v for _, v in parts])}")
    one = ssh_parts(next(iter(inv.hosts.values())))
    note(f"phases: one host alone: connect+login {one[0]:.3f} s, --version {one[1]:.3f} s")
    runbook = os.path.join(HERE, "fleet", "runbook.yaml")

    def local_run(fh) -> float:
        t0 = time.monotonic()
        r = fh.exec([fleet.opsagent_path, "remediate", runbook, "--yes"], timeout=300)
        if r.exit_code != 0:
            raise VerifyError(f"{fh.name}: local opsagent remediate exited {r.exit_code}: "
                              f"{r.output[-2000:]}")
        return time.monotonic() - t0

    alone = local_run(fleet.hosts[0])
    note(f"phases: the runbook run locally on one host (docker exec, no SSH): {alone:.3f} s")
    r = fleet.hosts[0].exec([fleet.opsagent_path, "remediate", runbook, "--yes", "--json"],
                            timeout=300)
    try:
        doc = json.loads(r.output[r.output.index("{"):])
        steps = ", ".join(f"[{o['step'] + 1}] {o['duration_s']:.3f} s"
                          for o in doc.get("outcomes", []))
        note(f"phases: its steps on one host alone (the incident record's duration_s): {steps}")
    except (ValueError, KeyError, TypeError) as e:
        note(f"phases: no step durations in the incident record ({e})")
    together = list(pool.map(local_run, fleet.hosts))
    note(f"phases: the local run on {len(together)} hosts at once: {_spread(together)}")


# ---------------------------------------------------------------- report
def report(results: dict[str, list[dict]], args) -> None:
    units = {"wall": "s", "cpu": "s", "peak": "MiB", "remote_cpu": "s"}
    names = {"wall": "wall_median", "cpu": "cpu_median", "peak": "peak_rss_median",
             "remote_cpu": "remote_cpu_median"}
    for tool, runs in results.items():
        for key, unit in units.items():
            vals = [r[key] for r in runs]
            fmt = "{:.1f}" if key == "peak" else "{:.3f}"
            print(f"RESULT scenario={SCENARIO} tool={tool} hosts={args.hosts} forks={args.forks} "
                  f"metric={names[key]} value={fmt.format(statistics.median(vals))} unit={unit} "
                  f"min={fmt.format(min(vals))} max={fmt.format(max(vals))} runs={len(vals)} "
                  f"warmup={args.warmup} net=docker-bridge", flush=True)
    for mine in (t for t in results if t.startswith("opsagent")):
        for peer in (t for t in results if t.startswith("ansible")):
            for key in ("wall", "cpu", "remote_cpu"):
                a = statistics.median(r[key] for r in results[mine])
                b = statistics.median(r[key] for r in results[peer])
                print(f"RESULT scenario={SCENARIO} tool={mine} metric={key}_ratio_vs_{peer} "
                      f"value={a / b:.4f}", flush=True)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=10)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--forks", type=int, default=10)
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--only", choices=("opsagent", "ansible"),
                    help="one side: opsagent (both ways), or ansible (stock and pipelining)")
    ap.add_argument("--no-phases", dest="phases", action="store_false",
                    help="skip the untimed diagnostics of opsagent's parts (ssh, local run)")
    a = ap.parse_args()
    a.tools = ([t for t in TOOLS if t.startswith(a.only)] if a.only
               else [t for t in a.tools.split(",") if t])
    unknown = set(a.tools) - set(TOOLS)
    if unknown or a.hosts < 1 or a.runs < 1 or a.warmup < 0:
        ap.error(f"tools are {', '.join(TOOLS)}; hosts and runs at least 1, warmup at least 0")
    return a


def main() -> int:
    args = parse_args()
    venv_python = os.path.join(REPO, ".venv", "bin", "python")
    if os.path.exists(venv_python) and sys.prefix != os.path.join(REPO, ".venv"):
        # the harness and the diagnostics need docker and paramiko: the project's venv
        os.execv(venv_python, [venv_python, os.path.abspath(__file__), *sys.argv[1:]])
    try:
        import docker  # noqa: F401
        import paramiko  # noqa: F401
    except ImportError:
        sys.exit("docker or paramiko is missing: run with <repo>/.venv/bin/python")
    for path in (os.path.join(PEERS_DIR, "wholeproc.py"),
                 *([os.path.join(PEERS_VENV, "bin", "ansible-playbook")]
                   if any(t.startswith("ansible") for t in args.tools) else [])):
        if not os.path.exists(path):
            sys.exit(f"{path} is missing (PEERS_DIR / PEERS_VENV; setup_peers.sh installs "
                     "ansible)")
    from tests.harness.docker import ensure_docker
    from tests.harness.fleet import Fleet

    note("network: no `unshare --net` here (the peer kit's scenarios use it): the hosts are "
         "containers reached over Docker's bridge, so both tools use the real network stack")
    os.makedirs(RESULTS, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="fleet-runbook-", dir=BENCH_ROOT)
    t = time.monotonic()
    fleet = Fleet(ensure_docker(), args.hosts).start()
    note(f"{args.hosts} hosts up in {time.monotonic() - t:.1f} s (untimed): "
         + ", ".join(f"{fh.name}={fh.address}" for fh in fleet.hosts))
    results: dict[str, list[dict]] = {}
    try:
        cpu_files = [cpu_file(fh.host.container) for fh in fleet.hosts]
        with ThreadPoolExecutor(max_workers=args.hosts) as pool:
            for tool in args.tools:
                results[tool] = run_tool(tool, fleet, args, scratch, pool, cpu_files)
                if tool == "opsagent" and args.phases:
                    opsagent_phases(fleet, pool)
    except VerifyError as e:
        print(f"fleet-runbook verify: {e}", file=sys.stderr)
        return 1
    finally:
        fleet.remove()
        end_leftovers(scratch)
        shutil.rmtree(scratch, ignore_errors=True)
    report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""S1 converge-files with opsagent beside the peers (pyinfra, optionally ansible).

usage: s1_converge_files.py [--tools opsagent,pyinfra[,ansible]] [--phases cold,warm,check]
                            [--runs 5] [--keep]

The scenario, its inputs, phases, timer, verification and RESULT lines are those of the
peer kit's S1 (../shared/bench/peers/s1_converge_files.py, see its README): this script
imports that module and reuses make_source, verify_tree, the pyinfra/ansible setup and log
checks and the timer wrapper, and only adds
  * the opsagent tool: <tooldir>/site.yaml with 20 `state: directory` (mode 0750) and 200
    `source:` files (mode 0640), in the peer's rel_dirs()/rel_files() order;
    cold/warm `opsagent apply site.yaml`, check `opsagent apply site.yaml --check`;
    every run's RECAP line is checked (cold: changed=220, warm/check: ok=220 changed=0,
    failed=0 always) and so is every counted run's exit code (0);
  * ratio lines, opsagent median / peer median, for each phase measured for both:
    RESULT scenario=S1-converge-files tool=opsagent phase=P metric=wall_ratio_vs_pyinfra value=X
    (and cpu_ratio_vs_pyinfra; *_vs_ansible too when ansible was measured).

Environment (besides the peer script's BENCH_TIMER, PEERS_VENV, BENCH_ROOT):
  PEERS_DIR      the peer kit (default: <repo>/../shared/bench/peers)
  OPSAGENT_VENV  venv whose bin/opsagent is measured (default: <repo>/.venv)
opsagent's state directory is put in the scratch directory (OPSAGENT_STATE_DIR), so the
benchmark writes nothing to /var/lib/opsagent or the real home.
"""
import argparse
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from netns import isolate_network  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PEERS_DIR = os.path.abspath(os.environ.get("PEERS_DIR")
                            or os.path.join(REPO, "..", "shared", "bench", "peers"))
if not os.path.isfile(os.path.join(PEERS_DIR, "s1_converge_files.py")):
    sys.exit(f"peer kit not found in {PEERS_DIR} (set PEERS_DIR)")
# Loaded from its path under its own name: this script has the same file name, so a plain
# `import s1_converge_files` could pick up this file instead, depending on sys.path order.
_spec = importlib.util.spec_from_file_location(
    "peer_s1_converge_files", os.path.join(PEERS_DIR, "s1_converge_files.py"))
peer = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = peer
_spec.loader.exec_module(peer)

SCENARIO = "S1-converge-files"
PLAYBOOK_NAME = "s1-converge-files"
N_OPS = peer.N_FILES + peer.N_DIRS




# ---------------------------------------------------------------- opsagent
def opsagent_venv():
    return os.environ.get("OPSAGENT_VENV") or os.path.join(REPO, ".venv")


def _q(s):
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    import json
    return json.dumps(s)


def setup_opsagent(work, src, dst, _peers_venv):
    lines = [f"name: {PLAYBOOK_NAME}\n", "files:\n"]
    lines += [f'  - {{path: {_q(dst + "/" + d)}, state: directory, mode: "0750"}}\n'
              for d in peer.rel_dirs()]
    lines += [f'  - {{path: {_q(dst + "/" + f)}, source: {_q(src + "/" + f)}, mode: "0640"}}\n'
              for f in peer.rel_files()]
    with open(os.path.join(work, "site.yaml"), "w") as fh:
        fh.writelines(lines)
    base = f"{shlex.quote(opsagent_venv() + '/bin/opsagent')} apply site.yaml"
    return {"cold": base, "warm": base, "check": base + " --check"}


RECAP = re.compile(r"^RECAP (\S+) (\S+): ok=(\d+) changed=(\d+) failed=(\d+) skipped=(\d+) "
                   r"\(([\d.]+)s\)\s*$", re.M)


def check_opsagent_log(log, phase, runs):
    with open(log) as fh:
        text = fh.read()
    recaps = RECAP.findall(text)
    if len(recaps) != runs or text.count("RECAP ") != runs:
        raise SystemExit(f"S1 verify: {log}: {len(recaps)} well-formed RECAP lines "
                         f"({text.count('RECAP ')} in all), want {runs}")
    want = ((0, N_OPS, 0, 0) if phase == "cold" else (N_OPS, 0, 0, 0))
    for host, name, ok, changed, failed, skipped, _took in recaps:
        got = (int(ok), int(changed), int(failed), int(skipped))
        if name != PLAYBOOK_NAME or got != want:
            raise SystemExit(f"S1 verify: {log}: RECAP {host} {name}: ok={ok} changed={changed} "
                             f"failed={failed} skipped={skipped}, want ok={want[0]} "
                             f"changed={want[1]} failed=0 skipped=0 for phase {phase}")


TOOLS = dict(peer.TOOLS)
TOOLS["opsagent"] = (setup_opsagent, check_opsagent_log, 1)   # warm-up runs: 1, as pyinfra
EXIT_CODES = re.compile(r"^A exit codes: \[([\d, -]*)\]", re.M)
RATIO_PEERS = ("pyinfra", "ansible")


def check_exit_codes(tool, phase, timer_out, out_file):
    """Exit codes of the counted runs, if the timer reports them (wholeproc.py does)."""
    m = EXIT_CODES.search(timer_out)
    if m is None:
        sys.stderr.write(f"# {tool} {phase}: timer reports no exit codes; not checked\n")
        return
    rcs = [int(x) for x in m.group(1).replace(" ", "").split(",") if x]
    if any(rcs):
        raise SystemExit(f"S1 verify: {tool} {phase}: exit codes {rcs}, want all 0 "
                         f"(timer output in {out_file})")


# ---------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tools", default="opsagent,pyinfra")
    ap.add_argument("--phases", default="cold,warm,check")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    a = ap.parse_args()
    tools = a.tools.split(",")
    phases = a.phases.split(",")
    for t in tools:
        if t not in TOOLS:
            ap.error(f"unknown tool {t!r} (known: {', '.join(TOOLS)})")
    for p in phases:
        if p not in ("cold", "warm", "check"):
            ap.error(f"unknown phase {p!r}")
    if "opsagent" in tools and not os.access(opsagent_venv() + "/bin/opsagent", os.X_OK):
        sys.exit(f"{opsagent_venv()}/bin/opsagent not found (set OPSAGENT_VENV)")
    os.environ["PEERS_DIR"] = PEERS_DIR        # the re-exec'd script finds the same kit
    isolate_network(__file__)

    venv = os.environ.get("PEERS_VENV", "/tmp/peers-venv")
    root = os.environ.get("BENCH_ROOT", "/tmp/bench")
    os.makedirs(root, exist_ok=True)
    results_dir = os.path.join(root, "results")
    os.makedirs(results_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="s1-", dir=root)
    env = dict(os.environ, HOME=os.path.join(work, "home"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_RETRY_FILES_ENABLED="0", PYTHONUNBUFFERED="1", NO_COLOR="1",
               OPSAGENT_STATE_DIR=os.path.join(work, "opsagent-state"))
    os.makedirs(env["HOME"])
    src = os.path.join(work, "src")
    peer.make_source(src)
    medians = {}        # (tool, phase) -> {"wall": median, "cpu": median}
    try:
        for tool in tools:
            setup, check_log, warmup = TOOLS[tool]
            tdir = os.path.join(work, tool)
            os.makedirs(tdir)
            dst = os.path.join(tdir, "target")
            cmds = setup(tdir, src, dst, venv)
            before = None
            for phase in phases:
                if phase != "cold" and not os.path.isdir(dst):
                    # converge once, untimed, so warm/check start from the desired state
                    subprocess.run(shlex.split(cmds["cold"]), env=env, cwd=tdir,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
                if phase != "cold":
                    before = peer.verify_tree(dst)
                log = os.path.join(tdir, f"{phase}.log")
                pre = f"rm -rf {shlex.quote(dst)} && " if phase == "cold" else ""
                cmd = ["sh", "-c", f"{pre}cd {shlex.quote(tdir)} && "
                       f"exec {cmds[phase]} >>{shlex.quote(log)} 2>&1"]
                out_file = os.path.join(results_dir, f"s1-{tool}-{phase}.txt")
                t0 = time.time()
                rows, timer_out = peer.timed(cmd, a.runs, warmup, out_file, env)
                if tool == "opsagent":
                    check_exit_codes(tool, phase, timer_out, out_file)
                check_log(log, phase, a.runs + warmup)
                after = peer.verify_tree(dst)
                if before is not None and after != before:
                    raise SystemExit(f"S1 verify: {tool} {phase} rewrote files (mtime changed)")
                for key, metric, unit in (("wall s", "wall", "s"), ("cpu s", "cpu", "s"),
                                          ("peak MiB", "peak_rss", "MiB")):
                    mn, med, mx = rows[key]
                    print(f"RESULT scenario={SCENARIO} tool={tool} phase={phase} "
                          f"metric={metric}_median value={med} unit={unit} min={mn} max={mx} "
                          f"runs={a.runs} warmup={warmup}", flush=True)
                medians[(tool, phase)] = {"wall": rows["wall s"][1], "cpu": rows["cpu s"][1]}
                sys.stderr.write(f"# {tool} {phase}: {time.time() - t0:.0f} s, verified; timer "
                                 f"output in {out_file}\n")
        for other in RATIO_PEERS:
            for phase in phases:
                ours, theirs = medians.get(("opsagent", phase)), medians.get((other, phase))
                if ours is None or theirs is None:
                    continue
                for metric in ("wall", "cpu"):
                    value = (f"{ours[metric] / theirs[metric]:.4f}" if theirs[metric] > 0
                             else "nan")
                    print(f"RESULT scenario={SCENARIO} tool=opsagent phase={phase} "
                          f"metric={metric}_ratio_vs_{other} value={value}", flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            sys.stderr.write(f"# scratch kept in {work}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

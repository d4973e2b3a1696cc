"""The command line end to end: real files, real exit codes, the report document."""

from __future__ import annotations

import json
import os
import pathlib
import pty
import re
import shutil
import stat
import subprocess
import sys
import tempfile

import jsonschema
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
OPSAGENT = [sys.executable, "-m", "agent.cli"]
RECAP = re.compile(r"^RECAP \S+ (\S+): ok=(\d+) changed=(\d+) failed=(\d+) skipped=(\d+)", re.M)


def opsagent(*args, user=None, cwd=None):
    cmd = [*OPSAGENT, *map(str, args)]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("NO_COLOR", None)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def recap(stdout):
    m = RECAP.search(stdout)
    assert m, stdout
    return {"ok": int(m[2]), "changed": int(m[3]), "failed": int(m[4]), "skipped": int(m[5])}


def snapshot(root):
    """path -> (mode, mtime_ns, content) of every entry below root."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            content = pathlib.Path(p).read_bytes() if stat.S_ISREG(st.st_mode) else None
            out[os.path.relpath(p, root)] = (stat.S_IMODE(st.st_mode), st.st_mtime_ns, content)
    return out


@pytest.fixture
def tree(tmp_path):
    """A playbook converging a small tree like the S1 benchmark's, from source files."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    lines = ["name: tree", "files:"]
    for d in range(3):
        lines.append(f"  - {{path: {dst}/d{d}, state: directory, mode: '0750'}}")
    for i in range(9):
        (src / f"f{i}.conf").write_text(f"# file {i}\nkey = value-{i}\n")
        lines.append(f"  - {{path: {dst}/d{i % 3}/f{i}.conf, source: {src}/f{i}.conf, "
                     "mode: '0640'}")
    lines.append(f"  - path: {dst}/secret.env")
    lines.append("    content: \"TOKEN=very-secret-value\\n\"")
    lines.append("    mode: '0600'")
    pb = tmp_path / "tree.yaml"
    pb.write_text("\n".join(lines) + "\n")
    return pb, dst


def test_version():
    p = opsagent("--version")
    assert p.returncode == 0 and p.stdout.strip().startswith("opsagent 0.")


def test_apply_converges_and_a_second_apply_changes_nothing(tree):
    pb, dst = tree
    first = opsagent("apply", pb)
    assert first.returncode == 0, first.stdout + first.stderr
    assert recap(first.stdout) == {"ok": 0, "changed": 13, "failed": 0, "skipped": 0}
    assert stat.S_IMODE(os.stat(dst / "d1").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(dst / "d1" / "f4.conf").st_mode) == 0o640
    assert (dst / "d1" / "f4.conf").read_text() == "# file 4\nkey = value-4\n"
    before = snapshot(dst)
    second = opsagent("apply", pb)
    assert second.returncode == 0
    assert recap(second.stdout) == {"ok": 13, "changed": 0, "failed": 0, "skipped": 0}
    assert snapshot(dst) == before  # content, mode and mtime untouched


def test_check_and_plan_show_drift_and_change_nothing(tree):
    pb, dst = tree
    assert opsagent("apply", pb).returncode == 0
    assert opsagent("plan", pb).returncode == 0
    os.chmod(dst / "secret.env", 0o644)
    (dst / "d0" / "f0.conf").write_text("edited by hand\n")
    (dst / "d2" / "f5.conf").unlink()
    before = snapshot(dst)
    for args in (("apply", pb, "--check"), ("plan", pb)):
        p = opsagent(*args)
        assert p.returncode == 3, p.stdout + p.stderr
        assert recap(p.stdout)["changed"] == 3
        assert f"would change files:{dst}/secret.env" in p.stdout
        assert "~ mode: 0644 -> 0600" in p.stdout
        assert snapshot(dst) == before
    fix = opsagent("apply", pb)
    assert fix.returncode == 0 and recap(fix.stdout)["changed"] == 3
    assert opsagent("plan", pb).returncode == 0


def test_diff_shows_a_unified_diff(tree):
    pb, dst = tree
    opsagent("apply", pb)
    (dst / "d0" / "f0.conf").write_text("# file 0\nkey = edited\n")
    p = opsagent("plan", pb, "--diff")
    assert p.returncode == 3
    assert "-key = edited" in p.stdout and "+key = value-0" in p.stdout
    no_diff = opsagent("plan", pb)
    assert "+key = value-0" not in no_diff.stdout


def test_json_report_matches_the_schema_and_holds_no_content(tree):
    pb, dst = tree
    p = opsagent("apply", pb, "--json")
    assert p.returncode == 0
    report = json.loads(p.stdout)
    schema = json.loads((ROOT / "schemas" / "report.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(report)
    assert report["mode"] == "apply" and report["summary"]["changed"] == 13
    assert report["playbook"]["revision"].startswith("sha256:")
    assert len(report["results"]) == 13
    assert "very-secret-value" not in p.stdout
    check = json.loads(opsagent("apply", pb, "--check", "--json").stdout)
    assert check["mode"] == "check" and check["summary"]["ok"] == 13
    assert check["id"] != report["id"]


def test_a_resource_that_cannot_converge_exits_4(tmp_path):
    pb = tmp_path / "pb.yaml"
    pb.write_text(f"name: x\nfiles:\n  - {{path: {tmp_path}/a, content: x, "
                  "owner: no-such-user-opsagent}\n  - {path: " + f"{tmp_path}/b, content: y}}\n")
    p = opsagent("apply", pb)
    assert p.returncode == 4
    assert "no-such-user-opsagent" in p.stdout
    assert recap(p.stdout) == {"ok": 0, "changed": 1, "failed": 1, "skipped": 0}
    assert (tmp_path / "b").read_text() == "y"


def test_bad_extra_vars_are_input_errors(tree):
    pb, _ = tree
    p = opsagent("apply", pb, "-e", "not a pair")
    assert p.returncode == 2 and "expected NAME=VALUE" in p.stderr


def test_extra_vars_as_json_and_file(tmp_path):
    (tmp_path / "vars.yaml").write_text("who: file\n")
    pb = tmp_path / "pb.yaml"
    pb.write_text(f"name: x\nfiles:\n  - {{path: {tmp_path}/out, content: "
                  "'{{ who }} {{ n }}'}\n")
    p = opsagent("apply", pb, "-e", f"@{tmp_path}/vars.yaml", "-e", '{"n": 3}')
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "out").read_text() == "file 3"


def test_fast_start_imports_nothing_heavy(tree):
    pb, _ = tree
    code = (
        "import sys\nfrom agent.cli import main\n"
        f"assert main(['validate', {str(pb)!r}]) == 0\n"
        f"assert main(['apply', {str(pb)!r}]) == 0\n"
        "heavy = {'docker', 'dbus_fast', 'httpx', 'requests', 'paramiko', 'uvicorn',\n"
        "         'starlette', 'fastapi', 'sqlalchemy', 'psycopg', 'rich'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy\n"
        "             or m.startswith('agent.collector')))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "[]"
    version = subprocess.run(
        [sys.executable, "-c", "import sys; from agent.cli import main\n"
         "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
         "print(sorted(m for m in sys.modules if m.split('.')[0] in "
         "{'pydantic', 'jsonschema', 'jinja2', 'psutil', 'yaml'}))"],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert version.stdout.strip().splitlines()[-1] == "[]"


def test_colour_only_on_a_terminal(tree):
    pb, _ = tree
    piped = opsagent("plan", pb)
    assert piped.returncode == 3 and "\x1b[" not in piped.stdout
    leader, follower = pty.openpty()
    proc = subprocess.Popen([*OPSAGENT, "plan", str(pb)], stdout=follower, stderr=follower,
                            env={k: v for k, v in dict(os.environ, PYTHONPATH=str(ROOT)).items()
                                 if k != "NO_COLOR"})
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=60)
    os.close(leader)
    assert b"\x1b[" in out


@pytest.fixture
def nobody_dir():
    """A directory owned by nobody that nobody can reach (pytest's tmp_path is 0700 root)."""
    base = tempfile.mkdtemp(prefix="opsagent-nobody-", dir="/tmp")
    os.chmod(base, 0o755)
    home = pathlib.Path(base) / "home"
    home.mkdir()
    os.chown(home, 65534, 65534)
    yield home
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="switching to an unprivileged user needs root and setpriv")
def test_as_an_unprivileged_user(nobody_dir):
    home = nobody_dir
    pb = home / "pb.yaml"
    pb.write_text(f"name: x\nfiles:\n  - {{path: {home}/mine.conf, content: a, mode: '0600'}}\n"
                  f"  - {{path: {home}/rootowned.conf, content: b, owner: root}}\n")
    os.chown(pb, 65534, 65534)
    p = opsagent("apply", pb, user=65534, cwd=home)
    assert p.returncode == 4, p.stdout + p.stderr
    assert os.stat(home / "mine.conf").st_uid == 65534
    assert "permission" in p.stdout.lower()
    assert not (home / "rootowned.conf").exists()
    leftovers = [n for n in os.listdir(home) if n.startswith(".")]
    assert leftovers == []  # no temp file left behind by the refused write

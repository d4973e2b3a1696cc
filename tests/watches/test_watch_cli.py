"""`opsagent watch test LOGFILE PLAYBOOK`: fail2ban-regex's report for a playbook's watches,
with what the watch would have fired, the same with one worker or several."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def opsagent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))


def auth_log(path: Path) -> None:
    """Attacker 192.0.2.1 fails 6 times within 10 minutes (fires at its 5th), 192.0.2.2
    fails 5 times an hour apart (never 5 within 1h), 192.0.2.3 twice; benign lines between."""
    lines = []
    def at(sec: int) -> str:
        return f"Mar 14 {sec // 3600:02d}:{sec // 60 % 60:02d}:{sec % 60:02d} web01"
    events = [(60 * i, "192.0.2.1") for i in range(6)]
    events += [(3600 * i + 30, "192.0.2.2") for i in range(5)]
    events += [(100, "192.0.2.3"), (200, "192.0.2.3")]
    for n, (sec, ip) in enumerate(sorted(events)):
        lines.append(f"{at(sec)} sshd[{100 + n}]: Failed password for invalid user u{n} "
                     f"from {ip} port {4000 + n} ssh2")
        lines.append(f"{at(sec)} sshd[{500 + n}]: Accepted publickey for deploy from "
                     f"198.51.100.1 port 22 ssh2: ED25519 SHA256:x")
    path.write_text("\n".join(lines) + "\n")


def playbook(path: Path, extra: str = "") -> Path:
    path.write_text(f"""name: t
watches:
  - name: sshd
    log: /var/log/auth.log
    pattern: {{fail2ban_filter: /etc/fail2ban/filter.d/sshd.conf}}
    key: ip
    threshold: 5
    within: 1h
  - name: plain
    log: /var/log/auth.log
    pattern: 'Failed password for .* from (?P<ip>\\S+) port'
    ignore: ['from 192\\.0\\.2\\.3 ']
    key: ip
    threshold: 2
    within: 5m
{extra}""")
    return path


def test_report_and_firings(tmp_path: Path) -> None:
    log = tmp_path / "auth.log"
    auth_log(log)
    pb = playbook(tmp_path / "pb.yaml")
    r = opsagent("watch", "test", str(log), str(pb), "--json")
    assert r.returncode == 0, r.stderr
    sshd, plain = json.loads(r.stdout)
    assert (sshd["lines"], sshd["matched"], sshd["missed"]) == (26, 13, 13)
    assert sshd["keys"] == 3 and sshd["fired"] == 1
    assert sshd["firings"][0]["key"] == "192.0.2.1" and sshd["firings"][0]["matches"] == 5
    assert sshd["hits"][0]["index"] == 4 and sshd["hits"][0]["hits"] == 13
    assert {t["key"]: t["matches"] for t in sshd["top"]} == \
        {"192.0.2.1": 6, "192.0.2.2": 5, "192.0.2.3": 2}
    # 192.0.2.1 fails every minute: 2 within 5m fire at its 2nd, 4th and 6th; .3 is ignored
    assert (plain["matched"], plain["ignored"], plain["fired"]) == (11, 2, 3)
    assert plain["prefilter"] in ("hyperscan", "bytes.find")
    text = opsagent("watch", "test", str(log), str(pb))
    assert "Lines: 26 lines, 0 ignored, 13 matched, 13 missed" in text.stdout
    assert "would fire 1 times for 1 keys" in text.stdout


def test_workers_give_the_same_answer(tmp_path: Path) -> None:
    log = tmp_path / "auth.log"
    auth_log(log)
    body = log.read_bytes()
    log.write_bytes(body * 200)  # the same day 200 times over: windows across the cuts
    pb = playbook(tmp_path / "pb.yaml")
    one = opsagent("watch", "test", str(log), str(pb), "--json", "--jobs", "1")
    three = opsagent("watch", "test", str(log), str(pb), "--json", "--jobs", "3")
    assert one.returncode == three.returncode == 0, one.stderr + three.stderr
    assert json.loads(one.stdout) == json.loads(three.stdout)
    assert json.loads(one.stdout)[0]["matched"] == 13 * 200


def test_bad_input(tmp_path: Path) -> None:
    log = tmp_path / "auth.log"
    auth_log(log)
    pb = playbook(tmp_path / "pb.yaml")
    missing = opsagent("watch", "test", str(tmp_path / "nope.log"), str(pb))
    assert missing.returncode == 2 and "nope.log" in missing.stderr
    none = opsagent("watch", "test", str(log), str(pb), "--watch", "other")
    assert none.returncode == 2 and "no watch named other" in none.stderr
    bad = playbook(tmp_path / "bad.yaml", """  - name: broken
    log: /var/log/x
    pattern: {fail2ban_filter: /etc/fail2ban/filter.d/does-not-exist.conf}
""")
    r = opsagent("watch", "test", str(log), str(bad))
    assert r.returncode == 2
    assert "bad.yaml:" in r.stderr and "no such fail2ban filter file" in r.stderr
    assert "Traceback" not in r.stderr

"""Playbooks pulled from a local git repository: a new commit is enforced, a bad commit is
refused while the previous revision keeps being enforced, and with allowed_signers only
signed commits count."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.service.agentproc import AgentProc, alive, read_pid, wait_for

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid",
           "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_SYSTEM": "/dev/null"}


def git(repo, *args: str) -> str:
    p = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                       env={**os.environ, **GIT_ENV}, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def commit(repo, files: dict[str, str], message: str, *sign: str) -> str:
    for name, text in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    git(repo, "add", "-A")
    git(repo, *sign, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def playbook(root, mark, content: str) -> str:
    return f"""\
        name: from-git
        files:
          - {{path: {root}/managed.conf, content: "{content}\\n"}}
        processes:
          - name: sleeper
            match: {{pidfile: {root}/sleeper.pid}}
            start: [{sys.executable}, -c, "import time; time.sleep(10**6)", {mark}]
            pidfile: {root}/sleeper.pid
            restart: {{max: 10, within: 1m, backoff: 0s}}
        """


@pytest.fixture
def repo(tmp_path):
    r = tmp_path / "origin"
    r.mkdir()
    git(r, "init", "-q", "-b", "main")
    return r


def git_agent(tmp_path, repo, extra: str = "") -> AgentProc:
    return AgentProc(tmp_path, config=f"""\
        playbooks:
          git: {{url: {repo}, branch: main, path: hosts/web, interval: 1h{extra}}}
        state_dir: state
        log_format: json
        """)


def test_a_bad_commit_is_refused_and_the_previous_revision_is_enforced(tmp_path, repo, mark):
    good = commit(repo, {"hosts/web/site.yaml": playbook(tmp_path, mark, "v1")}, "v1")
    agent = git_agent(tmp_path, repo)
    try:
        agent.start()
        assert agent.status()["revision"] == f"git:{good}"
        conf = tmp_path / "managed.conf"
        assert conf.read_text() == "v1\n"

        bad = commit(repo, {"hosts/web/site.yaml": playbook(tmp_path, mark, "v2").replace(
            "content:", "contnet:")}, "typo")
        agent.signal(signal.SIGHUP)  # pull now
        rejected = wait_for(lambda: agent.status().get("rejected"), 15, "the refusal")
        assert rejected["revision"] == f"git:{bad}"
        assert "site.yaml:" in rejected["message"] and "contnet" in rejected["message"]
        assert agent.status()["revision"] == f"git:{good}"
        assert f"refused; still enforcing git:{good[:12]}" in agent.log_text()
        # the previous revision is still enforced: a drifted file and a killed process
        conf.write_text("edited\n")
        wait_for(lambda: conf.read_text() == "v1\n", 5, "the file repaired by the old revision")
        old = read_pid(tmp_path / "sleeper.pid")
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: (p := read_pid(tmp_path / "sleeper.pid")) != old and alive(p), 5,
                 "a restart under the old revision")

        fixed = commit(repo, {"hosts/web/site.yaml": playbook(tmp_path, mark, "v3")}, "fix")
        agent.signal(signal.SIGHUP)
        wait_for(lambda: conf.read_text() == "v3\n", 15, "the fixed revision")
        wait_for(lambda: agent.status()["revision"] == f"git:{fixed}", 5, "the status")
        assert agent.status()["rejected"] is None
        assert agent.stop() == 0
    finally:
        if agent.proc and agent.proc.poll() is None:
            agent.proc.kill()


def test_only_commits_signed_by_an_allowed_key_are_enforced(tmp_path, repo, mark):
    keys = tmp_path / "keys"
    keys.mkdir()
    for who in ("ops", "intruder"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", who, "-f",
                        str(keys / who)], check=True)
    pub = (keys / "ops.pub").read_text().split()
    (tmp_path / "allowed_signers").write_text(f"ops@example.invalid {pub[0]} {pub[1]}\n")

    def signed(who: str) -> tuple[str, ...]:
        return ("-c", "gpg.format=ssh", "-c", f"user.signingkey={keys / who}",
                "-c", "commit.gpgsign=true")

    good = commit(repo, {"hosts/web/site.yaml": playbook(tmp_path, mark, "signed")}, "ok",
                  *signed("ops"))
    agent = git_agent(tmp_path, repo, ", allowed_signers: allowed_signers")
    try:
        agent.start()
        assert agent.status()["revision"] == f"git:{good}"
        conf = tmp_path / "managed.conf"
        assert conf.read_text() == "signed\n"
        for n, sign in enumerate((signed("intruder"), ())):
            sneaky = commit(repo, {"hosts/web/site.yaml": playbook(tmp_path, mark, f"evil{n}")},
                            "sneaky", *sign)
            agent.signal(signal.SIGHUP)
            wait_for(lambda s=sneaky: (agent.status().get("rejected") or {}).get("revision")
                     == f"git:{s}", 15, "the refusal of an unsigned or foreign commit")
            assert conf.read_text() == "signed\n"
            assert agent.status()["revision"] == f"git:{good}"
            assert "is not signed by an allowed key" in agent.status()["rejected"]["message"]
        assert agent.stop() == 0
    finally:
        if agent.proc and agent.proc.poll() is None:
            agent.proc.kill()

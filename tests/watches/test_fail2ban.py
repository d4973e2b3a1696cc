"""Stock fail2ban filters read unchanged, and judged the way fail2ban judges: the addresses
found in a varied sshd log are exactly those fail2ban-regex finds (first matching failregex
decides, as in the fail2ban daemon: ``--no-check-all``), in every mode of the filter."""

from __future__ import annotations

import collections
import glob
import os
import shutil
import subprocess

import pytest

from agent.playbook.models.rules import WatchSpec
from agent.watches.fail2ban import FilterError, load_filter
from agent.watches.matcher import Matcher, ScanStats, compile_watch
from tests.watches.corpus import sshd_log

SSHD = "/etc/fail2ban/filter.d/sshd.conf"
F2B_REGEX = shutil.which("fail2ban-regex") or "/usr/bin/fail2ban-regex"


def watch(options: dict[str, str] | None = None, path: str = SSHD, **kw: object) -> WatchSpec:
    pattern: dict[str, object] = {"fail2ban_filter": path}
    if options:
        pattern["options"] = options
    return WatchSpec.model_validate({"name": "w", "log": "/x", "pattern": pattern, **kw})


def our_addresses(buf: bytes, spec: WatchSpec) -> collections.Counter[str]:
    matcher = Matcher(compile_watch(spec))
    found = matcher.scan(buf, ScanStats())
    return collections.Counter(v for lm in found if lm.counts
                               for v in [lm.value("ip")] if v is not None)


def fail2ban_addresses(path: str, filt: str) -> collections.Counter[str]:
    out = subprocess.run([F2B_REGEX, "--no-check-all", "-o", "ip", path, filt],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return collections.Counter(line.strip() for line in out.splitlines() if line.strip())


def test_sshd_filter_resolves_like_fail2ban() -> None:
    flt = load_filter(SSHD)
    assert len(flt.failregex) == 22
    assert flt.prefregex and "%(" not in flt.prefregex and "<__" not in flt.prefregex
    assert flt.prefregex.startswith("^<F-MLFID>(?:\\[\\])?\\s*")
    assert all("<HOST>" in r or "ROOT" in r or "Disconnecting" in r or "account is locked" in r
               for r in flt.failregex)
    assert flt.datepattern == "{^LN-BEG}"
    aggressive = load_filter(SSHD, {"mode": "aggressive"})
    assert len(aggressive.failregex) > len(flt.failregex)
    assert any("Did not receive identification string" in r for r in aggressive.failregex)
    assert not any("Did not receive identification string" in r for r in flt.failregex)


@pytest.mark.parametrize("mode", ["normal", "ddos", "extra", "aggressive"])
def test_same_addresses_as_fail2ban_regex(tmp_path, mode: str) -> None:
    log = tmp_path / "auth.log"
    log.write_bytes(sshd_log())
    ours = our_addresses(log.read_bytes(), watch({"mode": mode}))
    theirs = fail2ban_addresses(str(log), f"{SSHD}[mode={mode}]")
    assert sum(theirs.values()) > 20
    assert ours == theirs


def test_publickey_parameter(tmp_path) -> None:
    log = tmp_path / "auth.log"
    log.write_bytes(sshd_log(copies=1))
    for value in ("nofail", "invalid", "any", "ignore"):
        ours = our_addresses(log.read_bytes(), watch({"publickey": value}))
        assert ours == fail2ban_addresses(str(log), f"{SSHD}[publickey={value}]"), value


def test_every_stock_filter_loads_or_is_refused_clearly() -> None:
    loaded = refused = 0
    for path in sorted(glob.glob("/etc/fail2ban/filter.d/*.conf")):
        try:
            compile_watch(watch(path=path))
            loaded += 1
        except FilterError as e:
            assert str(e).startswith(path), e
            refused += 1
    assert loaded > 50, (loaded, refused)


def test_local_overrides_and_includes(tmp_path) -> None:
    d = tmp_path / "filter.d"
    d.mkdir()
    (d / "common.conf").write_text("[DEFAULT]\n_daemon = \\S*\n__prefix = <_daemon>:\\s\n")
    (d / "app.conf").write_text(
        "[INCLUDES]\nbefore = common.conf\n\n[Definition]\n_daemon = app\n"
        "failregex = ^%(__prefix)sbad login from <HOST>$\n"
        "            ^%(__prefix)s<word> from <ADDR>$\n"
        "word = denied\nignoreregex =\n")
    (d / "app.local").write_text("[Definition]\nword = refused\n")
    flt = load_filter(str(d / "app.conf"))
    assert flt.failregex[0] == "^app:\\sbad login from <HOST>$"
    assert flt.failregex[1] == "^app:\\srefused from <ADDR>$"
    spec = watch(path=str(d / "app.conf"))
    log = b"app: refused from 192.0.2.1\napp: denied from 192.0.2.2\napp: bad login from ::1\n"
    assert our_addresses(log, spec) == {"192.0.2.1": 1, "::1": 1}


def test_bad_filters_are_refused_with_the_file_named(tmp_path) -> None:
    with pytest.raises(FilterError, match="no such fail2ban filter"):
        load_filter(str(tmp_path / "missing.conf"))
    multi = tmp_path / "multi.conf"
    multi.write_text("[Definition]\nfailregex = ^a <HOST>$\nmaxlines = 2\n")
    with pytest.raises(FilterError, match="multi-line filters"):
        load_filter(str(multi))
    loop = tmp_path / "loop.conf"
    loop.write_text("[Definition]\na = %(b)s\nb = %(a)s\nfailregex = %(a)s <HOST>\n")
    with pytest.raises(FilterError, match="too deep"):
        load_filter(str(loop))
    with pytest.raises(FilterError, match="no parameter bogus"):
        load_filter(SSHD, {"bogus": "1"})
    broken = tmp_path / "broken.conf"
    broken.write_text("[Definition]\nfailregex = ^(unclosed <HOST>\n")
    with pytest.raises(FilterError, match="does not compile"):
        compile_watch(watch(path=str(broken)))
    assert os.path.exists(SSHD)


MULTILINE_SESSIONS = """\
Mar 14 00:00:01 web01 sshd[500]: Disconnecting: Too many authentication failures [preauth]
Mar 14 00:00:01 web01 sshd[500]: Connection closed by authenticating user root 203.0.113.50 port 2222 [preauth]
Mar 14 00:00:02 web01 sshd[501]: Connection closed by authenticating user root 203.0.113.51 port 2222 [preauth]
Mar 14 00:00:03 web01 sshd[502]: Connection from 203.0.113.52 port 4444 on 10.0.0.1 port 22
Mar 14 00:00:04 web01 sshd[502]: Disconnecting: Too many authentication failures [preauth]
Mar 14 00:00:05 web01 sshd[503]: Failed password for root from 203.0.113.53 port 1 ssh2
Mar 14 00:00:06 web01 sshd[503]: Accepted password for root from 203.0.113.53 port 1 ssh2
Mar 14 00:00:07 web01 sshd[504]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=203.0.113.54  user=root
Mar 14 00:00:07 web01 sshd[504]: Failed password for root from 203.0.113.54 port 1 ssh2
Mar 14 00:00:08 web01 sshd[505]: Disconnecting: Too many authentication failures [preauth]
"""


@pytest.mark.parametrize("mode", ["normal", "aggressive"])
def test_a_failure_without_address_takes_its_connections(tmp_path, mode: str) -> None:
    """fail2ban's mlfid: "Disconnecting: Too many authentication failures" names no address;
    another line of the same sshd[PID] (before or after it) does."""
    log = tmp_path / "auth.log"
    log.write_text(MULTILINE_SESSIONS)
    ours = our_addresses(log.read_bytes(), watch({"mode": mode}))
    theirs = fail2ban_addresses(str(log), f"{SSHD}[mode={mode}]")
    assert theirs["203.0.113.50"] == 1 and theirs["203.0.113.52"] == 1
    assert ours == theirs
    # the same lines arriving one at a time (a followed log): the address comes later
    m = Matcher(compile_watch(watch({"mode": mode})))
    found = []
    for line in MULTILINE_SESSIONS.splitlines(keepends=True):
        found += [lm.value("ip") for lm in m.scan(line.encode(), ScanStats()) if lm.counts]
    assert collections.Counter(found) == theirs

"""Log lines for the watch tests: the sshd messages fail2ban's sshd filter knows (failures,
NOFAIL helpers, aggressive-mode ones), benign lines, and hostile ones."""

from __future__ import annotations

import random

SSHD_LINES = [
    "Failed password for root from 203.0.113.5 port 22 ssh2",
    "Failed password for invalid user admin from 2001:db8::7 port 2222 ssh2",
    "Failed password for invalid user x; rm -rf / from 203.0.113.12 port 9 ssh2",
    "Failed password for $(reboot) from 203.0.113.13 port 9 ssh2",
    "Failed password for invalid user  from 203.0.113.20 port 40 ssh2",
    "Failed none for invalid user guest from 203.0.113.21 port 41 ssh2",
    "Failed keyboard-interactive/pam for root from 203.0.113.22 port 42 ssh2",
    "Failed publickey for invalid user bob from 203.0.113.11 port 8888 ssh2: RSA SHA256:xyz",
    "Failed publickey for alice from 198.51.100.2 port 8889 ssh2: ED25519 SHA256:abc",
    "Invalid user oracle from 203.0.113.6 port 4444",
    "Invalid user  from 203.0.113.23 port 4445",
    "Illegal user test from 203.0.113.24",
    "error: maximum authentication attempts exceeded for root from 203.0.113.9 port 7777 ssh2 "
    "[preauth]",
    "Disconnecting: Too many authentication failures [preauth]",
    "User nobody from 203.0.113.10 not allowed because not listed in AllowUsers",
    "User www from 203.0.113.25 not allowed because listed in DenyUsers",
    "User games from 203.0.113.26 not allowed because none of user's groups are listed in "
    "AllowGroups",
    "ROOT LOGIN REFUSED FROM 203.0.113.27",
    "refused connect from host.example (203.0.113.28)",
    "Received disconnect from 203.0.113.29 port 22:3: com.jcraft.jsch.JSchException: Auth fail "
    "[preauth]",
    "error: PAM: Authentication failure for root from 203.0.113.30",
    "pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= "
    "rhost=203.0.113.8  user=root",
    "Accepted publickey for deploy from 198.51.100.1 port 5555 ssh2: ED25519 SHA256:abc",
    "Accepted password for alice from 198.51.100.3 port 5556 ssh2",
    "Connection closed by authenticating user root 203.0.113.7 port 6666 [preauth]",
    "Connection closed by 203.0.113.31 port 6667 [preauth]",
    "Connection reset by 203.0.113.32 port 6668",
    "Disconnected from invalid user foo 203.0.113.33 port 6669 [preauth]",
    "Received disconnect from 198.51.100.4 port 6670:11: disconnected by user",
    "Unable to negotiate with 203.0.113.14 port 1234: no matching key exchange method found.",
    "Did not receive identification string from 203.0.113.15 port 1",
    "Bad protocol version identification 'GET / HTTP/1.1' from 203.0.113.34 port 5",
    "banner exchange: Connection from 203.0.113.35 port 6: invalid format",
    "pam_unix(sshd:session): session opened for user deploy(uid=1000) by (uid=0)",
    "Server listening on 0.0.0.0 port 22.",
    "Failed password for invalid user \udcff\udcfe from 203.0.113.36 port 7 ssh2",
    "Failed password for root from ::ffff:203.0.113.37 port 8 ssh2",
    "Failed password for root from fe80::1%eth0 port 9 ssh2",
    "Failed password for root from 999.1.1.1 port 10 ssh2",
    "Failed password for root from 127.0.0.1 port 11 ssh2",
    "Failed password for " + "A" * 5000 + " from 203.0.113.38 port 12 ssh2",
]


def sshd_log(seed: int = 7, copies: int = 3) -> bytes:
    """Every corpus message a few times, shuffled, as syslog lines of one day, with other
    daemons' lines between them (and one long line, and one that is not UTF-8)."""
    rng = random.Random(seed)
    messages = SSHD_LINES * copies + ["CRON[9]: pam_unix(cron:session): session closed"] * 20
    rng.shuffle(messages)
    out = []
    for i, msg in enumerate(messages):
        sec = i * 7
        stamp = f"Mar 14 {sec // 3600 % 24:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}"
        daemon = "" if msg.startswith("CRON") else f"sshd[{1000 + i}]: "
        line = f"{stamp} web01 {daemon}{msg}"
        out.append(line.encode("utf-8", "surrogateescape"))
    out.insert(5, b"Mar 14 00:00:35 web01 kernel: " + b"x" * (1 << 20))
    out.insert(9, b"Mar 14 00:01:03 web01 sshd[77]: Failed password for root from "
                  b"203.0.113.39 port 1 ssh2 \xff\xfe")
    return b"\n".join(out) + b"\n"

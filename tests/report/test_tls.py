"""Mutual TLS between the sender and the collector, with certificates made by openssl."""

from __future__ import annotations

import subprocess
from pathlib import Path

from agent.report.outbox import Outbox
from agent.report.sender import Sender
from tests.harness.collector import CollectorProc
from tests.harness.reports import run_report


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_pki(d: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it."""
    p = {k: str(d / k) for k in ("ca.key", "ca.pem", "srv.key", "srv.csr", "srv.pem",
                                 "cli.key", "cli.csr", "cli.pem", "san.ext")}
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", p["ca.key"],
            "-out", p["ca.pem"], "-days", "2", "-subj", "/CN=opsagent test CA")
    Path(p["san.ext"]).write_text("subjectAltName=IP:127.0.0.1\n")
    for who, cn in (("srv", "127.0.0.1"), ("cli", "web01")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", p[f"{who}.key"],
                "-out", p[f"{who}.csr"], "-subj", f"/CN={cn}")
        openssl("x509", "-req", "-in", p[f"{who}.csr"], "-CA", p["ca.pem"], "-CAkey",
                p["ca.key"], "-CAcreateserial", "-out", p[f"{who}.pem"], "-days", "2",
                *(["-extfile", p["san.ext"]] if who == "srv" else []))
    return p


def test_reports_go_over_mutual_tls_and_a_client_without_a_certificate_is_refused(tmp_path):
    pki = make_pki(tmp_path)
    coll = CollectorProc(str(tmp_path / "c.db"), tmp_path / "c.log", verify=pki["ca.pem"],
                         extra=("--tls-cert", pki["srv.pem"], "--tls-key", pki["srv.key"],
                                "--tls-client-ca", pki["ca.pem"])).start()
    try:
        assert coll.url.startswith("https://")
        token = tmp_path / "token"
        token.write_text(coll.token("web01"))
        anonymous = Outbox(str(tmp_path / "anon"), "web01", "test")
        anonymous.put(run_report("web01"))
        refused = Sender(anonymous, coll.url, str(token), ca_file=pki["ca.pem"],
                         backoff_first=0.05)
        assert not refused.flush(1.0)
        refused.stop()
        assert "cannot reach the collector" in refused.state()["last_error"]
        box = Outbox(str(tmp_path / "state"), "web01", "test")
        reports = [run_report("web01") for _ in range(5)]
        box.put_many(reports)
        sender = Sender(box, coll.url, str(token), ca_file=pki["ca.pem"],
                        cert_file=pki["cli.pem"], key_file=pki["cli.key"])
        assert sender.flush(15), sender.state()
        sender.stop()
        assert sender.state()["sent_total"] == 5
    finally:
        coll.stop()

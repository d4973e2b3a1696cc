"""certificates on real certificates made by a test CA: expiring, expired, chains, garbage."""

from __future__ import annotations

import os
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.audits.conftest import NOBODY, audit, audit_as, keys
from tests.harness.tls import TestCA


@pytest.fixture
def certs(tmp_path):
    """A directory holding the CA (10 years), certificates expiring in 5 and 60 days, an
    expired one, a not-yet-valid one, a chain, a key-only .pem, garbage and a DER .crt."""
    d = tmp_path / "certs"
    d.mkdir()
    ca = TestCA(d)
    ca.issue("soon", days_left=5)
    ca.issue("later", days_left=60)
    ca.issue("old", days_left=-3)
    ca.issue("future", days_left=100, lifetime_days=10)
    (d / "chain.pem").write_bytes((d / "soon.pem").read_bytes() + (d / "later.pem").read_bytes()
                                  + ca.ca_file.read_bytes())
    (d / "onlykey.pem").write_bytes((d / "soon.key").read_bytes())
    (d / "garbage.pem").write_text("this is not a certificate\n")
    pem = x509.load_pem_x509_certificate((d / "old.pem").read_bytes())
    (d / "old-der.crt").write_bytes(pem.public_bytes(serialization.Encoding.DER))
    (d / "notes.txt").write_text("-----BEGIN CERTIFICATE-----\nnot read: not a cert name\n")
    return d


def test_a_directory_of_certificates(certs):
    result = audit("certificates", paths=[str(certs)], within="30d")
    d = str(certs)
    assert keys(result) == {
        ("expiring", f"{d}/soon.pem#1", "warning"),
        ("expired", f"{d}/old.pem#1", "critical"),
        ("expired", f"{d}/old-der.crt#1", "critical"),
        ("not_yet_valid", f"{d}/future.pem#1", "warning"),
        ("expiring", f"{d}/chain.pem#1", "warning"),
        ("unparseable", f"{d}/garbage.pem", "warning")}
    details = {(f.kind, f.subject): f.detail for f in result.findings}
    assert re.fullmatch(r"CN=localhost expires in 5 days, on \d{4}-\d\d-\d\d \d\d:\d\d UTC "
                        r"\(reported within 30d\)", details["expiring", f"{d}/soon.pem#1"])
    assert re.fullmatch(r"CN=localhost expired 3 days ago, on \d{4}-\d\d-\d\d \d\d:\d\d UTC",
                        details["expired", f"{d}/old.pem#1"])
    assert details["unparseable", f"{d}/garbage.pem"] == \
        "holds no PEM block and is not a DER certificate"
    assert details["not_yet_valid", f"{d}/future.pem#1"].startswith(
        "CN=localhost is not valid before ")


def test_every_certificate_of_a_chain_is_checked(certs):
    result = audit("certificates", paths=[str(certs / "chain.pem")], within="90d")
    chain = str(certs / "chain.pem")
    assert keys(result) == {("expiring", f"{chain}#1", "warning"),
                            ("expiring", f"{chain}#2", "warning")}  # the CA's #3 is fine


def test_globs_and_literal_files(certs):
    d = str(certs)
    result = audit("certificates", paths=[f"{d}/s*.pem", f"{d}/l*.pem", f"{d}/onlykey.pem"],
                   within="90d")
    assert keys(result) == {("expiring", f"{d}/soon.pem#1", "warning"),
                            ("expiring", f"{d}/later.pem#1", "warning"),
                            ("unparseable", f"{d}/onlykey.pem", "warning")}
    assert {f.detail for f in result.findings if f.kind == "unparseable"} == {
        "holds no certificate, only PRIVATE KEY"}
    # found by a glob (or in a directory), a key file next to the certificates is skipped
    assert audit("certificates", paths=[f"{d}/only*.pem"]).findings == []


def test_missing_paths_and_globs_matching_nothing(tmp_path):
    result = audit("certificates", paths=[str(tmp_path / "absent.pem"),
                                          str(tmp_path / "nothing" / "*.pem")])
    assert keys(result) == {("missing", str(tmp_path / "absent.pem"), "warning"),
                            ("missing", str(tmp_path / "nothing" / "*.pem"), "warning")}


def test_symlinked_files_are_read_once_under_their_own_name(certs, tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    (live / "cert.pem").symlink_to(certs / "soon.pem")
    (live / "dangling.pem").symlink_to(tmp_path / "gone.pem")
    (live / "loop").symlink_to(live)  # directory symlinks are not followed
    only_live = audit("certificates", paths=[str(live)])
    assert keys(only_live) == {("expiring", f"{live}/cert.pem#1", "warning"),
                               ("unreadable", f"{live}/dangling.pem", "warning")}
    both = audit("certificates", paths=[str(live), str(certs / "soon.pem")])
    assert keys(both) == {("expiring", f"{certs}/soon.pem#1", "warning"),
                          ("unreadable", f"{live}/dangling.pem", "warning")}


def test_an_unparseable_certificate_in_a_chain_is_reported_by_position(certs):
    good = (certs / "soon.pem").read_text()
    bad = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    (certs / "broken-chain.pem").write_text(good + bad)
    result = audit("certificates", paths=[str(certs / "broken-chain.pem")])
    subject = str(certs / "broken-chain.pem")
    assert keys(result) == {("expiring", f"{subject}#1", "warning"),
                            ("unparseable", f"{subject}#2", "warning")}
    detail = next(f.detail for f in result.findings if f.kind == "unparseable")
    assert detail.startswith("certificate 2 of 2 does not parse: ")


def test_unreadable_files_and_directories(certs, shared_dir):
    for name in ("soon.pem", "later.pem"):
        (shared_dir / name).write_bytes((certs / name).read_bytes())
        os.chmod(shared_dir / name, 0o644)
    os.chmod(shared_dir / "later.pem", 0o600)
    closed = shared_dir / "closed"
    closed.mkdir(mode=0o700)
    (closed / "x.pem").write_bytes((certs / "old.pem").read_bytes())
    result = audit_as(NOBODY, "certificates", paths=[str(shared_dir)])
    assert result["error"] is None
    found = {(f["kind"], f["subject"], f["severity"]) for f in result["findings"]}
    assert found == {("expiring", f"{shared_dir}/soon.pem#1", "warning"),
                     ("unreadable", f"{shared_dir}/later.pem", "warning"),
                     ("unreadable", str(closed), "info")}


def test_max_files_bounds_a_directory_walk(certs):
    result = audit("certificates", paths=[str(certs)], max_files=2)
    assert [f.subject for f in result.findings if f.kind == "scan_truncated"] == ["max_files"]

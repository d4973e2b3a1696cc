"""The incident pages of the dashboard in a real headless Chromium: the list of runbook runs
and one run's hosts × steps grid, timeline and evidence. Screenshots go to
$OPSAGENT_SCREENSHOTS (default: the test's directory)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import httpx
import pytest
from selenium.webdriver.common.by import By

from agent.fleet.incidents import incident_report
from tests.collector.test_dashboard import browser, no_dialog, shoot  # noqa: F401 (fixture)
from tests.harness.collector import CollectorProc
from tests.harness.incidents import sample_incident
from tests.harness.reports import run_report

EVIL = "<img src=x onerror=alert(1)>"
FAILED_ID = "INC-20261123-093112-3f2a"
CHECK_ID = "INC-20261124-101500-aa01"
HOSTILE_ID = "INC-20261122-080000-0bad"


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorProc]:
    """ctl01 ran three runbooks: a failed run, a dry run, and one whose names and messages
    are markup; web01 is an ordinary fleet host."""
    tmp = tmp_path_factory.mktemp("incidents")
    proc = CollectorProc(str(tmp / "c.db"), tmp / "c.log").start()
    try:
        hostile = sample_incident(HOSTILE_ID, started=dt.datetime(2026, 11, 22, 8, 0,
                                                                  tzinfo=dt.UTC),
                                  hosts=(EVIL, "web02", "web03", "web04"))
        hostile["outcomes"][2]["message"] = "<script>document.title='owned'</script>"
        hostile["timeline"][0]["event"] = f"wave 1 of 2: {EVIL}"
        hostile["title"] = "<b>bold</b> title"
        docs = [sample_incident(),
                sample_incident(CHECK_ID, check=True,
                                started=dt.datetime(2026, 11, 24, 10, 15, tzinfo=dt.UTC)),
                hostile]
        r = proc.post(proc.token("ctl01"), [incident_report(d, "ctl01") for d in docs])
        assert r.status_code == 200, r.text
        r = proc.post(proc.token("web01"), [run_report("web01")])
        assert r.status_code == 200, r.text
        yield proc
    finally:
        proc.stop()


def test_the_incidents_page_lists_runs_newest_first(browser, collector, tmp_path):  # noqa: F811
    browser.get(collector.url + "/")
    latest = browser.find_elements(By.CSS_SELECTOR, "table.incidents tbody tr")
    assert [r.get_attribute("data-incident") for r in latest] == [CHECK_ID, FAILED_ID,
                                                                  HOSTILE_ID]
    assert [r.get_attribute("data-host") for r in browser.find_elements(
        By.CSS_SELECTOR, "#hosts tbody tr")] == ["web01"]  # the controller is no fleet host
    browser.find_element(By.LINK_TEXT, "Incidents").click()
    assert browser.title == "Incidents · opsagent"
    assert browser.find_element(By.CSS_SELECTOR, "header a.here").text == "Incidents"
    rows = browser.find_elements(By.CSS_SELECTOR, "table.incidents tbody tr")
    assert [r.get_attribute("data-incident") for r in rows] == [CHECK_ID, FAILED_ID,
                                                                HOSTILE_ID]
    dry, failed, _ = rows
    assert "dry run" in dry.text and "checked" in dry.text
    assert [dry.find_element(By.CSS_SELECTOR, c).text
            for c in (".total", ".changed", ".failed", ".unreachable")] == ["4", "1", "1", "1"]
    assert "problem" in failed.get_attribute("class").split()
    assert "web-abuse" in failed.text and "alice@laptop" in failed.text and " 60 s " in failed.text
    status = failed.find_element(By.CSS_SELECTOR, ".badge.failed")
    assert status.value_of_css_property("background-color") == "rgba(207, 34, 46, 1)"  # red
    print("screenshot:", shoot(browser, "incidents", tmp_path))


def test_an_incident_page_shows_the_grid_timeline_and_evidence(browser, collector,  # noqa: F811
                                                               tmp_path):
    browser.get(collector.url + "/incidents")
    browser.find_element(By.LINK_TEXT, FAILED_ID).click()
    assert browser.title == f"{FAILED_ID} · opsagent"
    assert browser.find_element(By.ID, "incident-status").text == "failed"
    assert not browser.find_elements(By.ID, "dry-run")
    cards = {k: browser.find_element(By.ID, f"count-{k}").text
             for k in ("hosts", "changed", "failed", "unreachable")}
    assert cards == {"hosts": "4", "changed": "1", "failed": "1", "unreachable": "1"}
    assert browser.find_element(By.ID, "duration").text == "60 s"
    facts = browser.find_element(By.ID, "incident-facts").text
    assert "web-abuse" in facts and "alice@laptop from ctl01" in facts and "limit web" in facts
    params = browser.find_element(By.ID, "params").text
    assert "scraper | 20 req/s" in params and "203.0.113.7" in params

    heads = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#grid thead th")]
    assert heads == ["host", "1. evidence\nsnapshot", "2. block the scraper\nblock_ip",
                     "3. restart nginx\nrestart"]
    grid = {}
    for row in browser.find_elements(By.CSS_SELECTOR, "#grid tbody tr"):
        cells = row.find_elements(By.CSS_SELECTOR, "td.cell")
        grid[row.get_attribute("data-host")] = [
            [b.text for b in c.find_elements(By.CSS_SELECTOR, ".badge")] for c in cells]
    assert grid == {
        "web01": [["ok"], ["changed"], ["changed"]],
        "web02": [["ok"], ["changed", "rolled-back"], ["failed"]],
        "web03": [["ok"], ["ok"], ["ok"]],
        "web04": [["not run"], ["not run"], ["not run"]],
    }
    web02 = browser.find_element(By.CSS_SELECTOR, "#grid tr[data-host='web02']")
    assert "bind() to 0.0.0.0:80 failed" in web02.text
    assert "problem" in web02.get_attribute("class").split()
    colours = {b.text: b.value_of_css_property("background-color")
               for b in web02.find_elements(By.CSS_SELECTOR, "td.cell .badge")}
    assert len(colours) == 4 and len(set(colours.values())) == 4  # a colour per status

    times = [td.text for td in browser.find_elements(By.CSS_SELECTOR,
                                                     "#timeline tbody td.when")]
    assert times == sorted(times) and times[0] == "09:31:12" and times[-1] == "09:32:12"
    events = [tr.text for tr in browser.find_elements(By.CSS_SELECTOR, "#timeline tbody tr")]
    assert "started by alice@laptop" in events[0]
    assert "confirmed: Block 203.0.113.7 on every web host?" in events[2]
    assert any("web02" in e and "rolled-back" in e and "undone" in e for e in events)
    assert "finished: failed" in events[-1] and len(events) == 17

    evidence = browser.find_element(By.CSS_SELECTOR, ".evidence[data-host='web01']")
    assert "web01 · step 1: evidence" in evidence.text
    summaries = evidence.find_elements(By.TAG_NAME, "summary")
    assert [s.text.split(" (")[0] for s in summaries] == [
        "sockets", "processes", "logs: /var/log/nginx/error.log"]
    pre = evidence.find_elements(By.TAG_NAME, "pre")[2]
    assert not pre.is_displayed()  # folded until asked for
    summaries[2].click()
    assert pre.is_displayed() and "limiting requests | excess" in pre.text
    followups = browser.find_element(By.ID, "followups").text
    assert "Rate-limit /api/search per client" in followups
    print("screenshot:", shoot(browser, "incident", tmp_path))


def test_a_dry_run_page_says_nothing_was_changed(browser, collector, tmp_path):  # noqa: F811
    browser.get(collector.url + f"/incidents/{CHECK_ID}")
    assert browser.find_element(By.ID, "dry-run").text == "dry run: nothing was changed"
    assert browser.find_element(By.ID, "incident-status").text == "checked"
    assert browser.find_element(By.ID, "count-would-change").text == "1"
    assert not browser.find_elements(By.ID, "count-changed")
    row = browser.find_element(By.CSS_SELECTOR, "#grid tr[data-host='web01']")
    assert [b.text for b in row.find_elements(By.CSS_SELECTOR, "td.cell .badge")] == [
        "ok", "would-change", "would-change"]
    print("screenshot:", shoot(browser, "incident-dry-run", tmp_path))


def test_markup_in_an_incident_is_shown_as_text(browser, collector, tmp_path):  # noqa: F811
    browser.get(collector.url + "/incidents")
    browser.find_element(By.LINK_TEXT, HOSTILE_ID).click()
    no_dialog(browser)
    assert browser.title == f"{HOSTILE_ID} · opsagent"  # the <script> did not run
    assert "<b>bold</b> title" in browser.find_element(By.TAG_NAME, "h1").text
    grid = browser.find_element(By.ID, "grid").text
    assert EVIL in grid and "<script>document.title='owned'</script>" in grid
    assert f"wave 1 of 2: {EVIL}" in browser.find_element(By.ID, "timeline").text
    assert not browser.find_elements(By.CSS_SELECTOR, "main img, main script, h1 b")
    page = httpx.get(collector.url + f"/incidents/{HOSTILE_ID}").text
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and EVIL not in page
    print("screenshot:", shoot(browser, "incident-hostile", tmp_path))


def test_an_unknown_incident_is_a_404_page(browser, collector, tmp_path):  # noqa: F811
    r = httpx.get(collector.url + "/incidents/" + "%3Cb%3Ex")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert "&lt;b&gt;x" in r.text and "<b>x" not in r.text
    assert "script-src" not in r.headers["content-security-policy"]
    browser.get(collector.url + "/incidents/INC-nope")
    assert browser.title == "Unknown incident · opsagent"
    assert "No incident INC-nope" in browser.find_element(By.TAG_NAME, "main").text
    schema = httpx.get(collector.url + "/openapi.json").json()
    assert not {"/incidents", "/incidents/{incident}"} & set(schema["paths"])

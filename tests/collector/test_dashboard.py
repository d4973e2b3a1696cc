"""The dashboard in a real headless Chromium (Debian's chromium + chromedriver, Selenium):
what an operator sees, names shown as text, problems first. Screenshots of every page go to
$OPSAGENT_SCREENSHOTS (default: the test's directory)."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By

from tests.harness.collector import CollectorProc, opsagent
from tests.harness.reports import alert_report, revision_report, run_report

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Resource names are whatever the playbook says: markup and SQL must come out as plain text.
EVIL = ["<img src=x onerror=alert(1)>", "'; DROP TABLE reports; --",
        "<script>document.title='owned'</script>"]
STALE_AFTER_S = 3  # old01 goes quiet for longer; the others report just before the page loads


def missing_browser() -> str | None:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.path.exists(path):
            return (f"{path} is missing: the dashboard tests need Debian's {package} "
                    "(apt-get install -y chromium chromium-driver; scripts/test.sh installs "
                    "them when run as root)")
    return None


def test_chromium_and_its_webdriver_are_installed():
    """Fails (never skips) without them; the tests below then error in their set-up."""
    problem = missing_browser()
    assert problem is None, problem


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    problem = missing_browser()
    if problem:
        pytest.fail(problem, pytrace=False)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts,
                              service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


class Fleet:
    """A collector that heard from three hosts; ``heartbeat`` keeps web01 and db01 fresh."""

    def __init__(self, proc: CollectorProc) -> None:
        self.proc = proc
        self.url = proc.url
        self.tokens: dict[str, str] = {}

    def post(self, host: str, reports: list) -> None:
        if host not in self.tokens:
            self.tokens[host] = self.proc.token(host)
        r = self.proc.post(self.tokens[host], reports)
        assert r.status_code == 200, r.text

    def heartbeat(self) -> None:
        for host in ("web01", "db01"):
            self.post(host, [revision_report(host, REVISION[host])])


REVISION = {"web01": "4f2a9c1e7b3d55aa", "db01": "9e1d0c3b2a41"}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """old01 stopped reporting; web01 has recurring drift on nginx.conf, a failed nginx, an
    alert and hostile resource names; db01 is fine."""
    tmp = tmp_path_factory.mktemp("fleet")
    proc = CollectorProc(str(tmp / "c.db"), tmp / "c.log",
                         stale_after=f"{STALE_AFTER_S}s").start()
    try:
        f = Fleet(proc)
        f.post("old01", [run_report("old01")])
        time.sleep(STALE_AFTER_S + 0.5)
        now = time.time()
        f.post("web01", [run_report("web01", [
            ("files", "/etc/nginx/nginx.conf", "changed", "corrective"),
            ("services", "nginx", "ok", None)], at=now - 300 + i) for i in range(3)])
        f.post("web01", [
            run_report("web01", [("services", "nginx", "failed", "failed"),
                                 *[("files", n, "changed", "intentional") for n in EVIL]],
                       at=now - 5),
            alert_report("web01", message="services:nginx: restart budget exhausted (3 in 10m)")])
        f.post("db01", [run_report("db01", [("services", "postgresql", "ok", None)])])
        f.heartbeat()
        yield f
    finally:
        proc.stop()


def shoot(driver: webdriver.Chrome, name: str, tmp_path: Path) -> Path:
    """The whole page, not just the first screenful."""
    out = Path(os.environ.get("OPSAGENT_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    page, chrome = driver.execute_script(
        "return [document.documentElement.scrollHeight, outerHeight - innerHeight]")
    driver.set_window_size(1280, max(900, int(page) + int(chrome)))
    try:
        assert driver.save_screenshot(str(out / f"{name}.png"))
    finally:
        driver.set_window_size(1280, 900)
    return out / f"{name}.png"


def no_dialog(driver: webdriver.Chrome) -> None:
    try:
        text = driver.switch_to.alert.text
    except NoAlertPresentException:
        return
    raise AssertionError(f"a script ran: an alert dialog says {text!r}")


def cells(row, selector: str) -> str:
    return row.find_element(By.CSS_SELECTOR, selector).text


def test_fleet_page_lists_problems_first_with_their_counts(browser, fleet, tmp_path):
    fleet.heartbeat()  # only old01 has been silent for longer than stale_after
    browser.get(fleet.url + "/")
    assert browser.title == "Fleet · opsagent"
    rows = browser.find_elements(By.CSS_SELECTOR, "#hosts tbody tr")
    # problems first (old01 stopped reporting, web01 has a failing resource), then by name
    assert [r.get_attribute("data-host") for r in rows] == ["old01", "web01", "db01"]
    old, web, db = rows
    assert "stale" in old.get_attribute("class").split()
    assert "stopped reporting" in old.text
    assert "stopped reporting" not in web.text + db.text
    assert [cells(web, c) for c in (".drift", ".failing", ".recurring")] == ["3", "1", "1"]
    assert [cells(db, c) for c in (".drift", ".failing", ".recurring")] == ["0", "0", "0"]
    assert [cells(old, c) for c in (".drift", ".failing", ".recurring")] == ["0", "0", "0"]
    assert "4f2a9c1e7b3d" in web.text and "test" in web.text  # revision, agent version
    seen = web.find_element(By.CSS_SELECTOR, ".last-seen")
    assert seen.text.endswith(" s ago")
    assert dt.datetime.fromisoformat(seen.get_attribute("title")).tzinfo is not None
    totals = {k: browser.find_element(By.ID, f"total-{k}").text
              for k in ("hosts", "stale", "failing", "alerts")}
    assert totals == {"hosts": "3", "stale": "1", "failing": "1", "alerts": "1"}
    assert "restart budget exhausted" in browser.find_element(By.CSS_SELECTOR,
                                                              "table.alerts").text
    print("screenshot:", shoot(browser, "fleet", tmp_path))


def test_host_page_shows_resources_timeline_and_recurring_drift(browser, fleet, tmp_path):
    browser.get(fleet.url + "/")
    browser.find_element(By.LINK_TEXT, "web01").click()
    assert browser.title == "web01 · opsagent"
    assert browser.current_url == fleet.url + "/hosts/web01"
    note = browser.find_element(By.ID, "recurring-note").text
    assert "keeps changing them back" in note and "fights the agent" in note
    recurring = browser.find_elements(By.CSS_SELECTOR, "#recurring tbody tr")
    assert [r.text.split()[:2] for r in recurring] == [["files:/etc/nginx/nginx.conf", "3"]]

    resources = {(r.find_element(By.CSS_SELECTOR, "td:nth-child(1)").text,
                  r.find_element(By.CSS_SELECTOR, "td:nth-child(2)").text):
                 r.find_element(By.CSS_SELECTOR, ".badge").text
                 for r in browser.find_elements(By.CSS_SELECTOR, "#resources tbody tr")}
    assert resources == {("files", "/etc/nginx/nginx.conf"): "changed",
                         ("services", "nginx"): "failed",
                         **{("files", name): "changed" for name in EVIL}}
    failed = browser.find_element(By.CSS_SELECTOR, "#resources .badge.failed")
    assert failed.value_of_css_property("background-color") == "rgba(207, 34, 46, 1)"  # red

    labels = [b.text for b in browser.find_elements(By.CSS_SELECTOR, "#timeline tbody .badge")]
    assert sorted(labels) == sorted(["corrective"] * 3 + ["intentional"] * 3 + ["failed"])
    colours = {b.text: b.value_of_css_property("background-color")
               for b in browser.find_elements(By.CSS_SELECTOR, ".legend .badge")}
    assert len(colours) == 4 and len(set(colours.values())) == 4  # a colour per label
    assert "nginx: restart budget exhausted" in browser.find_element(
        By.CSS_SELECTOR, "table.alerts").text
    assert "4f2a9c1e7b3d55aa" in browser.find_element(By.ID, "host-facts").text
    print("screenshot:", shoot(browser, "host", tmp_path))


def test_a_host_that_stopped_reporting_says_so_on_its_page(browser, fleet, tmp_path):
    browser.get(fleet.url + "/")
    browser.find_element(By.LINK_TEXT, "old01").click()
    assert browser.title == "old01 · opsagent"
    assert browser.find_element(By.CSS_SELECTOR, "h1 .badge.stale").text == "stopped reporting"
    note = browser.find_element(By.ID, "stale-note").text
    assert f"over {STALE_AFTER_S} s" in note and "opsagent status" in note
    assert browser.find_element(By.ID, "host-failing").text == "0"
    assert "Nothing has drifted or changed." in browser.find_element(By.TAG_NAME, "main").text
    print("screenshot:", shoot(browser, "stale-host", tmp_path))


def test_hostile_resource_names_are_shown_as_text(browser, fleet, tmp_path):
    browser.get(fleet.url + "/hosts/web01")
    no_dialog(browser)
    assert browser.title == "web01 · opsagent"  # the <script> did not run
    for table in ("resources", "timeline"):
        text = browser.find_element(By.ID, table).text
        for name in EVIL:
            assert name in text, f"{name!r} is not shown as text in #{table}"
    assert not browser.find_elements(By.CSS_SELECTOR, "main img, main script")
    assert "&lt;img src=x onerror=alert(1)&gt;" in httpx.get(fleet.url + "/hosts/web01").text

    # the API still works, the reports table is still there, the names are stored verbatim
    api = fleet.proc
    names = {r["name"] for r in api.get("/api/v1/hosts/web01")["resources"]}
    assert set(EVIL) <= names
    assert len(api.get("/api/v1/hosts")) == 3
    before = len(api.get("/api/v1/hosts/web01/reports?limit=500"))
    fleet.post("web01", [run_report("web01", [("services", "nginx", "failed", None)])])
    assert len(api.get("/api/v1/hosts/web01/reports?limit=500")) == before + 1


def test_host_names_are_validated_so_markup_cannot_be_one(fleet):
    bad = "<script>alert(1)</script>"
    r = opsagent("server", "token", "add", bad, "--db", fleet.proc.db, check=False)
    assert r.returncode == 2 and "is not a host name" in r.stderr
    r = fleet.proc.post(fleet.tokens["db01"], [run_report(bad)])  # a report about a "host"
    assert r.status_code == 403
    page = httpx.get(fleet.url + "/hosts/" + quote(EVIL[0], safe=""))  # echoed on the 404 page
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert "&lt;img src=x onerror=alert(1)&gt;" in page.text and EVIL[0] not in page.text


def test_alerts_page_lists_the_alert_and_links_its_host(browser, fleet, tmp_path):
    browser.get(fleet.url + "/")
    browser.find_element(By.LINK_TEXT, "Alerts").click()
    assert browser.title == "Alerts · opsagent"
    rows = browser.find_elements(By.CSS_SELECTOR, "table.alerts tbody tr")
    assert len(rows) == 1
    text = rows[0].text
    assert "web01" in text and "services:nginx" in text and "restart budget exhausted" in text
    severity = rows[0].find_element(By.CSS_SELECTOR, ".badge")
    assert severity.text == "critical" and "critical" in severity.get_attribute("class")
    print("screenshot:", shoot(browser, "alerts", tmp_path))
    rows[0].find_element(By.LINK_TEXT, "web01").click()
    assert browser.title == "web01 · opsagent"


def test_pages_are_html_and_an_unknown_host_is_a_404_page(tmp_path, browser):
    proc = CollectorProc(str(tmp_path / "c.db"), tmp_path / "c.log").start()
    try:
        for path in ("/", "/alerts"):
            r = httpx.get(proc.url + path)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            assert "script-src" not in r.headers["content-security-policy"]  # no script runs
        r = httpx.get(proc.url + "/hosts/nope")
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
        assert "No host named" in r.text
        schema = httpx.get(proc.url + "/openapi.json").json()
        assert not {"/", "/alerts", "/hosts/{host}"} & set(schema["paths"])

        browser.get(proc.url + "/")  # an empty fleet says how to add a host
        empty = browser.find_element(By.CLASS_NAME, "empty").text
        assert "opsagent server token add HOST" in empty
        assert f"url: {proc.url}" in empty and "token_file: /etc/opsagent/token" in empty
        print("screenshot:", shoot(browser, "empty-fleet", tmp_path))
        browser.get(proc.url + "/hosts/nope")
        assert browser.title == "Unknown host · opsagent"
        assert "No host named nope" in browser.find_element(By.TAG_NAME, "main").text
        print("screenshot:", shoot(browser, "unknown-host", tmp_path))
    finally:
        proc.stop()

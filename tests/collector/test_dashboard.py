"""The dashboard in a real headless Chromium (Debian's chromium + chromedriver, Selenium):
what an operator sees, names shown as text, problems first. Screenshots of every page go to
$OPSAGENT_SCREENSHOTS (default: the test's directory)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from tests.harness.collector import CollectorProc
from tests.harness.reports import alert_report, run_report

EVIL = ["<img src=x onerror=alert(1)>", "'; DROP TABLE reports; --"]


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    driver_bin = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    assert os.path.exists(chromium) and os.path.exists(driver_bin), (
        "Debian's chromium and chromium-driver are needed (scripts/test.sh installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts,
                              service=webdriver.ChromeService(executable_path=driver_bin))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[CollectorProc]:
    proc = CollectorProc(str(tmp_path / "c.db"), tmp_path / "c.log", stale_after="2s").start()
    try:
        old = proc.token("old01")
        proc.post(old, [run_report("old01")])
        time.sleep(2.5)  # old01 goes quiet: stopped reporting
        web = proc.token("web01")
        now = time.time()
        proc.post(web, [run_report("web01", [
            ("files", "/etc/nginx/nginx.conf", "changed", "corrective"),
            ("services", "nginx", "ok", None)], at=now - 300 + i) for i in range(3)])
        proc.post(web, [run_report("web01", [("services", "nginx", "failed", "failed"),
                                             *[("files", n, "changed", "intentional")
                                               for n in EVIL]], at=now - 5),
                        alert_report("web01", message="services:nginx: restart budget "
                                     "exhausted (3 in 10m)")])
        db = proc.token("db01")
        proc.post(db, [run_report("db01", [("services", "postgresql", "ok", None)])])
        yield proc
    finally:
        proc.stop()


def shoot(driver: webdriver.Chrome, name: str, tmp_path: Path) -> None:
    out = Path(os.environ.get("OPSAGENT_SCREENSHOTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(out / f"{name}.png"))


def test_fleet_host_and_alerts_pages_in_chromium(browser, fleet, tmp_path):
    browser.get(fleet.url + "/")
    assert browser.title == "Fleet · opsagent"
    rows = browser.find_elements(By.CSS_SELECTOR, "#hosts tbody tr")
    order = [r.get_attribute("data-host") for r in rows]
    assert order == ["old01", "web01", "db01"]  # problems first: stale, failing; then by name
    stale = rows[0]
    assert "stale" in stale.get_attribute("class") and "stopped reporting" in stale.text
    web = rows[1]
    assert web.find_element(By.CSS_SELECTOR, ".drift").text == "3"
    assert web.find_element(By.CSS_SELECTOR, ".failing").text == "1"
    assert web.find_element(By.CSS_SELECTOR, ".recurring").text == "1"
    assert browser.find_element(By.ID, "total-hosts").text == "3"
    assert browser.find_element(By.ID, "total-stale").text == "1"
    shoot(browser, "fleet", tmp_path)

    web.find_element(By.LINK_TEXT, "web01").click()
    assert browser.title == "web01 · opsagent"
    assert "keeps changing them back" in browser.find_element(By.ID, "recurring-note").text
    recurring = browser.find_element(By.ID, "recurring").text
    assert "files:/etc/nginx/nginx.conf" in recurring
    resources = browser.find_element(By.ID, "resources").text
    assert "services:nginx" in resources and "failed" in resources
    for name in EVIL:  # shown as text: no element was injected, no dialog opened
        assert f"files:{name}" in resources
    assert not browser.find_elements(By.CSS_SELECTOR, "#resources img")
    labels = [b.text for b in browser.find_elements(By.CSS_SELECTOR, "#timeline .badge")]
    assert labels.count("corrective") == 3 and labels.count("intentional") == 2
    assert labels.count("failed") == 1
    shoot(browser, "host", tmp_path)

    browser.find_element(By.LINK_TEXT, "Alerts").click()
    assert browser.title == "Alerts · opsagent"
    text = browser.find_element(By.CSS_SELECTOR, "table.alerts").text
    assert "restart budget exhausted" in text and "critical" in text
    shoot(browser, "alerts", tmp_path)

    # the API is intact after the hostile names
    assert len(fleet.get("/api/v1/hosts")) == 3


def test_unknown_host_is_a_404_page_and_an_empty_fleet_says_how_to_start(tmp_path, browser):
    proc = CollectorProc(str(tmp_path / "c.db"), tmp_path / "c.log").start()
    try:
        r = httpx.get(proc.url + "/hosts/nope")
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
        r = httpx.get(proc.url + "/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        browser.get(proc.url + "/")
        assert "opsagent server token add HOST" in browser.find_element(By.CLASS_NAME,
                                                                        "empty").text
    finally:
        proc.stop()

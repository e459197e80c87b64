"""The status page in real headless Chromium (Debian's chromium and chromium-driver): it shows
the verdict, the spool gauge and each destination as /status has them, and turns to
"Degraded" with the reason when the vendor goes away."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.procs import Ingest, Relay, http_get, relay_config, wait_until

ARTIFACTS = Path(__file__).parents[1] / "artifacts"


def chrome(width: int, height: int) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", f"--window-size={width},{height}"):
        opts.add_argument(arg)
    # The driver is Debian's: Selenium must not try to download one.
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="make test installs chromium and chromium-driver")
def test_status_page_in_a_real_browser(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    ingest = Ingest(tmp_path)
    ingest.start()
    cfg = relay_config(tmp_path, ingest.url, sources={"host": {"interval": "1s"}, "internal": {"interval": "1s"},
                                                     "discovery": {"kafka": False}})
    relay = Relay(tmp_path, cfg)
    relay.start()
    driver = chrome(1280, 800)
    try:
        wait_until(lambda: relay.destination()["shipped_points"] > 0, what="data flowing")
        driver.get(relay.status_url + "/")
        verdict = driver.find_element(By.ID, "verdict")
        wait_until(lambda: verdict.get_attribute("data-state") == "healthy", what="Healthy on the page")
        assert verdict.text == "Healthy"
        status = relay.status()
        spool_text = driver.find_element(By.ID, "spool-text").text
        assert "of 512.0 MiB used" in spool_text
        gauge = driver.find_element(By.CSS_SELECTOR, "#spool .gauge")
        assert gauge.get_attribute("aria-valuemax") == str(status["spool"]["max_bytes"])
        row = driver.find_element(By.CSS_SELECTOR, 'tr[data-destination="vendor"]')
        assert status["destinations"][0]["endpoint"] in row.text and "ago" in row.text
        assert "plain HTTP, no TLS" in row.text and "signed by key" in row.text
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "status-page-healthy.png"))

        ingest.terminate()  # the vendor goes away: within a refresh or two the page says so
        wait_until(lambda: verdict.get_attribute("data-state") == "degraded", timeout=20, what="Degraded")
        reasons = driver.find_element(By.ID, "reasons").text
        assert "destination vendor" in reasons and "waiting" in reasons
        driver.save_screenshot(str(ARTIFACTS / "status-page-degraded.png"))

        # A bad edit and SIGHUP: the page says the reload was refused and why, among the reasons too.
        relay.config_path.write_text(relay.config_path.read_text() + "shipping_fast: true\n")
        relay.signal(signal.SIGHUP)
        config = driver.find_element(By.ID, "config")
        wait_until(lambda: "Refused reload" in config.text, timeout=20, what="the refused reload on the page")
        assert "shipping_fast: unknown key" in config.text and str(relay.config_path) in config.text
        wait_until(lambda: "reload refused" in driver.find_element(By.ID, "reasons").text, timeout=20,
                   what="the refused reload among the reasons")

        driver.set_window_size(400, 900)  # a narrow window still works
        assert driver.find_element(By.ID, "verdict").is_displayed()
        driver.save_screenshot(str(ARTIFACTS / "status-page-narrow.png"))
        assert driver.execute_script("return document.documentElement.scrollWidth") <= 420
    finally:
        driver.quit()
        relay.terminate()
        ingest.terminate()


def test_page_is_small_self_contained_and_holds_no_secret(tmp_path: Path) -> None:
    key = tmp_path / "api-key"
    key.write_text("page-secret-api-key-1234\n")
    key.chmod(0o600)
    cfg = relay_config(tmp_path, "http://127.0.0.1:9", sources={"host": {"enabled": False}})
    cfg["destinations"][0]["api_key_file"] = str(key)
    relay = Relay(tmp_path, cfg)
    relay.start()
    try:
        code, page = http_get(relay.status_url + "/")
        assert code == 200 and len(page) < 100_000
        text = page.decode()
        for external in ("http://", "https://", "//cdn", "<link", "src=\"http"):
            assert external not in text, f"the page must load nothing from outside: {external}"
        _, status = http_get(relay.status_url + "/status")
        assert b"page-secret-api-key-1234" not in status and b"page-secret-api-key-1234" not in page
    finally:
        relay.terminate()

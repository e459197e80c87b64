"""The ingest's /fleet page in real headless Chromium, as the relay's status page is tested:
two relays, one complete and one whose request was lost in transit, each shown with its key
id, version and sequences, the lost one flagged with its unexplained gap."""

from __future__ import annotations

import re
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

from relay.otlp import MetricsBuilder
from tests.forwarder import Forwarder
from tests.integration.test_status_page import ARTIFACTS, chrome
from tests.procs import Ingest, Relay, get_json, relay_config, wait_until

QUIET = {"host": {"enabled": False}, "internal": {"enabled": False}}


def push(relay: Relay, value: int) -> None:
    b = MetricsBuilder({"service.name": "fleet-page"}, "test")
    b.point(b.gauge("fleet.page", "1"), float(value), time.time_ns())
    req = urllib.request.Request(relay.otlp_url + "/v1/metrics", data=b.finish().SerializeToString(),
                                 headers={"Content-Type": "application/x-protobuf"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="make test installs chromium and chromium-driver")
def test_fleet_page_in_a_real_browser(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    trusted = tmp_path / "trusted"
    ingest = Ingest(tmp_path, extra=["--trusted-keys", str(trusted)])
    relays = []
    for name in ("direct", "lossy"):
        (tmp_path / name).mkdir()
        cfg = relay_config(tmp_path / name, ingest.url, sources=QUIET)
        cfg["destinations"][0]["linger"] = "0s"
        relay = Relay(tmp_path / name, cfg)
        relay.keys("init")
        relay.keys("export", "--out", str(trusted))
        relays.append(relay)
    ingest.start()
    direct, lossy = relays
    keys = {r: re.search(r"key id (\S+)", r.keys("show")).group(1) for r in relays}  # type: ignore[union-attr]
    with Forwarder(ingest.url, decide=lambda i, path, h: "swallow" if i == 1 else "forward") as hop:
        lossy.cfg["destinations"][0]["endpoint"] = hop.url
        lossy.write_config(lossy.cfg)
        driver = chrome(1280, 800)
        try:
            for relay in relays:
                relay.start()
                for v in range(3):
                    push(relay, v)
                    wait_until(lambda r=relay, n=v: r.destination()["shipped_points"] >= n + 1, what="shipped")
            driver.get(ingest.url + "/fleet")
            summary = driver.find_element(By.ID, "summary")
            wait_until(lambda: summary.get_attribute("data-state") == "unexplained", what="the lost request flagged")
            assert summary.text == "1 of 2 relays with unexplained gaps"
            ok = driver.find_element(By.CSS_SELECTOR, f'tr[data-key-id="{keys[direct]}"]')
            assert ok.get_attribute("data-state") == "complete"
            assert "telemetry-relay/" in ok.text and "metrics 3 (up to 3)" in ok.text and "complete" in ok.text
            bad = driver.find_element(By.CSS_SELECTOR, f'tr[data-key-id="{keys[lossy]}"]')
            assert bad.get_attribute("data-state") == "unexplained"
            assert "1 unexplained" in bad.text and "missing: metrics 2" in bad.text
            assert "metrics 2 (up to 3)" in bad.text
            # The same facts as JSON, which a browser does not get unless it asks.
            doc = get_json(ingest.url + "/fleet")[1]
            assert {r["key_id"]: r["gaps"]["unexplained"] for r in doc["relays"]} == {keys[direct]: 0, keys[lossy]: 1}
            ARTIFACTS.mkdir(exist_ok=True)
            driver.save_screenshot(str(ARTIFACTS / "fleet-page.png"))

            driver.set_window_size(400, 900)  # a narrow window still works
            assert summary.is_displayed()
            driver.save_screenshot(str(ARTIFACTS / "fleet-page-narrow.png"))
            assert driver.execute_script("return document.documentElement.scrollWidth") <= 420
        finally:
            driver.quit()
            for relay in relays:
                relay.terminate()
            ingest.terminate()

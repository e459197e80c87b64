"""Each tailed log file in /status, in `telemetry-relay status` and on the status page:
where reading is, the lag, the last record and the drops by reason."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.test_status_page import chrome
from tests.procs import CLI, Ingest, Relay, relay_config, wait_until

LINES = "".join(f"[2024-05-01 10:00:0{i},000] INFO line {i} (a.B)\n" for i in range(5)) + \
    "[2024-05-01 10:00:06,000] DEBUG below the minimum (a.B)\n\x00\x00 binary\n"


def test_tailed_files_in_status_the_cli_and_the_page(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(LINES)
    ingest = Ingest(tmp_path)
    ingest.start()
    cfg = relay_config(tmp_path, ingest.url, sources={"host": {"enabled": False}, "internal": {"enabled": False},
                                                     "logs": {"interval": "200ms", "files": [{"path": str(log)}]}})
    relay = Relay(tmp_path, cfg)
    relay.start()
    try:
        f = wait_until(lambda: [x for x in relay.status()["log_files"] if x["path"] == str(log)
                                and x["records"] == 5 and x["dropped"]["binary"] == 1], what="the file read")[0]
        assert f["source"] == "logs" and f["state"] == "following"
        assert f["offset"] == f["size"] == log.stat().st_size and f["lag_bytes"] == 0
        assert f["dropped"]["severity"] == 1
        assert f["last_record_time"] == time.mktime((2024, 5, 1, 10, 0, 4, 0, 0, -1))  # log4j's local time
        text = subprocess.run([*CLI, "status", "--url", relay.status_url], capture_output=True, text=True,
                              timeout=30).stdout
        line = next(x for x in text.splitlines() if str(log) in x)
        assert "following" in line and "lag 0 B" in line and "5 records" in line
        assert "severity 1" in line and "binary 1" in line
        if not (shutil.which("chromium") and shutil.which("chromedriver")):
            pytest.skip("make test installs chromium and chromium-driver")
        from selenium.webdriver.common.by import By

        driver = chrome(1280, 900)
        try:
            driver.get(relay.status_url + "/")
            row = wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, f'tr[data-log-file="{log}"]'),
                             what="the file on the page")[0]
            assert "following" in row.text and "binary 1" in row.text and "severity 1" in row.text
        finally:
            driver.quit()
    finally:
        relay.terminate()
        ingest.terminate()


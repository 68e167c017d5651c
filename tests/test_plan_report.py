"""The plan's HTML report in a real browser: Debian's chromium and chromium-driver (``make test`` installs them).

Marked slow: it starts a browser.  The report must open offline with every
plot decoded, no console error, and the sizing table in place.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from capacity_cli import main

from .conftest import SCENARIOS

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # the smoke scenario with a backlog SLO besides its own
    slo = "  - {request: register, error_rate: 1%}"
    text = (SCENARIOS / "smoke.yaml").read_text()
    assert slo in text
    text = text.replace(slo, slo + "\n  - {backlog_drained: 2m}")
    folder = tmp_path_factory.mktemp("plan")
    scenario = folder / "smoke-plan.yaml"
    scenario.write_text(text)
    assert main(["plan", str(scenario), "--out", str(folder / "run"), "-q"]) == 0
    return folder / "run" / "plan.html"


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None or DRIVER is None, reason="needs Debian's chromium and chromium-driver (make test installs them)")
def test_the_plan_report_renders_in_headless_chromium(report: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--no-first-run",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    try:
        driver.get(report.resolve().as_uri())
        images = driver.execute_script("return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])")
        assert len(images) >= 5, images
        assert all(done and width > 0 for done, width, _ in images), images  # every plot decoded
        rows = driver.execute_script("return document.querySelectorAll('table.table-sizing tbody tr').length")
        assert rows == 3  # web, db, storage
        stations = driver.execute_script(
            "return Array.from(document.querySelectorAll('table.table-sizing tbody tr td:first-child')).map(c => c.textContent)"
        )
        assert stations == ["web", "db", "storage"]
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []
        assert "http" not in driver.execute_script(
            "return Array.from(document.querySelectorAll('[src]')).map(e => e.src.slice(0, 4)).join()"
        )
    finally:
        driver.quit()

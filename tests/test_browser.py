"""The report in a real browser (headless Debian Chromium through selenium): no console errors, every section and
figure loaded, sections collapse, no horizontal scroll at 1280 px. ``make test`` installs chromium and
chromium-driver when missing. With INNERPROBE_SCREENSHOT=PATH the top of the page is saved there (docs/results.md).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from innerprobe.core.stats import CI
from innerprobe.report.html import build_report
from innerprobe.report.sections import Section
from innerprobe.results import row

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver")


def _report(tmp_path: Path) -> Path:
    from innerprobe.report.plots import new_figure, savefig

    for k in range(3):
        folder = tmp_path / f"s{k}"
        s = Section(
            f"Study {k}" if k else "Repeated", order=k, paragraphs=["A `site` and a very long word " + "x" * 300]
        )
        s.rows = [
            row("proportion_explained", CI(0.8, 0.7, 0.9, 0.95, "t", 3), model="m", seeds=[0, 1, 2]),
            row("escape_noise", 0.3, model="m", seeds=[0]),
        ]
        s.table("wide", [f"column {i}" for i in range(40)], [list(range(40))] * 20)
        for i in range(5):
            fig, ax = new_figure(size=(9.0, 3.0))
            ax.plot([0, 1], [0, i])
            s.figure(savefig(fig, folder / f"f{i}.png", dpi=80), f"figure {i}")
        s.save(folder)
    Section("Repeated", order=0, run={"model": "other"}).save(tmp_path / "again")
    return build_report(tmp_path)


@pytest.fixture()
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def test_report_in_headless_chromium(tmp_path, browser):
    from selenium.webdriver.common.by import By

    page = _report(tmp_path)
    browser.get(page.as_uri())
    errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert errors == []
    cards = browser.find_elements(By.CSS_SELECTOR, "section.card")
    assert len(cards) == 4
    links = browser.find_elements(By.CSS_SELECTOR, "nav.toc a")
    assert len(links) == 4
    imgs = browser.find_elements(By.TAG_NAME, "img")
    assert len(imgs) == 15
    assert all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i) for i in imgs)
    width = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1]
    _collapse_and_reopen(browser, cards[0])
    shot = os.environ.get("INNERPROBE_SCREENSHOT")
    if shot:
        browser.save_screenshot(shot)


def _collapse_and_reopen(browser, card):
    from selenium.webdriver.common.by import By

    details = card.find_element(By.TAG_NAME, "details")
    img = card.find_element(By.TAG_NAME, "img")
    assert details.get_attribute("open") is not None and img.is_displayed()
    card.find_element(By.TAG_NAME, "summary").click()
    assert details.get_attribute("open") is None and not img.is_displayed()
    card.find_element(By.TAG_NAME, "summary").click()
    assert details.get_attribute("open") is not None and img.is_displayed()

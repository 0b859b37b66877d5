"""Headless Chromium for the tests that open a page of the stack (Debian's chromium driven by Playwright)."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


@contextlib.contextmanager
def headless_chromium() -> Iterator:
    """A Playwright Browser, closed at the end. Never skipped: `make install` installs Debian's chromium and
    playwright; a missing one is a failure."""
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: Debian's chromium (tools/install_system_packages.sh)"
    from playwright.sync_api import sync_playwright
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            yield browser
        finally:
            browser.close()

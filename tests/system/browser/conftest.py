"""The browser the widget and embed tests drive: headless Debian Chromium through Playwright."""

from pathlib import Path

import pytest

from tests.support.browser import ARGS, ARTIFACTS, CHROMIUM


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium, one per test module (skipped outside CI when Debian's chromium is missing)."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()

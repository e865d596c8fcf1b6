"""Every page of the website in headless Chromium at a phone's width (390 px).

A module of its own: test_browser.py's page fixture keeps its Playwright session open for the
whole module, and Playwright's sync API does not nest. Fixtures and browser settings come from
test_browser.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_browser import ARGS, CHROMIUM, server  # noqa: F401  (server is a fixture used below)

pytestmark = pytest.mark.browser


def test_no_page_scrolls_sideways_on_a_phone(server: str, built_site: Path) -> None:  # noqa: F811
    """At 390 px (a phone held upright) the page is no wider than the screen: code blocks and
    tables may scroll inside their own box, the page itself never does."""
    from playwright.sync_api import sync_playwright

    pages = sorted(
        html.relative_to(built_site).as_posix()
        for folder in ("notebooks", "book")
        for html in (built_site / folder).glob("*.html")
    )
    assert len(pages) > 10
    wide = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 390, "height": 900})
        for name in pages:
            page.goto(f"{server}/{name}", wait_until="networkidle")
            width = page.evaluate("document.documentElement.scrollWidth")
            if width > 390:
                wide[name] = width
        browser.close()
    assert not wide, f"pages wider than a 390 px screen (their scroll width): {wide}"

"""The floating_point page in headless Chromium: its figures draw and their controls work with no kernel.

The bit explorer widget needs Python, so the website shows a snapshot of it; the static figures
must carry the interactivity there (plotly's own dropdowns and hover). Fixtures and browser
settings come from test_browser.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_browser import ARGS, CHROMIUM, server  # noqa: F401  (server is a fixture used below)

pytestmark = pytest.mark.browser


def test_figures_draw_and_the_format_dropdown_works(server: str) -> None:  # noqa: F811
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed; `make test` installs it (make browser)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"{server}/notebooks/floating_point.html", wait_until="networkidle")
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=20_000)
            plots = page.locator(".js-plotly-plot")
            assert plots.count() >= 5
            patterns = plots.first  # every bit pattern of the small formats, with a format menu
            assert "float8_e4m3fn" in patterns.locator(".gtitle").text_content()
            patterns.locator(".updatemenu-header-group").click()
            patterns.locator(".updatemenu-dropdown-button", has_text="float8_e5m2").first.click()
            page.wait_for_function(
                "document.querySelector('.js-plotly-plot .gtitle').textContent.startsWith('float8_e5m2')",
                timeout=5_000,
            )
            assert "6 nan" in patterns.locator(".gtitle").text_content()  # E5M2 spends six patterns on NaN
            # The widget snapshot shows one toggle per bit of fp32, and the math rendered.
            assert page.locator(".jupyter-widgets .widget-toggle-button").count() >= 32
            assert page.locator("mjx-container").count() >= 10
            loaded = page.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
        finally:
            browser.close()
    assert loaded and all(url.startswith(server) for url in loaded), [
        u for u in loaded if not u.startswith(server)
    ]

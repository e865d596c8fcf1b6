"""The built website in headless Chromium (Debian's package, driven by Playwright).

Asserts on getting_started what a reader with no Python kernel sees: the plotly figure drew,
the math rendered, the widget snapshot shows, the solution waits in a closed dropdown, the
Colab link targets the notebook, and no request went to another origin.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def server(built_site: Path) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(built_site))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def page_report(server: str) -> Iterator[dict]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed; `make test` installs it (make browser)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        requests: list[str] = []
        failures: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: failures.append(f"page error: {e}"))
        page.on(
            "response", lambda r: failures.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None
        )
        page.goto(f"{server}/notebooks/getting_started.html", wait_until="networkidle")
        page.wait_for_function("document.querySelectorAll('mjx-container').length > 0", timeout=20_000)
        page.wait_for_selector(".js-plotly-plot .main-svg", timeout=20_000)
        page.wait_for_selector(".jupyter-widgets .widget-toggle-buttons", timeout=20_000)
        solution = page.locator(".solution").first
        yield {
            "requests": requests,
            "failures": failures,
            "plots": page.locator(".js-plotly-plot .main-svg").count(),
            "traces": page.locator(".js-plotly-plot .scatterlayer .trace").count(),
            "math": page.locator("mjx-container").count(),
            "widget_text": page.locator(".jupyter-widgets").first.inner_text(),
            "slider": page.locator(".jupyter-widgets .widget-slider, .jupyter-widgets .slider").count(),
            "colab": [
                a.get_attribute("href") for a in page.locator("a[href*='colab.research.google.com']").all()
            ],
            "solution_code_visible": solution.locator("pre").first.is_visible(),
            "server": server,
        }
        browser.close()


def test_no_request_leaves_the_site(page_report) -> None:
    foreign = [url for url in page_report["requests"] if not url.startswith(page_report["server"])]
    assert not foreign, foreign


def test_nothing_failed_to_load_and_no_script_error(page_report) -> None:
    assert page_report["failures"] == []


def test_plotly_figure_drew(page_report) -> None:
    assert page_report["plots"] >= 1
    assert page_report["traces"] >= 6, "both panels show fp32, bf16 and fp16"


def test_math_rendered(page_report) -> None:
    assert page_report["math"] >= 10


def test_widget_snapshot_shows(page_report) -> None:
    assert "bf16" in page_report["widget_text"] and "fp32" in page_report["widget_text"]
    assert page_report["slider"] >= 1


def test_colab_link_targets_the_notebook(page_report) -> None:
    assert page_report["colab"]
    assert all(href.endswith("/notebooks/getting_started.ipynb") for href in page_report["colab"])


def test_solution_is_hidden_until_opened(page_report) -> None:
    assert page_report["solution_code_visible"] is False

"""The website: built with -W, one page per chapter, and nothing loaded from another origin."""

from __future__ import annotations

import re

import pytest
import yaml
from conftest import ROOT

from mpcourse.course import authoring

pytestmark = pytest.mark.book

TOC = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())
PAGES = [TOC["root"]] + [entry["file"] for part in TOC["parts"] for entry in part["chapters"]]
CHAPTERS = [page for page in PAGES if page.startswith("notebooks/")]
FOREIGN = re.compile(
    r"""<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=["'](?:https?:)?//""", re.IGNORECASE
)


def test_every_page_is_built(built_site) -> None:
    for page in PAGES:
        assert (built_site / f"{page}.html").exists(), page


def test_no_page_loads_anything_from_another_origin(built_site) -> None:
    for html in built_site.rglob("*.html"):
        text = html.read_text(encoding="utf-8")
        assert not FOREIGN.findall(text), f"{html.relative_to(built_site)} loads {FOREIGN.findall(text)}"
        for cdn in ("cdn.jsdelivr.net", "cdnjs.cloudflare.com", "unpkg.com", "cdn.plot.ly"):
            assert cdn not in text, f"{html.relative_to(built_site)} mentions {cdn}"


@pytest.mark.parametrize("page", CHAPTERS)
def test_chapter_pages_load_plotly_once_and_never_inline_it(built_site, page) -> None:
    text = (built_site / f"{page}.html").read_text(encoding="utf-8")
    assert len(re.findall(r'<script[^>]+src="[^"]*vendor/plotly\.min\.js', text)) == 1
    assert "Plotly.newPlot" in text, "the chapter draws at least one figure"
    # The whole of plotly.js is ~4.6 MB; a page that inlined it would be at least that large.
    assert len(text.encode()) < 3_000_000, f"{page} is {len(text.encode())} bytes: is plotly.js inlined?"


def test_pages_without_figures_do_not_load_plotly(built_site) -> None:
    figure_free = [
        html.relative_to(built_site).as_posix()
        for html in built_site.rglob("*.html")
        if "Plotly.newPlot" not in html.read_text(encoding="utf-8")
    ]
    assert "book/intro.html" in figure_free and "search.html" in figure_free
    for page in figure_free:
        assert "vendor/plotly.min.js" not in (built_site / page).read_text(encoding="utf-8"), page


@pytest.mark.parametrize("page", CHAPTERS)
def test_no_stream_output_on_stderr(built_site, page) -> None:
    """A library's log line or warning in a built page is noise to a reader: each is silenced where
    it starts (mpcourse's import, the profiler wrapper), and a new one fails here."""
    text = (built_site / f"{page}.html").read_text(encoding="utf-8")
    found = [m[:200] for m in re.findall(r'class="output stderr[^"]*">(.*?)</div>', text, flags=re.DOTALL)]
    assert not found, f"{page} shows stderr output: {found}"


@pytest.mark.parametrize("page", CHAPTERS)
def test_colab_button_opens_the_notebook(built_site, page) -> None:
    text = (built_site / f"{page}.html").read_text(encoding="utf-8")
    links = set(re.findall(r'href="(https://colab\.research\.google\.com/[^"]+)"', text))
    assert links, f"{page} has no Colab link"
    assert all(
        link.endswith(f"/blob/{authoring.course_config(ROOT)['ref']}/{page}.ipynb") for link in links
    ), links


def test_solutions_are_in_dropdowns(built_site) -> None:
    text = (built_site / "notebooks/getting_started.html").read_text(encoding="utf-8")
    assert "### BEGIN SOLUTION" in text  # the reference solution is on the website...
    assert re.search(r'<details[^>]*class="[^"]*solution', text) or 'class="solution dropdown' in text

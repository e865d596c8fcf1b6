"""Plotly figures that render everywhere: JupyterLab, Colab, VS Code and the static website.

Inside a kernel, plotly (>= 6.1) emits only its own JSON mime type, which the website builder
skips, so figures would come out blank on the site. :func:`use_site_renderer` adds a second
representation, HTML that draws the figure with the page's own copy of plotly.js (the website
loads it once per site; it is never inlined per figure). Colab keeps its own renderer untouched.
"""

from __future__ import annotations

import sys

import plotly.io as pio
from plotly.io._base_renderers import MimetypeRenderer

SITE_RENDERER = "mpcourse_site"


class _SiteHtmlRenderer(MimetypeRenderer):
    """HTML that expects ``window.Plotly`` to exist already (no plotly.js, no CDN)."""

    def to_mimebundle(self, fig_dict: dict) -> dict[str, str]:
        html = pio.to_html(
            fig_dict,
            include_plotlyjs=False,
            full_html=False,
            # plotly.js 3 adds a "Share chart" button that uploads the figure to a cloud service:
            # no figure of the course leaves the page, so the modebar goes without it.
            config={"displaylogo": False, "responsive": True, "modeBarButtonsToRemove": ["sendChartToCloud"]},
        )
        return {"text/html": html}


def in_colab() -> bool:
    """True inside a Google Colab runtime."""
    return "google.colab" in sys.modules


def use_site_renderer() -> str:
    """Make ``fig.show()`` emit both plotly's JSON and site-ready HTML; returns the renderer name.

    Does nothing on Colab, whose default ``colab`` renderer already works there.
    """
    if in_colab():
        return pio.renderers.default
    if SITE_RENDERER not in pio.renderers:
        pio.renderers[SITE_RENDERER] = _SiteHtmlRenderer()
    pio.renderers.default = f"plotly_mimetype+{SITE_RENDERER}"
    return pio.renderers.default

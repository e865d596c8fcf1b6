"""mpcourse.plots: figures as site-ready HTML that uses the page's plotly.js and offers no cloud upload."""

from __future__ import annotations

import plotly.graph_objects as go
import plotly.io as pio

from mpcourse import plots


def test_site_html_uses_the_pages_plotly_and_drops_the_cloud_button() -> None:
    name = plots.use_site_renderer()
    assert plots.SITE_RENDERER in name
    bundle = pio.renderers[plots.SITE_RENDERER].to_mimebundle(go.Figure(go.Scatter(y=[1, 2])).to_dict())
    html = bundle["text/html"]
    assert "Plotly.newPlot" in html
    assert "cdn.plot.ly" not in html and len(html) < 100_000, "plotly.js must not be inlined"
    assert '"modeBarButtonsToRemove": ["sendChartToCloud"]' in html
    assert '"displaylogo": false' in html

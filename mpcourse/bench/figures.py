"""Plotly figures of benchmark results that work on the website with no kernel (dropdowns, not widgets)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go

from ..device import PRECISIONS
from .roofline import Roofs, attainable_tflops

__all__ = ["COLORS", "devices_figure", "roofline_figure", "sweep_figure"]

#: One colour per precision, the same in every figure of the course's benchmarks.
COLORS: dict[str, str] = dict(zip(PRECISIONS, plotly.colors.qualitative.D3))


def _show_one_buttons(owners: list[str], title: str) -> list[dict]:
    """Menu buttons that show the traces of one owner at a time (``owners[i]`` owns trace ``i``).

    Each button also puts the owner's name in the title, so that a static page still says what it shows.
    """
    return [
        {
            "label": o,
            "method": "update",
            "args": [{"visible": [x == o for x in owners]}, {"title.text": f"{title}: {o}"}],
        }
        for o in dict.fromkeys(owners)
    ]


def sweep_figure(
    sweeps: Mapping[str, pd.DataFrame], title: str = "Matrix products by precision"
) -> go.Figure:
    """Achieved rate vs size, one line per precision, for each source (this machine, stored results).

    A dropdown picks the source; buttons switch between TFLOP/s and % of the reference peak.
    Each frame is a matmul sweep (:func:`mpcourse.bench.sweeps.matmul_sweep` or a stored table).
    """
    if not sweeps:
        raise ValueError("sweep_figure needs at least one sweep")
    fig = go.Figure()
    owners: list[str] = []
    for source, frame in sweeps.items():
        ran = frame[frame["tflops"].notna()]
        for p in PRECISIONS:
            part = ran[ran["precision"] == p].sort_values("m")
            if part.empty:
                continue
            fig.add_scatter(
                x=part["m"],
                y=part["tflops"],
                customdata=np.stack([part["pct_of_peak"], part["rel_error"]], axis=-1),
                mode="lines+markers",
                name=p,
                legendgroup=p,
                line_color=COLORS[p],
                visible=not owners or owners[0] == source,
                hovertemplate=f"{p}, n=%{{x}}: %{{y:.3g}} TFLOP/s, %{{customdata[0]:.1f}}% of peak, "
                "error %{customdata[1]:.1e}<extra></extra>",
            )
            owners.append(source)
    if not owners:
        raise ValueError("no sweep has a measured row")
    pick_source = _show_one_buttons(owners, title)
    metric = [
        {
            "label": "TFLOP/s",
            "method": "restyle",
            "args": [
                {"y": [_column(sweeps[o], t.name, "tflops") for o, t in zip(owners, fig.data)]},
                list(range(len(owners))),
            ],
        },
        {
            "label": "% of peak",
            "method": "restyle",
            "args": [
                {"y": [_column(sweeps[o], t.name, "pct_of_peak") for o, t in zip(owners, fig.data)]},
                list(range(len(owners))),
            ],
        },
    ]
    fig.update_layout(
        title=f"{title}: {owners[0]}",
        height=460,
        xaxis={"type": "log", "title": "n (an n x n x n product)"},
        yaxis={"title": "TFLOP/s or % of peak", "rangemode": "tozero"},
        legend_title_text="precision",
        updatemenus=[
            {"buttons": pick_source, "x": 0.0, "y": 1.18, "xanchor": "left", "showactive": True},
            {
                "buttons": metric,
                "type": "buttons",
                "direction": "right",
                "x": 1.0,
                "y": 1.18,
                "xanchor": "right",
            },
        ],
        margin={"t": 110},
    )
    return fig


def devices_figure(
    sweeps: Mapping[str, pd.DataFrame], title: str = "Matrix products on each device"
) -> go.Figure:
    """Achieved TFLOP/s vs size, one line per source (device), for one precision at a time.

    :func:`sweep_figure` shows one source with all its precisions; this shows the sources side by
    side, each its own labelled series (two CPUs, or a CPU and a GPU, compared directly), and a
    dropdown picks the precision. A source with no measured row in a precision has no line there.
    """
    if not sweeps:
        raise ValueError("devices_figure needs at least one sweep")
    fig = go.Figure()
    owners: list[str] = []
    for p in PRECISIONS:
        for source, frame in sweeps.items():
            part = frame[(frame["precision"] == p) & frame["tflops"].notna()].sort_values("m")
            if part.empty:
                continue
            status = ", ".join(sorted(set(part["status"])))
            fig.add_scatter(
                x=part["m"],
                y=part["tflops"],
                mode="lines+markers",
                name=f"{source} ({status})",
                visible=not owners or owners[0] == p,
                hovertemplate=f"{source}, {p}, n=%{{x}}: %{{y:.3g}} TFLOP/s<extra></extra>",
            )
            owners.append(p)
    if not owners:
        raise ValueError("no sweep has a measured row")
    buttons = _show_one_buttons(owners, title)
    fig.update_layout(
        title=f"{title}: {owners[0]}",
        height=460,
        xaxis={"type": "log", "title": "n (an n x n x n product)"},
        yaxis={"type": "log", "title": "TFLOP/s"},
        legend={"title_text": "source", "orientation": "h", "y": -0.2},
        updatemenus=[{"buttons": buttons, "x": 0.0, "y": 1.15, "xanchor": "left", "showactive": True}],
        margin={"t": 100},
    )
    return fig


def _column(frame: pd.DataFrame, precision: str, column: str) -> list[float]:
    part = frame[(frame["precision"] == precision) & frame["tflops"].notna()].sort_values("m")
    return part[column].tolist()


def roofline_figure(
    roofs: Sequence[Roofs],
    points: pd.DataFrame | None = None,
    precisions: Sequence[str] = ("fp32", "bf16", "fp8"),
) -> go.Figure:
    """The roofline of each device (a dropdown picks it), one roof per precision, and measured ops as points.

    ``points`` (optional) has columns ``label``, ``precision``, ``intensity`` (FLOP/byte) and
    ``tflops`` (achieved), shown on every device's plot: they were measured on this machine.
    """
    if not roofs:
        raise ValueError("roofline_figure needs at least one device")
    x = np.logspace(-2, 4, 200)
    fig = go.Figure()
    owners: list[int] = []
    for i, r in enumerate(roofs):
        for p in precisions:
            if p not in r.peak_tflops:
                continue
            y = [attainable_tflops(v, r.peak(p), r.bandwidth_gb_s) for v in x]
            fig.add_scatter(
                x=x,
                y=y,
                mode="lines",
                name=f"{p} roof",
                legendgroup=p,
                line_color=COLORS[p],
                visible=i == 0,
                hovertemplate=f"{r.name}, {p}: %{{y:.3g}} TFLOP/s at %{{x:.3g}} FLOP/B<extra></extra>",
            )
            owners.append(i)
    n_roofs = len(owners)
    if points is not None and not points.empty:
        for p, part in points.groupby("precision", sort=False):
            fig.add_scatter(
                x=part["intensity"],
                y=part["tflops"],
                text=part["label"],
                mode="markers",
                name=f"{p}, measured here",
                marker={
                    "color": COLORS.get(str(p), "black"),
                    "size": 9,
                    "symbol": "diamond",
                    "line": {"width": 1, "color": "black"},
                },
                hovertemplate="%{text}: %{x:.3g} FLOP/B, %{y:.3g} TFLOP/s<extra></extra>",
            )
    n_points = len(fig.data) - n_roofs
    buttons = [
        {
            "label": r.name,
            "method": "update",
            "args": [
                {"visible": [o == i for o in owners] + [True] * n_points},
                {"title.text": f"Roofline: {r.name} ({r.source})"},
            ],
        }
        for i, r in enumerate(roofs)
    ]
    fig.update_layout(
        title=f"Roofline: {roofs[0].name} ({roofs[0].source})",
        height=480,
        xaxis={"type": "log", "title": "arithmetic intensity (FLOPs per byte moved)"},
        yaxis={"type": "log", "title": "attainable TFLOP/s"},
        updatemenus=[{"buttons": buttons, "x": 0.0, "y": 1.15, "xanchor": "left"}],
        margin={"t": 100},
    )
    return fig

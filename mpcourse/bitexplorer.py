"""See floating-point formats bit by bit: a live bit explorer (ipywidgets) and its static counterpart.

:func:`explorer` is a widget: pick a format, toggle any bit and see the value and how it is made;
type a value and see the pattern it rounds to and its representable neighbours. It needs a Python
kernel. :func:`patterns_figure` is a plotly figure that works anywhere, the website included: every
bit pattern of the small formats, with its bits and decomposition on hover and a format dropdown.
Both are built on :mod:`mpcourse.formats`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from . import formats

#: Formats offered by the explorer (float64's 64 toggles would not fit a notebook's width).
EXPLORER_FORMATS: tuple[str, ...] = tuple(name for name, f in formats.ALL.items() if f.bits <= 32)
#: Formats small enough to draw every pattern of.
SMALL_FORMATS: tuple[str, ...] = tuple(name for name, f in formats.ALL.items() if f.bits <= 8)
#: Colours of the three fields, used by the widget and the figure alike.
FIELD_STYLE = {"sign": "danger", "exponent": "info", "mantissa": "success"}
CLASS_COLOURS = {
    "normal": "#1f77b4",
    "subnormal": "#ff7f0e",
    "zero": "#7f7f7f",
    "inf": "#d62728",
    "nan": "#9467bd",
}


def _field_of(fmt: formats.FloatFormat, position: int) -> str:
    """Which field bit ``position`` (0 = most significant) belongs to."""
    if fmt.signed and position == 0:
        return "sign"
    return "exponent" if position < int(fmt.signed) + fmt.exponent_bits else "mantissa"


def explain_value(fmt: formats.FloatFormat, value: float) -> str:
    """HTML: what ``value`` becomes in ``fmt`` (pattern, rounding error) and its two neighbours.

    Outside the format's range there is no neighbour on the far side, so instead of listing a NaN or
    infinity as a "neighbour" it says what happens: overflow (and what saturation would store), or,
    for an unsigned format, that a negative value has no pattern.
    """
    try:
        pattern = int(fmt.encode(value))
    except ValueError as err:  # NaN into a format without NaN
        return f"<b>{value!r}</b>: {err}"
    stored = float(fmt.decode(pattern))
    lines = [f"<b>{value!r}</b> is stored as <code>{fmt.bit_string(pattern)}</code> = {stored!r}"]
    if math.isfinite(value) and math.isfinite(stored) and value != 0:
        lines.append(
            f"relative rounding error {abs(stored - value) / abs(value):.3g} (eps/2 = {fmt.eps / 2:.3g})"
        )
    if not math.isfinite(value):
        return "<br>".join(lines)
    if value < 0 and not fmt.signed:
        lines.append(f"{fmt.name} has no sign bit: a negative value has no pattern")
    elif abs(value) > fmt.max and not math.isfinite(stored):
        saturated = float(fmt.round(value, saturate=True))
        lines.append(
            f"beyond the largest finite value {fmt.max!r}: overflow to {stored!r} "
            f"(saturating would store {saturated!r})"
        )
    elif abs(value) > fmt.max:
        why = (
            "the format has neither infinity nor NaN, so it saturates"
            if fmt.nan == "none"
            else "it is at most half a step beyond it (a tie goes to the even pattern)"
        )
        lines.append(f"above the largest finite value {fmt.max!r}, so it rounds to it: {why}")
    else:
        below, above = (float(v) for v in fmt.neighbours(value))
        lines.append(f"neighbours: {below!r} below, {above!r} above")
    return "<br>".join(lines)


def explorer(names: Sequence[str] = EXPLORER_FORMATS, value: float = 1.0):
    """A bit explorer: a format menu, one toggle per bit, a value box, and the decoded result.

    Every interaction is a handful of scalar operations (well under a millisecond).
    """
    import ipywidgets as widgets

    menu = widgets.Dropdown(options=list(names), value=names[0], description="format")
    typed = widgets.Text(value=repr(float(value)), description="value", continuous_update=False)
    bits_box = widgets.HBox()
    readout = widgets.HTML()
    typed_readout = widgets.HTML()
    state = {"busy": False}

    def current_format() -> formats.FloatFormat:
        return formats.get(menu.value)

    def pattern_from_toggles() -> int:
        return int("".join("1" if t.value else "0" for t in bits_box.children), 2)

    def show_pattern(*_: object) -> None:
        if state["busy"]:
            return
        fmt = current_format()
        for t in bits_box.children:
            t.description = "1" if t.value else "0"
        pattern = pattern_from_toggles()
        readout.value = f"<code>0x{pattern:0{(fmt.bits + 3) // 4}x}</code> &nbsp; {fmt.describe(pattern)}"

    def set_pattern(pattern: int) -> None:
        fmt = current_format()
        state["busy"] = True
        for i, t in enumerate(bits_box.children):
            t.value = bool((pattern >> (fmt.bits - 1 - i)) & 1)
        state["busy"] = False
        show_pattern()

    def build_toggles(*_: object) -> None:
        fmt = current_format()
        toggles = []
        for i in range(fmt.bits):
            toggle = widgets.ToggleButton(
                value=False,
                description="0",
                button_style=FIELD_STYLE[_field_of(fmt, i)],
                tooltip=f"bit {fmt.bits - 1 - i} ({_field_of(fmt, i)})",
                layout=widgets.Layout(width="30px", padding="0px"),
            )
            toggle.observe(show_pattern, names="value")
            toggles.append(toggle)
        bits_box.children = toggles
        apply_typed()

    def apply_typed(*_: object) -> None:
        fmt = current_format()
        try:
            x = float(typed.value)
        except ValueError:
            typed_readout.value = f"<i>{typed.value!r} is not a number; try 0.1, 1e-5, 448, inf or nan</i>"
            return
        typed_readout.value = explain_value(fmt, x)
        if fmt.nan == "none" and math.isnan(x):
            return
        set_pattern(int(fmt.encode(x)))

    menu.observe(build_toggles, names="value")
    typed.observe(apply_typed, names="value")
    build_toggles()
    legend = widgets.HTML(
        "Toggle bits: <span style='color:#d9534f'>sign</span>, <span style='color:#5bc0de'>exponent</span>, "
        "<span style='color:#5cb85c'>mantissa</span>. Or type a value (press Enter)."
    )
    return widgets.VBox([widgets.HBox([menu, typed]), legend, bits_box, readout, typed_readout])


def patterns_figure(names: Sequence[str] = SMALL_FORMATS) -> go.Figure:
    """Every bit pattern of each format: magnitude on a log axis, bits and decomposition on hover.

    Zeros cannot sit on a log axis and are drawn at the bottom edge; NaN and infinity patterns at the
    top edge. A dropdown picks the format. Works with no Python kernel (plotly's own controls).
    """
    fig = go.Figure()
    for k, name in enumerate(names):
        fmt = formats.get(name)
        patterns = np.arange(1 << fmt.bits)
        values = fmt.decode(patterns)
        kinds = fmt.classify(patterns)
        bits = fmt.bit_string(patterns)
        floor, ceiling = fmt.smallest_subnormal / 4, fmt.max * 4
        magnitude = np.where(np.isfinite(values), np.abs(values), ceiling)
        magnitude = np.where(values == 0, floor, magnitude)
        hover = [
            f"pattern 0x{p:02x} = {b}<br>{fmt.describe(int(p)).split(': ', 1)[-1]}"
            for p, b in zip(patterns, bits)
        ]
        fig.add_scatter(
            x=patterns,
            y=magnitude,
            mode="markers",
            name=name,
            visible=k == 0,
            marker={
                "color": [CLASS_COLOURS[c] for c in kinds],
                "size": 6,
                "symbol": ["x" if c in ("nan", "inf") else "circle" for c in kinds],
            },
            hovertext=hover,
            hoverinfo="text",
        )
    buttons = [
        {
            "label": name,
            "method": "update",
            "args": [
                {"visible": [j == k for j in range(len(names))]},
                {"title.text": _title(formats.get(name))},
            ],
        }
        for k, name in enumerate(names)
    ]
    fig.update_layout(
        title=_title(formats.get(names[0])),
        updatemenus=[{"buttons": buttons, "x": 1.0, "xanchor": "right", "y": 1.15, "yanchor": "top"}],
        xaxis_title="bit pattern (as an unsigned integer)",
        yaxis={
            "type": "log",
            "title": "|value| (zero at the bottom, NaN and inf at the top)",
            "exponentformat": "power",
        },
        height=450,
        showlegend=False,
        margin={"t": 90},
    )
    return fig


def _title(fmt: formats.FloatFormat) -> str:
    counts = {
        k: int(v) for k, v in zip(*np.unique(fmt.classify(np.arange(1 << fmt.bits)), return_counts=True))
    }
    parts = ", ".join(f"{counts.get(k, 0)} {k}" for k in CLASS_COLOURS if counts.get(k))
    return f"{fmt.name}: every pattern ({parts}); hover a point"

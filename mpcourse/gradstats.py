"""Where a model's gradients sit on the number line, and how much of them a format can hold.

Loss scaling exists because gradients are small: many of them lie below the smallest number fp16
can represent, and the question "does my model need a loss scaler?" is answered by looking at
them. This module collects gradients and measures them against any format of
:mod:`mpcourse.formats` (fp16, bf16, the fp8 formats, custom ones)::

    from mpcourse import gradstats

    with gradstats.capture(model) as grads:          # hooks on every layer
        loss_fn(model(x), y).backward()
    grads.activations["net.3"]                       # dL/d(output of layer net.3), as computed
    grads.weights["net.3.weight"]                    # the weight's .grad after backward
    gradstats.window(grads.values("activations"), "fp16", scale=2**10)   # fractions out of range
    gradstats.log2_histogram(grads.values("activations"))                # counts per binade
    gradstats.plot_window([hist_a, hist_w], "fp16").show()               # histograms + fp16's window

Two kinds of gradient matter, and the literature distinguishes them (Micikevicius et al., ICLR 2018):

- **activation gradients**, dL/dy for the output y of each layer: what backpropagation passes from
  layer to layer, computed in the autocast dtype (fp16 under fp16 autocast), so they are the ones
  that underflow on the way;
- **weight gradients**, ``p.grad``: what the optimizer consumes (fp32 with fp32 master weights).

Everything is exact: binades come from ``torch.frexp`` (no ``log2`` rounding), and whether a
value underflows (rounds to zero) or overflows in a format is decided by rounding it to that
format with :func:`mpcourse.formats.round_tensor`, not by comparing with a threshold typed by hand.
(Underflow is rounding, the same on every machine; hardware that flushes subnormals to zero is a
different matter, which this module does not model.)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from torch import nn

from . import formats

KINDS: tuple[str, ...] = ("activations", "weights", "all")

#: The rows of :func:`window`, in order, with what each one counts.
WINDOW_ROWS: dict[str, str] = {
    "zero": "exactly zero before scaling (no format can lose these: they are not underflow)",
    "underflows_to_zero": "non-zero, but rounds to zero in the format",
    "below_smallest_subnormal": "non-zero and below the smallest subnormal (those up to half of it round to zero, the rest up to it)",
    "subnormal": "between the smallest subnormal and the smallest normal: kept, with fewer significant bits",
    "below_smallest_normal": "non-zero and below the smallest normal (underflows to zero, or rounds to a subnormal)",
    "normal": "in the normal range [smallest normal, max]: kept with full precision",
    "above_max": "larger than the largest finite value (overflow, or rounds down to max)",
    "overflow": "rounds to infinity or NaN in the format (saturates instead, for formats without infinity)",
    "nonfinite": "already inf or NaN before scaling",
}


# ---- collecting gradients ----------------------------------------------------------------------


@dataclass
class GradientSnapshot:
    """The gradients of one backward pass, as the framework computed them (dtype kept).

    ``activations`` maps a module name to dL/d(output) of that module (concatenated if the module
    ran several times); ``weights`` maps a parameter name to its ``.grad``. Both are detached
    copies on the device where they were computed.
    """

    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)

    def values(self, kind: str = "activations") -> torch.Tensor:
        """Every gradient value of one kind (``"activations"``, ``"weights"`` or ``"all"``), flat, in
        float32 on the CPU (exact: fp16 and bf16 values are float32 values)."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; accepted: {', '.join(KINDS)}")
        groups = [self.activations, self.weights] if kind == "all" else [getattr(self, kind)]
        parts = [t.detach().reshape(-1).float().cpu() for g in groups for t in g.values()]
        if not parts:
            raise ValueError(
                f"no {kind} gradients were recorded: run the forward pass and backward() inside "
                "`with gradstats.capture(model) as grads:`"
            )
        return torch.cat(parts)

    def dtypes(self) -> dict[str, str]:
        """The dtypes the gradients were computed in, per kind (e.g. activations float16, weights float32)."""

        def names(d: dict[str, torch.Tensor]) -> str:
            return "/".join(sorted({formats.dtype_name(t.dtype) for t in d.values()})) or "none"

        return {"activations": names(self.activations), "weights": names(self.weights)}


def _default_modules(name: str, module: nn.Module) -> bool:
    """Every leaf module (one without children): the layers whose outputs backpropagation visits."""
    return next(module.children(), None) is None


@contextlib.contextmanager
def capture(
    model: nn.Module, modules: Callable[[str, nn.Module], bool] | None = None
) -> Iterator[GradientSnapshot]:
    """Record the activation and weight gradients of the backward pass run inside the block.

    A forward hook on each chosen module attaches a tensor hook to the module's output; the tensor
    hook fires during backward with dL/d(output) and stores a copy (the gradient flowing on is not
    touched). Weight gradients are read from ``.grad`` when the block ends, so run ``backward()``
    inside it, and zero the gradients before (``.grad`` accumulates).

    Args:
        model: the network.
        modules: ``modules(name, module) -> bool`` chooses which modules' outputs to record
            (default: every leaf module; outputs that do not require grad are skipped).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"capture expects an nn.Module, got {type(model).__name__}")
    choose = modules or _default_modules
    snapshot = GradientSnapshot()
    pieces: dict[str, list[torch.Tensor]] = {}
    handles: list[Any] = []

    def forward_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(lambda grad: pieces.setdefault(name, []).append(grad.detach().clone()))

        return hook

    for name, module in model.named_modules():
        if name and choose(name, module):
            handles.append(module.register_forward_hook(forward_hook(name)))
    try:
        yield snapshot
    finally:
        for handle in handles:
            handle.remove()
        snapshot.activations.update(
            {
                name: torch.cat([p.reshape(-1) for p in parts]) if len(parts) > 1 else parts[0]
                for name, parts in pieces.items()
            }
        )
        snapshot.weights.update(
            {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
        )


# ---- measuring them ------------------------------------------------------------------------------


def _as_float64(values: torch.Tensor | np.ndarray | Sequence[float]) -> torch.Tensor:
    t = values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    if not t.is_floating_point():
        raise TypeError(f"expected floating-point values, got {t.dtype}")
    return t.detach().reshape(-1).to(torch.float64)


def _check_scale(scale: float) -> float:
    scale = float(scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite positive number, got {scale}")
    return scale


def binades(values: torch.Tensor) -> torch.Tensor:
    """``floor(log2 |x|)`` of each finite non-zero value (as int64), exactly.

    ``torch.frexp`` writes ``x = m * 2^e`` with ``0.5 <= |m| < 1``, so ``floor(log2 |x|) = e - 1``
    with no rounding (``torch.log2`` can round a value just below a power of two up to it).
    """
    x = _as_float64(values)
    x = x[torch.isfinite(x) & (x != 0)]
    return torch.frexp(x).exponent.to(torch.int64) - 1


@dataclass(frozen=True)
class Log2Histogram:
    """Counts of values per binade ``[2^k, 2^(k+1))`` of their magnitude, plus what has no binade.

    ``exponents[i]`` is k, ``counts[i]`` the number of values with ``floor(log2|x|) == k``;
    ``below`` / ``above`` count finite non-zero values outside ``exponents``; ``zeros`` and
    ``nonfinite`` are counted apart. ``total`` is every value.
    """

    label: str
    exponents: np.ndarray
    counts: np.ndarray
    zeros: int
    nonfinite: int
    below: int
    above: int

    @property
    def total(self) -> int:
        return int(self.counts.sum()) + self.zeros + self.nonfinite + self.below + self.above

    def fractions(self) -> np.ndarray:
        """``counts / total``: the fraction of *all* values (zeros included) in each binade."""
        return self.counts / max(self.total, 1)

    def shifted(self, log2_scale: int) -> Log2Histogram:
        """The histogram of the values multiplied by ``2^log2_scale`` (exact: a power-of-two scale
        moves every value by whole binades, and zeros stay zeros)."""
        if int(log2_scale) != log2_scale:
            raise ValueError(f"log2_scale must be a whole number (a power-of-two scale), got {log2_scale}")
        return Log2Histogram(
            self.label,
            self.exponents + int(log2_scale),
            self.counts,
            self.zeros,
            self.nonfinite,
            self.below,
            self.above,
        )


def log2_histogram(values: Any, *, lo: int = -64, hi: int = 20, label: str = "") -> Log2Histogram:
    """Histogram of ``floor(log2 |x|)`` over the binades ``lo..hi`` (see :class:`Log2Histogram`)."""
    if not lo < hi:
        raise ValueError(f"need lo < hi, got lo={lo}, hi={hi}")
    x = _as_float64(values)
    finite = torch.isfinite(x)
    e = binades(x)
    counts = torch.bincount((e.clamp(lo, hi) - lo), minlength=hi - lo + 1)
    below, above = int((e < lo).sum()), int((e > hi).sum())
    counts[0] -= below
    counts[-1] -= above
    return Log2Histogram(
        label=label,
        exponents=np.arange(lo, hi + 1),
        counts=counts.numpy(),
        zeros=int((x == 0).sum()),
        nonfinite=int((~finite).sum()),
        below=below,
        above=above,
    )


def window(values: Any, fmt: Any = "fp16", scale: float = 1.0) -> pd.Series:
    """Where ``values * scale`` fall relative to a format's range, as fractions of all values.

    Rows (see :data:`WINDOW_ROWS`): ``zero``, ``underflows_to_zero``, ``below_smallest_subnormal``,
    ``subnormal``, ``below_smallest_normal``, ``normal``, ``above_max``, ``overflow``,
    ``nonfinite``; each a fraction of every value passed (zeros included), so that a reader can
    tell "67% are exactly zero" (no format loses those) from "67% underflow". Scaling is done in
    float64 (exact for any power-of-two scale), and ``underflows_to_zero`` / ``overflow`` come from
    rounding to the format (round to nearest even), so they are exact for any format.

    Args:
        values: a tensor or array of gradient values (any floating dtype).
        fmt: a format or anything :func:`mpcourse.formats.get` accepts (``"fp16"``, ``"bf16"``, ...).
        scale: the loss scale to apply first.
    """
    fmt = formats.get(fmt)
    scale = _check_scale(scale)
    x = _as_float64(values)
    n = max(x.numel(), 1)
    finite = torch.isfinite(x)
    scaled = x * scale
    mag = scaled.abs()
    nonzero = finite & (x != 0)
    ss, tiny, top = fmt.smallest_subnormal, fmt.tiny, fmt.max
    underflows, overflow = _underflows_and_overflow(scaled[nonzero], fmt)
    counts = {
        "zero": int((x == 0).sum()),
        "underflows_to_zero": underflows,
        "below_smallest_subnormal": int((nonzero & (mag < ss)).sum()),
        "subnormal": int((nonzero & (mag >= ss) & (mag < tiny)).sum()) if fmt.subnormals else 0,
        "below_smallest_normal": int((nonzero & (mag < tiny)).sum()),
        "normal": int((nonzero & (mag >= tiny) & (mag <= top)).sum()),
        "above_max": int((nonzero & (mag > top)).sum()),
        "overflow": overflow,
        "nonfinite": int((~finite).sum()),
    }
    return pd.Series({k: v / n for k, v in counts.items()}, name=f"{fmt.name} x{scale:g}")


def _underflows_and_overflow(x: torch.Tensor, fmt: formats.FloatFormat) -> tuple[int, int]:
    """How many of the (finite, non-zero, float64) values round to zero, and to inf/NaN, in ``fmt``.

    For IEEE-style formats (subnormals, infinities) round-to-nearest-even has two exact thresholds:
    a magnitude at most half the smallest subnormal rounds to zero (the tie goes to zero, which is
    even), and one at least ``max`` plus half the spacing at ``max`` rounds to infinity (the tie goes
    up, since ``max`` has an odd significand). Other formats are rounded value by value.
    """
    mag = x.abs()
    if fmt.nan == "ieee" and fmt.has_inf and fmt.subnormals:
        half_spacing_at_max = math.ldexp(1.0, fmt.emax - fmt.mantissa_bits - 1)
        return int((mag <= fmt.smallest_subnormal / 2).sum()), int(
            (mag >= fmt.max + half_spacing_at_max).sum()
        )
    rounded = formats.round_tensor(x, fmt)
    return int((rounded == 0).sum()), int((~torch.isfinite(rounded)).sum())


def underflow_table(snapshot: GradientSnapshot, fmt: Any = "fp16", scale: float = 1.0) -> pd.DataFrame:
    """:func:`window` for every recorded tensor of a snapshot: one row per layer or parameter,
    with its kind and size, so that the layers that lose their gradients stand out."""
    rows = []
    for kind in ("activations", "weights"):
        for name, t in getattr(snapshot, kind).items():
            row = window(t, fmt, scale)
            rows.append({"kind": kind, "name": name, "values": t.numel(), **row.to_dict()})
    if not rows:
        raise ValueError("the snapshot holds no gradients: record some with gradstats.capture(model)")
    return pd.DataFrame(rows).set_index(["kind", "name"])


# ---- drawing them --------------------------------------------------------------------------------


def format_window(fmt: Any) -> dict[str, float]:
    """The log2 landmarks of a format's positive range, for drawing: smallest subnormal, smallest
    normal and max (``log2(max)`` is not a whole number for most formats)."""
    fmt = formats.get(fmt)
    return {
        "smallest_subnormal": math.log2(fmt.smallest_subnormal),
        "smallest_normal": math.log2(fmt.tiny),
        "max": math.log2(fmt.max),
    }


def window_layout(fmt: Any, scale_log2: float = 0.0) -> dict[str, list[dict[str, Any]]]:
    """Plotly ``shapes`` and ``annotations`` that shade a format's subnormal and normal ranges on
    an axis of log2 |unscaled gradient|, for a loss scale of ``2^scale_log2``.

    Multiplying the gradients by ``2^s`` is the same, on a log axis, as moving the window by ``-s``
    binades: the figure keeps the measured gradients where they are and slides the window, which is
    also what a slider step of :func:`plot_window` swaps in.
    """
    fmt = formats.get(fmt)
    w = format_window(fmt)
    lo, mid, hi = (w[k] - scale_log2 for k in ("smallest_subnormal", "smallest_normal", "max"))
    shapes, annotations = [], []
    for x0, x1, color, text in (
        (mid, hi, "#2ca02c", f"{fmt.name} normal"),
        (lo, mid, "#ff7f0e", "subnormal"),
    ):
        shapes.append(
            dict(
                type="rect",
                xref="x",
                yref="paper",
                x0=x0,
                x1=x1,
                y0=0,
                y1=1,
                fillcolor=color,
                opacity=0.15,
                line=dict(width=0),
                layer="below",
            )
        )
        annotations.append(
            dict(
                x=x0,
                y=1,
                xref="x",
                yref="paper",
                text=text,
                showarrow=False,
                xanchor="left",
                yanchor="bottom",
                font=dict(size=11),
            )
        )
    return {"shapes": shapes, "annotations": annotations}


def plot_window(
    histograms: Sequence[Log2Histogram],
    fmt: Any = "fp16",
    *,
    scales_log2: Sequence[int] | None = None,
    title: str | None = None,
) -> go.Figure:
    """Histograms of log2 |gradient| with a format's representable window shaded over them.

    Each histogram is drawn as the fraction of all its values per binade (zeros are not drawn, but
    the legend says how many there are). With ``scales_log2``, the figure gets a plotly slider
    (it works on the static website, with no Python behind it) that multiplies the gradients by
    ``2^s``: drawn as the window sliding left by ``s`` binades, the legend reporting for each
    histogram how much underflows to zero and how much overflows at that scale.
    """
    fmt = formats.get(fmt)
    if not histograms or not all(isinstance(h, Log2Histogram) for h in histograms):
        raise TypeError(
            "plot_window expects a non-empty list of Log2Histogram (from gradstats.log2_histogram)"
        )
    fig = go.Figure()
    palette = ["#1f77b4", "#d62728", "#9467bd", "#8c564b", "#17becf", "#7f7f7f"]
    for i, h in enumerate(histograms):
        zero_share = h.zeros / max(h.total, 1)
        fig.add_bar(
            x=h.exponents,
            y=h.fractions(),
            name=f"{h.label or f'series {i}'} ({zero_share:.0%} exact zeros)",
            marker_color=palette[i % len(palette)],
            opacity=0.7,
            hovertemplate="[2^%{x}, 2^(%{x}+1)): %{y:.2%} of values<extra></extra>",
        )
    fig.update_layout(**window_layout(fmt))
    fig.update_layout(
        barmode="overlay",
        bargap=0,
        height=560 if scales_log2 else 460,
        margin=dict(t=130),
        title=title or f"Gradient magnitudes and {fmt.name}'s window",
        xaxis_title="log2 |gradient| (binade k holds [2^k, 2^(k+1)))",
        yaxis_title="fraction of all values",
        legend=dict(orientation="h", yanchor="bottom", y=1.08, x=0),
    )
    fig.update_xaxes(range=_x_range(histograms, fmt, scales_log2 or [0]))
    fig.update_yaxes(tickformat=".0%")
    if scales_log2:
        steps = []
        for s in scales_log2:
            labels = [_scale_label(h, fmt, s) for h in histograms]
            steps.append(
                dict(
                    method="update",
                    label=str(int(s)),
                    args=[
                        {"name": labels},
                        {
                            **window_layout(fmt, s),
                            "title.text": f"{title or 'Gradients'}: loss multiplied by 2^{int(s)}",
                        },
                    ],
                )
            )
        active = list(scales_log2).index(0) if 0 in scales_log2 else 0
        fig.update_layout(
            sliders=[
                dict(
                    active=active,
                    currentvalue=dict(prefix="loss multiplied by 2^"),
                    steps=steps,
                    pad=dict(t=70),
                )
            ]
        )
        for trace, label in zip(fig.data, steps[active]["args"][0]["name"]):
            trace.name = label
        fig.update_layout(**window_layout(fmt, scales_log2[active]))
    return fig


def _x_range(
    histograms: Sequence[Log2Histogram], fmt: formats.FloatFormat, scales_log2: Sequence[int]
) -> list[float]:
    """An x range that shows every non-empty binade and the whole window at every slider position."""
    w = format_window(fmt)
    filled = [h.exponents[h.counts > 0] for h in histograms if h.counts.any()]
    lo = min([w["smallest_subnormal"] - max(scales_log2)] + [float(e.min()) for e in filled])
    hi = max([w["max"] - min(scales_log2)] + [float(e.max()) + 1 for e in filled])
    return [math.floor(lo) - 1, math.ceil(hi) + 1]


def _scale_label(h: Log2Histogram, fmt: formats.FloatFormat, log2_scale: int) -> str:
    """Legend text for one histogram at one scale, counted from whole binades: the values below
    ``2^floor(log2 smallest subnormal)`` and at or above ``2^(floor(log2 max) + 1)`` once scaled
    (for fp16: below 2^-24, and at least 2^16 > 65504)."""
    w = format_window(fmt)
    low, high = math.floor(w["smallest_subnormal"]), math.floor(w["max"]) + 1
    e = h.exponents + log2_scale
    n = max(h.total, 1)
    if (h.below and e[0] > low) or (h.above and e[-1] + 1 < high):
        raise ValueError(
            f"histogram {h.label!r} covers binades {h.exponents[0]}..{h.exponents[-1]}, too few to judge a "
            f"loss scale of 2^{log2_scale}; build it with a wider log2_histogram(lo=..., hi=...)"
        )
    below = (h.counts[e < low].sum() + h.below) / n
    above = (h.counts[e >= high].sum() + h.above) / n
    return f"{h.label}: {below:.1%} below 2^{low}, {above:.1%} at or above 2^{high}"

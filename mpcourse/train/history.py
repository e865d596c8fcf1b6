"""What a training run leaves behind: a :class:`History`, and helpers to compare several."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from torch import nn

from .recipes import Recipe

#: The columns of :attr:`History.frame`, one row per step.
COLUMNS: tuple[str, ...] = (
    "step",
    "loss",
    "accuracy",
    "samples_per_s",
    "tokens_per_s",
    "peak_memory_bytes",
    "loss_scale",
    "skipped_steps",
    "eval_loss",
    "eval_accuracy",
)

#: Labels of the metrics :func:`plot_histories` can draw.
METRIC_LABELS: dict[str, str] = {
    "loss": "training loss (smoothed)",
    "accuracy": "training accuracy (smoothed)",
    "eval_loss": "held-out loss",
    "eval_accuracy": "held-out accuracy",
    "samples_per_s": "samples per second",
    "tokens_per_s": "tokens per second",
    "peak_memory_bytes": "peak memory (MB)",
    "loss_scale": "loss scale",
    "skipped_steps": "skipped steps (cumulative)",
}


@dataclass
class History:
    """One training run: per-step metrics in :attr:`frame`, and what the engine noted on the way.

    ``frame`` columns: ``step``; training ``loss`` and ``accuracy`` of each step's batch;
    ``samples_per_s`` (and ``tokens_per_s``, for language models) of each step, measured with the
    wall clock after the step's results reached the host; ``peak_memory_bytes`` so far (see
    ``memory_note``); ``loss_scale`` after the step (NaN without a scaler); cumulative
    ``skipped_steps``; ``eval_loss`` and ``eval_accuracy`` on held-out data at evaluation steps
    (NaN elsewhere).
    """

    label: str
    recipe: Recipe
    frame: pd.DataFrame
    notes: list[str]
    status: str
    device: str
    dtypes: dict[str, str]
    config: dict[str, Any]
    memory_note: str
    model: nn.Module = field(repr=False)

    def __repr__(self) -> str:
        s = self.summary()
        return (
            f"History({self.label!r}: {int(s['steps'])} steps on {self.device} ({self.status}), "
            f"final loss {s['final_loss']:.4g}, eval accuracy {s['eval_accuracy']:.3f}, "
            f"{s['samples_per_s']:.0f} samples/s, {int(s['skipped_steps'])} skipped)"
        )

    @property
    def diverged(self) -> bool:
        """True if the run stopped early because its loss stopped being finite."""
        return len(self.frame) < self.config["steps"]

    def summary(self, tail: float = 0.1) -> pd.Series:
        """One row: final loss (mean over the last ``tail`` of the steps), last held-out accuracy,
        median throughput (after the first 10% of steps, which include warm-up), peak memory and
        skipped steps."""
        f = self.frame
        n_tail = max(1, math.ceil(len(f) * tail))
        warm = f.iloc[len(f) // 10 :] if len(f) >= 10 else f
        evals = f["eval_accuracy"].dropna()
        eval_losses = f["eval_loss"].dropna()
        return pd.Series(
            {
                "recipe": self.recipe.name,
                "status": self.status,
                "steps": len(f),
                "final_loss": f["loss"].tail(n_tail).mean() if len(f) else math.nan,
                "eval_loss": eval_losses.iloc[-1] if len(eval_losses) else math.nan,
                "eval_accuracy": evals.iloc[-1] if len(evals) else math.nan,
                "samples_per_s": warm["samples_per_s"].median() if len(f) else math.nan,
                "peak_memory_bytes": f["peak_memory_bytes"].max() if len(f) else math.nan,
                "skipped_steps": int(f["skipped_steps"].iloc[-1]) if len(f) else 0,
            },
            name=self.label,
        )


def compare(histories: Sequence[History]) -> pd.DataFrame:
    """A table with one row per run (see :meth:`History.summary`), indexed by label."""
    _check_histories(histories)
    return pd.DataFrame([h.summary() for h in histories])


def _check_histories(histories: Sequence[History]) -> None:
    if not histories or not all(isinstance(h, History) for h in histories):
        raise TypeError("expected a non-empty list of History objects (what mpcourse.train.train returns)")
    labels = [h.label for h in histories]
    if len(set(labels)) != len(labels):
        raise ValueError(f"runs need distinct labels to be compared, got {labels}; pass label= to train()")


def smooth(values: pd.Series, weight: float) -> pd.Series:
    """Exponential moving average, bias-corrected (as TensorBoard smooths curves); NaNs are skipped."""
    if not 0 <= weight < 1:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    return values.ewm(alpha=1 - weight, adjust=True, ignore_na=True).mean()


def plot_histories(
    histories: Sequence[History],
    metrics: Sequence[str] = ("loss", "eval_accuracy", "samples_per_s", "loss_scale"),
    *,
    smoothing: float = 0.8,
    title: str | None = None,
) -> go.Figure:
    """Curves of several runs side by side, one panel per metric, one colour per run.

    Metrics that no run recorded (e.g. ``loss_scale`` when no run used a scaler) are left out.
    Training loss and accuracy are smoothed (``smoothing`` is the EMA weight; 0 = raw).
    """
    _check_histories(histories)
    unknown = [m for m in metrics if m not in METRIC_LABELS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; accepted: {', '.join(METRIC_LABELS)}")
    shown = [m for m in metrics if any(h.frame[m].notna().any() for h in histories)]
    cols = min(2, len(shown)) or 1
    rows = max(1, math.ceil(len(shown) / cols))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[METRIC_LABELS[m] for m in shown])
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    for i, h in enumerate(histories):
        color = palette[i % len(palette)]
        for j, metric in enumerate(shown):
            f = h.frame[["step", metric]].dropna()
            y = f[metric]
            if metric in ("loss", "accuracy") and smoothing:
                y = smooth(y, smoothing)
            if metric == "peak_memory_bytes":
                y = y / 1e6
            fig.add_scatter(
                x=f["step"],
                y=y,
                mode="lines+markers" if metric.startswith("eval") else "lines",
                name=h.label,
                legendgroup=h.label,
                showlegend=j == 0,
                line_color=color,
                row=j // cols + 1,
                col=j % cols + 1,
                hovertemplate=f"{h.label}, step %{{x}}: %{{y:.4g}}<extra></extra>",
            )
    for j, metric in enumerate(shown):
        if metric == "loss_scale":
            fig.update_yaxes(type="log", exponentformat="power", row=j // cols + 1, col=j % cols + 1)
        fig.update_xaxes(title_text="step", row=j // cols + 1, col=j % cols + 1)
    fig.update_layout(height=300 * rows + 80, title=title, legend_title_text="run")
    return fig

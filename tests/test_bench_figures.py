"""mpcourse.bench.figures: several devices stay separate, labelled series."""

from __future__ import annotations

import pandas as pd
import pytest

from mpcourse.bench import figures


def _sweep(rate: float, bf16_status: str) -> pd.DataFrame:
    rows = [
        {
            "precision": p,
            "m": n,
            "tflops": rate * n / 1024 * (2 if p == "bf16" else 1),
            "pct_of_peak": 50.0,
            "rel_error": 1e-3,
            "status": bf16_status if p == "bf16" else "native",
        }
        for p in ("fp32", "bf16")
        for n in (256, 1024)
    ]
    return pd.DataFrame(rows)


def test_devices_figure_has_one_labelled_series_per_device_and_precision() -> None:
    sources = {
        "AMD EPYC (flags: avx2)": _sweep(0.05, "emulated"),
        "Intel Xeon (flags: amx_bf16)": _sweep(0.4, "native"),
    }
    fig = figures.devices_figure(sources)
    names = [t.name for t in fig.data]
    assert names == [
        "AMD EPYC (flags: avx2) (native)",
        "Intel Xeon (flags: amx_bf16) (native)",
        "AMD EPYC (flags: avx2) (emulated)",
        "Intel Xeon (flags: amx_bf16) (native)",
    ]
    assert [t.visible for t in fig.data] == [True, True, False, False]  # fp32 first; the dropdown shows bf16
    (menu,) = fig.layout.updatemenus
    assert [b.label for b in menu.buttons] == ["fp32", "bf16"]
    assert menu.buttons[1].args[0]["visible"] == [False, False, True, True]


def test_devices_figure_needs_measurements() -> None:
    with pytest.raises(ValueError, match="at least one sweep"):
        figures.devices_figure({})
    empty = _sweep(0.1, "native").assign(tflops=float("nan"))
    with pytest.raises(ValueError, match="no sweep has a measured row"):
        figures.devices_figure({"x": empty})

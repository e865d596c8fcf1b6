"""mpcourse.bitexplorer: the value explanation, the live widget's bit toggles, the static patterns figure.

The expected patterns, values and class counts are derived by hand from the format definitions (and
from numpy's float16 where it has the format), not from the module under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mpcourse import bitexplorer, formats

ipywidgets = pytest.importorskip("ipywidgets")


# ---- explain_value --------------------------------------------------------------------------------


def test_explain_value_gives_pattern_error_and_neighbours() -> None:
    text = bitexplorer.explain_value(formats.FP16, 0.1)
    stored = np.float16(0.1)  # numpy's own rounding to fp16: just below 0.1
    assert float(stored) < 0.1
    below, above, stored = float(stored), float(np.nextafter(stored, np.float16(1))), float(stored)
    assert "<code>0 01011 1001100110</code>" in text and f"= {stored!r}" in text
    assert f"relative rounding error {abs(stored - 0.1) / 0.1:.3g} (eps/2 = {2.0**-11:.3g})" in text
    assert f"neighbours: {below!r} below, {above!r} above" in text


def test_explain_value_of_exact_values_zero_and_infinity() -> None:
    one = bitexplorer.explain_value(formats.BF16, 1.0)
    assert "<code>0 01111111 0000000</code> = 1.0" in one and "relative rounding error 0 " in one
    assert "neighbours: 1.0 below, 1.0 above" in one
    zero = bitexplorer.explain_value(formats.FP16, 0.0)
    assert "relative rounding error" not in zero and "neighbours: 0.0 below, 0.0 above" in zero
    inf = bitexplorer.explain_value(formats.FP16, math.inf)
    assert "<code>0 11111 0000000000</code> = inf" in inf and "neighbours" not in inf


def test_explain_value_beyond_max_says_overflow_or_rounding_to_max() -> None:
    e4m3, fp16 = formats.E4M3, formats.FP16
    overflow = bitexplorer.explain_value(e4m3, 1000.0)
    assert "= nan" in overflow and "overflow to nan (saturating would store 448.0)" in overflow
    assert "neighbours" not in overflow  # there is no neighbour above max
    tie = bitexplorer.explain_value(e4m3, 464.0)  # halfway between 448 and the next step, 480: even is 448
    assert "= 448.0" in tie and "rounds to it" in tie and "a tie goes to the even pattern" in tie
    negative = bitexplorer.explain_value(fp16, -70000.0)
    assert "= -inf" in negative and "saturating would store -65504.0" in negative
    fp4 = bitexplorer.explain_value(formats.E2M1, 100.0)
    assert "= 6.0" in fp4 and "neither infinity nor NaN, so it saturates" in fp4


def test_explain_value_special_cases_of_the_conventions() -> None:
    assert "has no NaN" in bitexplorer.explain_value(formats.E2M1, math.nan)
    unsigned = bitexplorer.explain_value(formats.E8M0, -1.0)
    assert "= nan" in unsigned and "no sign bit" in unsigned
    assert "<code>01111111</code> = 1.0" in bitexplorer.explain_value(formats.E8M0, 1.0)


# ---- the live explorer --------------------------------------------------------------------------


def _parts(widget):
    """(menu, typed, toggles, readout, typed_readout) of an explorer widget."""
    (row, _legend, bits_box, readout, typed_readout) = widget.children
    menu, typed = row.children
    return menu, typed, list(bits_box.children), readout, typed_readout


def _pattern(toggles) -> int:
    return int("".join("1" if t.value else "0" for t in toggles), 2)


def test_explorer_starts_on_the_typed_value() -> None:
    menu, _typed, toggles, readout, typed_readout = _parts(bitexplorer.explorer(value=0.1))
    assert menu.value == "float32" and "float64" not in menu.options  # 64 toggles would not fit
    assert len(toggles) == 32 and _pattern(toggles) == 0x3DCCCCCD  # fp32's 0.1, from the IEEE definition
    assert [t.description for t in toggles] == [str(int(t.value)) for t in toggles]
    assert "0x3dcccccd" in readout.value and "0.10000000149011612" in readout.value
    assert typed_readout.value == bitexplorer.explain_value(formats.FP32, 0.1)


def test_explorer_bit_toggles_change_the_value() -> None:
    widget = bitexplorer.explorer(["float16", "float8_e4m3fn"], value=1.0)
    _menu, _typed, toggles, readout, _ = _parts(widget)
    assert _pattern(toggles) == 0x3C00 and "= 1.0" in readout.value
    toggles[0].value = True  # the sign bit
    assert toggles[0].description == "1" and "0xbc00" in readout.value and "= -1.0" in readout.value
    toggles[-1].value = True  # the last mantissa bit: -(1 + 2^-10)
    assert "0xbc01" in readout.value and f"= {-(1 + 2.0**-10)!r}" in readout.value
    toggles[1].value = True  # the top exponent bit on top of 0xbc01: 0xfc01 is a NaN
    assert "0xfc01" in readout.value and "(nan)" in readout.value
    styles = [t.button_style for t in toggles]
    assert styles == ["danger"] + ["info"] * 5 + ["success"] * 10
    assert toggles[0].tooltip == "bit 15 (sign)" and toggles[-1].tooltip == "bit 0 (mantissa)"


def test_explorer_format_menu_and_typed_values() -> None:
    widget = bitexplorer.explorer(["float16", "float8_e4m3fn"], value=1.0)
    menu, typed, _, _, typed_readout = _parts(widget)
    menu.value = "float8_e4m3fn"
    toggles = _parts(widget)[2]
    assert len(toggles) == 8 and _pattern(toggles) == 0x38  # 1.0 in E4M3: exponent 7 = bias, mantissa 0
    assert [t.button_style for t in toggles] == ["danger"] + ["info"] * 4 + ["success"] * 3
    typed.value = "-448"
    assert _pattern(toggles) == 0xFE
    assert typed_readout.value == bitexplorer.explain_value(formats.E4M3, -448.0)
    typed.value = "abc"
    assert "is not a number" in typed_readout.value and _pattern(toggles) == 0xFE  # nothing else changed


def test_explorer_keeps_the_bits_when_a_value_has_no_pattern() -> None:
    widget = bitexplorer.explorer(["float4_e2m1fn"], value=3.0)
    _, typed, toggles, readout, typed_readout = _parts(widget)
    assert _pattern(toggles) == 0b0101  # 3 = 2^1 * 1.5: exponent field 2, mantissa 1
    typed.value = "nan"
    assert "has no NaN" in typed_readout.value and _pattern(toggles) == 0b0101 and "= 3.0" in readout.value


# ---- the static figure ------------------------------------------------------------------------------

#: Patterns per class, counted by hand from the definitions (both signs together).
CLASS_COUNTS = {
    "float8_e4m3fn": {"normal": 238, "subnormal": 14, "zero": 2, "nan": 2},  # S.1111.111 is NaN
    "float8_e5m2": {"normal": 240, "subnormal": 6, "zero": 2, "inf": 2, "nan": 6},
    "float8_e4m3fnuz": {"normal": 240, "subnormal": 14, "zero": 1, "nan": 1},  # 0x80 is NaN, no -0
    "float4_e2m1fn": {"normal": 12, "subnormal": 2, "zero": 2},
}


def test_patterns_figure_draws_every_pattern_of_each_format() -> None:
    names = list(CLASS_COUNTS)
    fig = bitexplorer.patterns_figure(names)
    assert [trace.name for trace in fig.data] == names
    assert [trace.visible for trace in fig.data] == [True] + [False] * (len(names) - 1)
    for trace, name in zip(fig.data, names):
        fmt = formats.get(name)
        size = 1 << fmt.bits
        assert list(trace.x) == list(range(size)) and len(trace.y) == len(trace.hovertext) == size
        colours = list(trace.marker.color)
        counts = {kind: colours.count(colour) for kind, colour in bitexplorer.CLASS_COLOURS.items()}
        assert {k: v for k, v in counts.items() if v} == CLASS_COUNTS[name]
        symbols = list(trace.marker.symbol)
        special_colours = (bitexplorer.CLASS_COLOURS["nan"], bitexplorer.CLASS_COLOURS["inf"])
        special = {i for i, c in enumerate(colours) if c in special_colours}
        assert {i for i, s in enumerate(symbols) if s == "x"} == special
        y = np.asarray(trace.y, dtype=float)
        assert (y[sorted(special)] == fmt.max * 4).all()  # NaN and inf at the top edge
        assert y[0] == fmt.smallest_subnormal / 4  # +0 at the bottom edge of the log axis
        assert (y > 0).all()
    first = fig.data[0]
    assert first.hovertext[0x38].startswith("pattern 0x38 = 0 0111 000<br>")
    assert first.hovertext[0x38].endswith("= 1.0")


def test_patterns_figure_dropdown_switches_format_and_title() -> None:
    names = ["float4_e2m1fn", "float8_e5m2"]
    fig = bitexplorer.patterns_figure(names)
    (menu,) = fig.layout.updatemenus
    assert [b.label for b in menu.buttons] == names
    for k, button in enumerate(menu.buttons):
        visible, layout = button.args
        assert button.method == "update" and visible["visible"] == [j == k for j in range(len(names))]
        counts = CLASS_COUNTS[names[k]]
        assert layout["title.text"].startswith(f"{names[k]}: every pattern (")
        for kind, n in counts.items():
            assert f"{n} {kind}" in layout["title.text"]
    assert fig.layout.title.text == menu.buttons[0].args[1]["title.text"]
    assert fig.layout.yaxis.type == "log"
    assert '"updatemenus"' in fig.to_json()  # the dropdown is plotly's own: it works with no kernel


def test_default_format_lists() -> None:
    assert set(bitexplorer.SMALL_FORMATS) == {n for n, f in formats.ALL.items() if f.bits <= 8}
    assert "float32" in bitexplorer.EXPLORER_FORMATS and "float64" not in bitexplorer.EXPLORER_FORMATS

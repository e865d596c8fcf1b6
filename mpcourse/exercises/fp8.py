"""Checks for the exercises of chapter ``fp8``.

References are independent of the learner's code: torch's own fp8 casts, :mod:`mpcourse.fp8`
(tested against ``torch._scaled_mm``, Transformer Engine's update rule and the OCP MX rules), and,
for the MX exercise, the spec's rules checked directly (scales are powers of two, the exponent is
``floor(log2 amax) - emax``, elements within range).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .. import fp8
from . import call, expect_close, fail, register

E4M3_MAX = 448.0

# ---- fp8-tensorwise ---------------------------------------------------------------------------------


def _tensorwise_inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(8)
    normal = torch.randn(64, 48, generator=gen) * 3
    negative = torch.randn(32, 32, generator=gen)
    negative[3, 5] = -40.0  # the largest magnitude is negative
    return {
        "a normal tensor (std 3)": normal,
        "a tensor whose largest magnitude is negative (-40)": negative,
        "tiny values (about 1e-6; unscaled they would all flush to zero in E4M3)": torch.randn(
            16, 64, generator=gen
        )
        * 1e-6,
        "large bf16 values (about 1e4; unscaled they would saturate)": (
            torch.randn(16, 64, generator=gen) * 1e4
        ).bfloat16(),
        "a tensor of zeros": torch.zeros(8, 8),
    }


@register("fp8-tensorwise")
def check_tensorwise(tensorwise_fp8: Any) -> None:
    """``tensorwise_fp8(x) -> (data, scale)``: E4M3 data and one decode scale, ``x ≈ data * scale``."""
    label = "fp8-tensorwise"
    hint = (
        "the decode scale is amax / 448, where amax is the largest |x| (abs first!); divide x by it, clamp to "
        "±448 and cast to torch.float8_e4m3fn. A tensor with amax 0 needs scale 1, not a division by zero."
    )
    for case, x in _tensorwise_inputs().items():
        out = call(label, tensorwise_fp8, x.clone())
        if not (isinstance(out, tuple) and len(out) == 2):
            fail(label, f"for {case} you returned {type(out).__name__}; expected a pair (data, scale).", hint)
        data, scale = out
        if not isinstance(data, torch.Tensor) or data.dtype != torch.float8_e4m3fn:
            fail(
                label,
                f"for {case} data is {getattr(data, 'dtype', type(data).__name__)}, not torch.float8_e4m3fn.",
                "cast with .to(torch.float8_e4m3fn): the data must really be stored in 8 bits.",
            )
        if data.shape != x.shape:
            fail(label, f"for {case} data has shape {tuple(data.shape)}, expected {tuple(x.shape)}.", hint)
        try:
            scale_t = torch.as_tensor(scale, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            fail(label, f"for {case} the scale is {scale!r}, not a number or tensor.", hint)
        if scale_t.numel() != 1:
            fail(label, f"for {case} the scale has {scale_t.numel()} entries; tensorwise means one.", hint)
        scale_value = float(scale_t.reshape(-1)[0])
        x64 = x.double()
        amax = x64.abs().max().item()
        if amax > 0:
            if math.isclose(scale_value, E4M3_MAX / amax, rel_tol=1e-5):
                fail(
                    label,
                    f"for {case} your scale is 448 / amax: that is the factor applied before the cast "
                    "(Transformer Engine's 'scale'); the decode scale is its reciprocal.",
                    hint,
                )
            if math.isclose(scale_value, amax / 57344.0, rel_tol=1e-5):
                fail(
                    label,
                    f"for {case} your scale is amax / 57344, E5M2's maximum; the data is E4M3 (max 448).",
                    hint,
                )
            if x64.max().item() < amax and math.isclose(
                scale_value, x64.max().item() / E4M3_MAX, rel_tol=1e-5
            ):
                fail(
                    label,
                    f"for {case} your scale comes from x.max(), not the largest magnitude |x|: the negative "
                    "entries overflow.",
                    hint,
                )
            if scale_value == 1.0 and not math.isclose(amax, E4M3_MAX, rel_tol=1e-6):
                fail(label, f"for {case} the scale is 1: the tensor is cast unscaled.", hint)
            expect_close(
                label, scale_value, amax / E4M3_MAX, rtol=1e-5, case=f"{case} (the scale)", hint=hint
            )
        elif not math.isclose(scale_value, 1.0):
            fail(
                label,
                f"for {case} the scale is {scale_value!r}; a tensor of zeros should get scale 1 "
                "(amax / 448 = 0 would divide by zero and give NaN).",
                hint,
            )
        got = data.float().double()
        if torch.isnan(got).any():
            fail(label, f"for {case} your data contains NaN.", hint)
        # Accept either way of applying the scale (x / s or x * (1/s)): they may differ in the last bit.
        s32 = torch.tensor(scale_value, dtype=torch.float32)
        candidates = [
            (x.float() / s32).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn),
            (x.float() * (1 / s32)).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn),
        ]
        if not any(torch.equal(got, c.float().double()) for c in candidates):
            wrong = int(min((got != c.float().double()).sum().item() for c in candidates))
            fail(
                label,
                f"for {case}, {wrong} element(s) of your data differ from x / scale rounded to E4M3.",
                hint,
            )


# ---- fp8-delayed ------------------------------------------------------------------------------------


def _delayed_reference(amaxes: list[float], history_len: int, margin: int) -> list[float]:
    """Decode scales used at each step, from mpcourse.fp8.DelayedScaler (Transformer Engine's kernel)."""
    scaler = fp8.DelayedScaler("e4m3", amax_history_len=history_len, margin=margin)
    used = []
    for amax in amaxes:
        used.append(float(scaler.scale_inv))
        scaler.record(amax)
        scaler.update()
    return used


def _simulate(
    amaxes: list[float], window_of: Any, margin: int, *, sign: int = 1, keep: bool = True
) -> list[float]:
    """Decode scales used at each step when step t's scale comes from the amaxes ``window_of(t)``."""
    used, scale = [], 1.0
    for t in range(len(amaxes)):
        window = window_of(t)
        amax = max(window) if window else 0.0
        if 0 < amax < math.inf:
            scale = amax * 2.0 ** (sign * margin) / E4M3_MAX
        elif not keep:
            scale = 1.0
        used.append(scale)
    return used


def _delayed_variants(amaxes: list[float], history_len: int, margin: int) -> dict[str, list[float]]:
    """Scales from the usual misreadings of delayed scaling, to name the one we see."""
    n = history_len

    def previous(t: int) -> list[float]:
        return amaxes[max(0, t - n) : t]

    return {
        "the current step's amax is included (that is current scaling, not delayed)": _simulate(
            amaxes, lambda t: amaxes[max(0, t - n + 1) : t + 1], margin
        ),
        "the window is one step too long": _simulate(amaxes, lambda t: amaxes[max(0, t - n - 1) : t], margin),
        "the window is one step too short": _simulate(
            amaxes, lambda t: amaxes[max(0, t - n + 1) : t], margin
        ),
        "the newest amax only ('most_recent') instead of the max over the window": _simulate(
            amaxes, lambda t: amaxes[max(0, t - 1) : t], margin
        ),
        "the margin divides instead of multiplies the decode scale": _simulate(
            amaxes, previous, margin, sign=-1
        ),
        "the scale resets to 1 when the window has no usable amax, instead of keeping the last one": _simulate(
            amaxes, previous, margin, keep=False
        ),
    }


@register("fp8-delayed")
def check_delayed(delayed_scales: Any) -> None:
    """``delayed_scales(amaxes, history_len, margin)``: the decode scale each step uses."""
    label = "fp8-delayed"
    hint = (
        "before step t, the scale comes from the amaxes of steps t-history_len .. t-1 (never step t itself): "
        "decode scale = max(window) * 2**margin / 448. Step 0 uses 1. When the window's max is 0 or infinite, "
        "keep the previous scale."
    )
    cases = [
        ("a growing amax, history 4", [1.0, 2.0, 4.0, 8.0, 16.0, 32.0], 4, 0),
        ("a spike that must stay in the window, history 3", [1.0, 50.0, 1.0, 1.0, 1.0, 1.0, 1.0], 3, 0),
        ("margin 2, history 2", [3.0, 1.0, 0.5, 0.25, 6.0, 6.0], 2, 2),
        ("zeros at the start (no usable amax yet), history 2", [0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 2.0], 2, 0),
        ("an infinite amax (an overflow) and history 1", [2.0, math.inf, 3.0, 3.0], 1, 0),
        ("TE's default history (1024) over a short run", [0.5, 0.7, 0.2, 0.9, 0.1], 1024, 0),
    ]
    for case, amaxes, history_len, margin in cases:
        got = call(label, delayed_scales, list(amaxes), history_len, margin)
        try:
            got_list = [float(v) for v in got]
        except (TypeError, ValueError):
            fail(label, f"for {case} you returned {got!r}; expected a list of numbers, one per step.", hint)
        want = _delayed_reference(amaxes, history_len, margin)
        if len(got_list) != len(want):
            fail(label, f"for {case} you returned {len(got_list)} scales for {len(amaxes)} steps.", hint)
        if all(math.isclose(g, w, rel_tol=1e-5) for g, w in zip(got_list, want)):
            continue
        for name, values in _delayed_variants(amaxes, history_len, margin).items():
            if all(math.isclose(g, v, rel_tol=1e-5) for g, v in zip(got_list, values)):
                fail(label, f"for {case} your scales match a common mistake: {name}.", hint)
        expect_close(label, got_list, want, rtol=1e-5, case=case, hint=hint)


# ---- fp8-mx -----------------------------------------------------------------------------------------


def _mx_inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(32)
    mixed = torch.randn(4, 96, generator=gen) * torch.logspace(-3, 3, 96)
    special = torch.randn(3, 64, generator=gen)
    special[0, :32] = 0.0  # a block of zeros
    special[1, 32:] = torch.linspace(-4.0, 4.0, 32)  # amax exactly a power of two
    special[2, :32] = special[2, :32] * 1e-37  # below E8M0's smallest scale after - 8: clamped to 2^-127
    special[2, 32:] = special[2, 32:] * 1e30
    return {
        "blocks of very different magnitudes (4 x 96)": mixed,
        "a block of zeros, an amax that is a power of two, tiny and huge blocks (3 x 64)": special,
        "one row of 32 (one block)": torch.randn(1, 32, generator=gen) * 500,
    }


@register("fp8-mx")
def check_mx(mx_quantize: Any) -> None:
    """``mx_quantize(x) -> (scales, elements)``: MXFP8 (E4M3) with 32-element blocks along rows."""
    label = "fp8-mx"
    hint = (
        "per block of 32 consecutive elements of a row: amax = max |x|, X = 2^(floor(log2(amax)) - 8) (8 is the "
        "exponent of E4M3's largest binade, 448 = 1.75 x 2^8), clamped to [2^-127, 2^127]; a zero block gets 2^-127. "
        "Elements: x / X, clamped to ±448, cast to torch.float8_e4m3fn."
    )
    for case, x in _mx_inputs().items():
        out = call(label, mx_quantize, x.clone())
        if not (isinstance(out, tuple) and len(out) == 2):
            fail(
                label,
                f"for {case} you returned {type(out).__name__}; expected a pair (scales, elements).",
                hint,
            )
        scales, elements = out
        rows, cols = x.shape
        if not isinstance(scales, torch.Tensor) or tuple(scales.shape) != (rows, cols // 32):
            fail(
                label,
                f"for {case} scales have shape {tuple(getattr(scales, 'shape', ()))}, expected {(rows, cols // 32)}: "
                "one scale per 32 consecutive elements of each row.",
                hint,
            )
        if (
            not isinstance(elements, torch.Tensor)
            or elements.dtype != torch.float8_e4m3fn
            or elements.shape != x.shape
        ):
            fail(
                label,
                f"for {case} elements must be a torch.float8_e4m3fn tensor shaped like x; got "
                f"{getattr(elements, 'dtype', type(elements).__name__)} {tuple(getattr(elements, 'shape', ()))}.",
                hint,
            )
        s = scales.double()
        mantissa, _ = torch.frexp(s)
        if not ((mantissa == 0.5) & (s > 0)).all():
            fail(
                label,
                f"for {case} some scales are not powers of two. MX scales are E8M0: a pure exponent, no "
                "mantissa; amax / 448 is not one.",
                hint,
            )
        ref = fp8.quantize(x, "mxfp8")
        want_s = ref.scale_values().double()
        amax = x.double().reshape(rows, cols // 32, 32).abs().amax(-1)
        if not torch.equal(s, want_s):
            ratio = (s / want_s)[amax > 0]
            if (ratio == 2.0**8).all():
                fail(
                    label,
                    f"for {case} your scales are 2^floor(log2 amax), without subtracting E4M3's emax (8): every "
                    "element lands in [1, 2) and E4M3's range goes unused.",
                    hint,
                )
            rceil = fp8.quantize(x, "mxfp8", mx_scale_rounding="rceil").scale_values().double()
            if torch.equal(s, rceil):
                fail(
                    label,
                    f"for {case} your scales are the smallest powers of two >= amax / 448: that is NVIDIA's "
                    "'RCEIL' rule (cuBLAS), which never saturates; the OCP spec's rule is floor(log2 amax) - 8.",
                    hint,
                )
            if ((ratio == 1.0) | (ratio == 2.0)).all():
                fail(
                    label,
                    f"for {case} some exponents are one too large: round log2(amax) down (floor), then "
                    "subtract 8.",
                    hint,
                )
            fail(
                label,
                f"for {case}, {int((s != want_s).sum())} of {s.numel()} scales differ from the spec's rule.",
                hint,
            )
        if torch.isnan(elements.float()).any():
            fail(
                label,
                f"for {case} some elements are NaN: values between 448 and 512 must saturate to ±448.",
                hint,
            )
        if not torch.equal(elements.float(), ref.data.float()):
            wrong = int((elements.float() != ref.data.float()).sum())
            fail(
                label,
                f"for {case}, {wrong} element(s) differ from x / X rounded to E4M3 with saturation.",
                hint,
            )


# ---- fp8-choose-recipe --------------------------------------------------------------------------------


def _outlier_tensor(rows: int = 128, cols: int = 256, seed: int = 4) -> torch.Tensor:
    """A Gaussian activation with a few outlier channels (columns) 200x larger, as in LLM activations."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=gen)
    x[:, torch.randperm(cols, generator=gen)[:4]] *= 200.0
    return x


def _choose_reference(
    x: torch.Tensor, candidates: list[str], max_bits: float
) -> tuple[str | None, dict[str, tuple[float, float]]]:
    numbers = {}
    for name in candidates:
        q = fp8.quantize(x, name)
        numbers[name] = (q.bits_per_element, fp8.error_stats(x, q)["snr_db"])
    fitting = {n: v for n, v in numbers.items() if v[0] <= max_bits}
    best = max(fitting, key=lambda n: fitting[n][1]) if fitting else None
    return best, numbers


@register("fp8-choose-recipe")
def check_choose_recipe(best_recipe: Any) -> None:
    """``best_recipe(x, candidates, max_bits)``: the highest-SNR recipe within a storage budget."""
    label = "fp8-choose-recipe"
    hint = (
        "for each candidate: q = fp8.quantize(x, name); skip it if q.bits_per_element > max_bits (scales count); "
        "keep the one with the largest fp8.error_stats(x, q)['snr_db']; raise ValueError if none fits."
    )
    gen = torch.Generator().manual_seed(5)
    plain = torch.randn(128, 256, generator=gen)
    eight = ["tensorwise", "rowwise", "blockwise", "mxfp8"]
    cases = [
        ("an outlier-heavy activation, 8.25 bits allowed", _outlier_tensor(), eight, 8.25),
        ("an outlier-heavy activation, 8.1 bits allowed", _outlier_tensor(), eight, 8.1),
        (
            "an outlier-heavy activation, fp4 recipes, 4.3 bits allowed",
            _outlier_tensor(seed=9),
            ["mxfp4", "nvfp4", "mxfp8"],
            4.3,
        ),
        (
            "an outlier-heavy activation, fp4 recipes, 4.6 bits allowed",
            _outlier_tensor(seed=9),
            ["mxfp4", "nvfp4", "mxfp8"],
            4.6,
        ),
        ("a plain Gaussian tensor, 9 bits allowed", plain, ["tensorwise", "mxfp4", "nvfp4"], 9.0),
    ]
    for case, x, candidates, max_bits in cases:
        want, numbers = _choose_reference(x, candidates, max_bits)
        assert want is not None
        got = call(label, best_recipe, x.clone(), list(candidates), max_bits)
        if got == want:
            continue
        if got not in numbers:
            fail(
                label,
                f"for {case} you returned {got!r}, which is not one of the candidates {candidates}.",
                hint,
            )
        bits, snr = numbers[got]
        if bits > max_bits:
            fail(
                label,
                f"for {case} you chose {got!r}, which needs {bits:.3f} bits per element, over the budget of "
                f"{max_bits}: scales count too.",
                hint,
            )
        if snr == min(v[1] for v in numbers.values()):
            fail(
                label,
                f"for {case} you chose {got!r}, the candidate with the *lowest* SNR ({snr:.1f} dB).",
                hint,
            )
        fail(
            label,
            f"for {case} you chose {got!r} ({snr:.1f} dB); another candidate within the budget does better.",
            hint,
        )
    try:
        got = call(label, best_recipe, plain.clone(), ["mxfp8", "rowwise"], 3.0)
    except Exception as exc:
        if isinstance(exc.__cause__, ValueError):
            return
        raise
    fail(
        label,
        f"with a budget of 3 bits per element no candidate fits, yet you returned {got!r}.",
        "raise ValueError when no candidate fits the budget.",
    )

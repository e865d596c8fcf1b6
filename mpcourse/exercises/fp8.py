"""Checks for the exercises of chapter ``fp8`` (delayed scaling's exercise is in ``fp8_training``).

References are independent of the learner's code: torch's own fp8 casts, :mod:`mpcourse.fp8`
(tested against ``torch._scaled_mm``, Transformer Engine's update rule and the OCP MX rules), and,
for the MX exercise, the spec's rules checked directly (scales are powers of two, the exponent is
``floor(log2 amax) - emax``, elements within range). Each check also knows the usual misreadings
of its recipe and names the one it sees; the exercises that ask for a recipe by hand reject an
answer that calls the course's own implementation of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .. import fp8
from ..fp8 import delayed as fp8_delayed
from ..fp8 import recipes as fp8_recipes
from . import call, fail, plural, register, shortcuts

E4M3_MAX = 448.0


def _call_by_hand(label: str, fn: Any, what: str, *args: Any) -> Any:
    """Call the learner's ``fn``, rejecting an answer that hands the work to :mod:`mpcourse.fp8`."""
    # module globals and class attributes, so that a ``from ... import`` made before the check is seen too
    with shortcuts.watch(
        [
            (fp8_recipes, "resolve", "resolve"),
            (fp8_recipes, "_mx_scale", "_mx_scale"),
            (fp8_recipes, "_amax_scale", "_amax_scale"),
            (fp8_delayed.DelayedScaler, "__init__", "__init__"),
        ]
    ) as seen:
        out = call(label, fn, *args)
    if seen:
        used = "fp8.DelayedScaler" if "__init__" in seen else "fp8.quantize"
        fail(
            label,
            f"your function calls the course's own {what} ({used}), which is what the exercise asks you to "
            "write: the check compares your answer with that very code, so it would be checking it against itself.",
            f"write {what} yourself, with torch operations on the tensor (or a loop over the steps); the course's "
            "functions are for the later exercises and for checking your result by hand.",
        )
    return out


# ---- fp8-tensorwise ---------------------------------------------------------------------------------

TENSORWISE_HINTS = (
    "Look at the section 'Why 8 bits force scaling': which entry of x has to land on E4M3's largest finite "
    "value, and is the number you return the one that multiplies the fp8 data back (decode) or the one "
    "that divides x before the cast (encode)?",
    "The largest entry is the largest *magnitude*: a negative outlier counts. The data type is "
    "torch.float8_e4m3fn, whose largest finite value torch.finfo reports (other fp8 variants have "
    "other maxima).",
    "Compute in float32 whatever x's dtype, keep the scaled values within the format's range before the "
    "cast, and decide what the scale of a tensor whose entries are all 0 must be: it may not be 0.",
)


def _tensorwise_inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(8)
    normal = torch.randn(64, 48, generator=gen) * 3
    negative = torch.randn(32, 32, generator=gen)
    negative[3, 5] = -40.0  # the largest-magnitude entry is negative
    return {
        "a normal tensor (std 3)": normal,
        "a tensor whose largest-magnitude entry is negative (-40)": negative,
        "tiny values (about 1e-6; unscaled they would all underflow to zero in E4M3)": torch.randn(
            16, 64, generator=gen
        )
        * 1e-6,
        "large bf16 values (about 1e4; unscaled they would saturate)": (
            torch.randn(16, 64, generator=gen) * 1e4
        ).bfloat16(),
        "a tensor of zeros": torch.zeros(8, 8),
    }


#: Largest finite values of other 8-bit formats, and what taking one of them for E4M3's means.
_OTHER_MAXES = {
    57344.0: "E5M2's largest value (57344); the data here is E4M3, whose largest is 448",
    240.0: "the largest value of E4M3FNUZ (240), the fp8 variant of AMD's MI300; torch.float8_e4m3fn "
    "goes up to 448",
}


#: For a scale taken from another format's maximum: where E4M3's is found (without naming it).
_FORMAT_MAX_HINT = (
    "the data is torch.float8_e4m3fn: take the largest finite value of that very dtype (torch.finfo reports "
    "it), not another fp8 format's."
)


def _e4m3(values: torch.Tensor) -> torch.Tensor:
    return values.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).float().double()


@register("fp8-tensorwise", hints=TENSORWISE_HINTS)
def check_tensorwise(tensorwise_fp8: Any) -> None:
    """``tensorwise_fp8(x) -> (data, scale)``: E4M3 data and one decode scale, ``x ≈ data * scale``."""
    label = "fp8-tensorwise"
    hint = TENSORWISE_HINTS[0]
    for case, x in _tensorwise_inputs().items():
        out = _call_by_hand(label, tensorwise_fp8, "tensorwise quantisation", x.clone())
        if not (isinstance(out, tuple) and len(out) == 2):
            fail(label, f"for {case} you returned {type(out).__name__}; expected a pair (data, scale).", hint)
        data, scale = out
        if not isinstance(data, torch.Tensor) or data.dtype != torch.float8_e4m3fn:
            fail(
                label,
                f"for {case} data is {getattr(data, 'dtype', type(data).__name__)}, not torch.float8_e4m3fn.",
                "the data must really be stored in 8 bits: its dtype is torch.float8_e4m3fn.",
            )
        if data.shape != x.shape:
            fail(label, f"for {case} data has shape {tuple(data.shape)}, expected {tuple(x.shape)}.", hint)
        try:
            scale_t = torch.as_tensor(scale).detach().double()
        except (TypeError, ValueError, RuntimeError):
            fail(label, f"for {case} the scale is {scale!r}, not a number or tensor.", hint)
        if scale_t.numel() != 1:
            fail(
                label,
                f"for {case} the scale has {plural(scale_t.numel(), 'entry', 'entries')}; tensorwise means one "
                "for the whole tensor.",
                "one scale for the whole tensor: the amax is taken over every entry, not per row.",
            )
        scale_value = float(scale_t.reshape(-1)[0])
        x64 = x.double()
        amax = x64.abs().max().item()
        if not (math.isfinite(scale_value) and scale_value > 0):
            if amax == 0:
                fail(
                    label,
                    f"for {case} your scale is {scale_value!r}: the amax is 0, and a scale derived from it "
                    "divides by zero (0/0 is NaN). The scale must be finite and positive for every tensor.",
                    "a tensor of zeros is the one case where the amax cannot give the scale: what must your "
                    "function do before it divides?",
                )
            fail(
                label,
                f"for {case} your scale is {scale_value!r}; a decode scale must be finite and positive.",
                hint,
            )
        if amax > 0:
            _diagnose_tensorwise_scale(label, case, x, scale_value, amax)
        got = data.float().double()
        if torch.isnan(got).any():
            fail(
                label,
                f"for {case} your data contains {plural(int(torch.isnan(got).sum()), 'NaN')}.",
                "E4M3 (fn) has no infinity: a value beyond ±448 becomes NaN unless it is clamped first.",
            )
        # Either way of applying the scale (x / s or x * (1/s)) is right: they may differ in the last bit.
        s32 = torch.tensor(scale_value, dtype=torch.float32)
        candidates = [_e4m3(x.float() / s32), _e4m3(x.float() * (1 / s32))]
        if any(torch.equal(got, c) for c in candidates):
            continue
        wrong = int(min((got != c).sum().item() for c in candidates))
        if x.dtype != torch.float32 and any(
            torch.equal(got, _e4m3((x / s).float())) for s in (s32, s32.to(x.dtype))
        ):
            fail(
                label,
                f"for {case}, {plural(wrong, 'element')} of your data differ from x / scale rounded once to E4M3: "
                f"you divided in x's own dtype ({x.dtype}), which rounds every value a first time before the cast "
                "rounds it again.",
                "rounding twice (to bf16, then to E4M3) is not rounding once: in which dtype does your "
                "division run?",
            )
        fail(
            label,
            f"for {case}, {plural(wrong, 'element')} of your data differ from x divided by your scale and "
            "rounded to E4M3.",
            "the data must decode to x: data times scale should be x up to E4M3's rounding.",
        )


def _diagnose_tensorwise_scale(label: str, case: str, x: torch.Tensor, scale: float, amax: float) -> None:
    """Name the mistake behind a wrong decode scale for a tensor with amax > 0, or compare."""
    hint = TENSORWISE_HINTS[0]
    if math.isclose(scale, amax / E4M3_MAX, rel_tol=1e-5):
        return
    if math.isclose(scale, E4M3_MAX / amax, rel_tol=1e-5):
        fail(
            label,
            f"for {case} your scale is {scale:.6g}, the factor x is multiplied by before the cast (what "
            "Transformer Engine calls 'scale'); the exercise asks for the decode scale, which multiplies "
            "the fp8 data back to x: its reciprocal.",
            "decode vs encode: data times your scale should give x back.",
        )
    for other, why in _OTHER_MAXES.items():
        if math.isclose(scale, amax / other, rel_tol=1e-5):
            fail(label, f"for {case} your scale maps the amax to {why}.", _FORMAT_MAX_HINT)
    signed_max = x.double().max().item()
    if signed_max < amax and math.isclose(scale, signed_max / E4M3_MAX, rel_tol=1e-5):
        fail(
            label,
            f"for {case} your scale comes from the largest value, {signed_max:.4g}, not the largest "
            f"magnitude ({amax:.4g}): the negative entries beyond it saturate.",
            "the largest entry that matters is the largest in absolute value.",
        )
    if scale == 1.0:
        fail(label, f"for {case} the scale is 1: the tensor is cast unscaled.", hint)
    if x.dtype != torch.float32:
        in_dtype = (x.abs().max() / E4M3_MAX).item()  # the scale computed in x's own dtype
        if scale == in_dtype:
            fail(
                label,
                f"for {case} your scale, {scale!r}, is the right one rounded to {x.dtype}: it was computed in "
                "x's own dtype, which has only 8 significant bits, so the amax no longer maps exactly to 448.",
                "in which dtype is your scale computed? bf16 keeps only 8 significant bits.",
            )
    mantissa, exponent = math.frexp(scale)
    if mantissa == 0.5 and 0.5 <= scale / (amax / E4M3_MAX) <= 2:
        fail(
            label,
            f"for {case} your scale, {scale:.6g}, is a power of two (2^{exponent - 1}): the right scale rounded "
            f"to a power of two, so the amax ({amax:.4g}) divided by it is {amax / scale:.4g}, not E4M3's largest "
            "finite value. Power-of-two scales belong to MX (E8M0 scales); this recipe's scale is not rounded.",
            "the tensorwise scale is used as computed: the amax, divided by it, lands exactly on E4M3's "
            "largest finite value.",
        )
    fail(
        label,
        f"for {case} your scale is {scale:.6g}: the amax ({amax:.4g}) divided by it is {amax / scale:.4g}, not "
        "E4M3's largest finite value.",
        hint,
    )


# ---- fp8-mx -----------------------------------------------------------------------------------------

MX_HINTS = (
    "Work on one block of 32 first: which power of two does the MX rule of the recipe list give for its "
    "amax, and where does dividing by it put the block's largest element?",
    "The exponent must be exact. Try by hand blocks whose amax is exactly a power of two, and just below "
    "and just above one (torch.nextafter): a floating-point logarithm can round across an integer.",
    "Reshape each row into blocks of 32 to get every block's amax at once; clamp the exponents to E8M0's "
    "range (a block of zeros gets the smallest scale); saturate the elements at ±448 before the cast.",
)

E8M0_MIN = 2.0**-127


def _edge_blocks() -> torch.Tensor:
    """Blocks whose amax is a power of two, or the float32 just below or just above one, in many binades,
    with either sign, and near E8M0's limits: where a rounded logarithm gives the wrong exponent."""
    gen = torch.Generator().manual_seed(33)
    zero, inf = torch.tensor(0.0), torch.tensor(math.inf)
    amaxes = []
    for k in (-119, -100, -20, -3, -2, 3, 4, 10, 64, 127):
        p = torch.tensor(2.0**k)
        amaxes += [p, torch.nextafter(p, zero), torch.nextafter(p, inf)]
    # below E8M0's smallest scale after subtracting 8 (clamped), a subnormal amax, the largest float32,
    # and an amax whose block saturates (1.9 x 2^5 lands at 486 after division)
    amaxes += [
        torch.tensor(2.0**-121),
        torch.tensor(2.0**-140),
        torch.tensor(torch.finfo(torch.float32).max),
        torch.tensor(1.9 * 2.0**5),
    ]
    blocks = []
    for i, amax in enumerate(amaxes):
        block = (torch.rand(32, generator=gen) * 1.8 - 0.9) * amax  # magnitudes below amax
        block[int(torch.randint(0, 32, (1,), generator=gen))] = amax if i % 2 == 0 else -amax
        blocks.append(block)
    return torch.stack(blocks).reshape(len(amaxes) // 2, 64)  # two blocks per row


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
        "amaxes at, just below and just above powers of two from 2^-119 to 2^127, either sign, and near "
        "E8M0's limits (17 x 64)": _edge_blocks(),
    }


def _blocks_where(mask: torch.Tensor, amax: torch.Tensor, limit: int = 3) -> str:
    """A few of the amaxes of the blocks in ``mask``, those nearest 1 first, for a message."""
    values = sorted(amax[mask].flatten().tolist(), key=lambda v: abs(math.log2(v)) if v > 0 else math.inf)
    shown = ", ".join(f"{v:.9g}" for v in values[:limit])
    more = int(mask.sum()) - limit
    return shown + (f" and {more} more" if more > 0 else "")


def _within(mask: torch.Tensor, region: torch.Tensor) -> bool:
    """Whether ``mask`` is non-empty and lies inside ``region`` (boolean tensors of one shape)."""
    return bool(mask.any()) and not bool((mask & ~region).any())


def _diagnose_mx_scales(
    label: str, case: str, x: torch.Tensor, s: torch.Tensor, want: torch.Tensor, blocks: torch.Tensor
) -> None:
    """Name the mistake behind scales ``s`` (float64, one per block) that differ from ``want``."""
    hint = MX_HINTS[0]
    amax = blocks.abs().amax(-1)
    zero = amax == 0
    clamped = (want == E8M0_MIN) & ~zero
    mantissa, _ = torch.frexp(s)
    not_pow2 = ~((mantissa == 0.5) & (s > 0))
    differ = s != want
    exact_e = torch.frexp(amax)[1] - 1  # floor(log2 amax), exactly
    with torch.no_grad():
        f32_e = torch.floor(torch.log2(amax.float())).double()
    log2_rounds_up = ~zero & (f32_e != exact_e.double())
    power_of_two = ~zero & (torch.frexp(amax)[0] == 0.5)
    negative_max = blocks.amax(-1) < amax
    n_differ = int(differ.sum())
    blocks_n = plural(n_differ, "scale") + (" is" if n_differ == 1 else " are")
    if zero.any() and _within(differ, zero):
        fail(
            label,
            f"for {case} the scale of a block of zeros is {s[zero & differ].flatten()[0].item()!r}: "
            "such a block has no exponent to take, and the exercise's convention (mpcourse.fp8's) is the "
            "smallest E8M0 value, 2^-127.",
            "a block whose amax is 0 needs its own case: its logarithm is -inf.",
        )
    if clamped.any() and _within(differ, clamped) and bool((s[differ] < want[differ]).all()):
        fail(
            label,
            f"for {case}, {blocks_n} below 2^-127 on the tiniest blocks (amax {_blocks_where(differ, amax)}), "
            "E8M0's smallest value: the exponent was not clamped to E8M0's range.",
            "an E8M0 scale is an exponent from -127 to 127: what does your rule give a block of tiny values?",
        )
    exponents = torch.log2(want)
    if torch.equal(s, exponents) or torch.equal(s, exponents + 127):
        fail(
            label,
            f"for {case} your scales are the exponents{' stored with E8M0 bias 127' if not torch.equal(s, exponents) else ''}"
            " of the scales, not the scale values the exercise asks for.",
            "return the scales themselves, powers of two, one per block (or as torch.float8_e8m0fnu).",
        )
    if not_pow2.any():
        fail(
            label,
            f"for {case} {plural(int(not_pow2.sum()), 'scale')} are not powers of two (e.g. "
            f"{s[not_pow2].flatten()[0].item():.6g}). MX scales are E8M0: a pure exponent, no mantissa; "
            "amax / 448 is not one.",
            hint,
        )
    ratio = s / want
    nonzero = ~zero
    if bool((ratio[nonzero] == 2.0**8).all()):
        fail(
            label,
            f"for {case} your scales are 2^floor(log2 amax), without subtracting E4M3's emax (8): every "
            "block's largest element lands in [1, 2) and E4M3's range goes unused.",
            "the rule subtracts the exponent of the element format's largest binade.",
        )
    rceil = fp8.quantize(x, "mxfp8", mx_scale_rounding="rceil").scale_values().double()
    if torch.equal(s, rceil):
        fail(
            label,
            f"for {case} your scales are the smallest powers of two >= amax / 448: that is NVIDIA's 'RCEIL' "
            "rule (cuBLAS), which never saturates; this exercise asks for the OCP spec's rule.",
            "the OCP rule starts from the exponent of the amax itself, rounded down.",
        )
    if _within(differ, log2_rounds_up) and bool((ratio[differ] == 2.0).all()):
        fail(
            label,
            f"for {case}, {blocks_n} twice too large, on the blocks whose amax lies just below a power "
            f"of two (amax {_blocks_where(differ, amax)}): that is the float32 log2 pitfall. torch.log2 in "
            "float32 rounds the logarithm of such an amax up to the next integer, and floor keeps it.",
            "the exponent must be exact: a float32 logarithm just below an integer can round up to it. Find "
            "the exponent of amax without that rounding.",
        )
    if _within(differ, power_of_two) and bool((ratio[differ] == 0.5).all()):
        fail(
            label,
            f"for {case}, {blocks_n} half what they should be, on the blocks whose amax is exactly a power "
            f"of two (amax {_blocks_where(differ, amax)}): rounding log2 up and subtracting one is not rounding "
            "down when the logarithm is an integer.",
            "for an amax of exactly 2^k, the rule's exponent starts from k itself.",
        )
    if bool((ratio[nonzero] == 2.0).all()):
        fail(
            label,
            f"for {case} every exponent is one too large (all scales twice the rule's). If you used "
            "torch.frexp: it writes amax = m * 2^e with m in [0.5, 1), so e is one more than floor(log2 amax).",
            "check the exponent of an amax of exactly 1: floor(log2 1) is 0.",
        )
    # One too small: every scale the clamp at 2^-127 leaves free is half the rule's (the clamp keeps the rest).
    if bool((ratio[differ] == 0.5).all()) and not bool((nonzero & ~clamped & ~differ).any()):
        fail(
            label,
            f"for {case} every exponent is one too small (all scales half the rule's): each block's largest "
            "element lands in [512, 1024), beyond E4M3's largest value (448), and saturates. The exponent "
            "subtracted is E4M3's emax, the exponent of its largest binade: 448 = 1.75 x 2^8.",
            "check by hand a block whose amax is exactly 1: after dividing by your scale, where does it land, "
            "and is that inside E4M3's range?",
        )
    if _within(differ, negative_max & ~zero):
        fail(
            label,
            f"for {case}, {blocks_n} wrong, all on blocks whose largest magnitude is a negative element: the "
            "amax is over |x|, not over x.",
            "the amax of a block is its largest absolute value.",
        )
    if bool(((ratio[differ] == 2.0) | (ratio[differ] == 0.5)).all()):
        fail(
            label,
            f"for {case}, {blocks_n} off by one power of two (amax {_blocks_where(differ, amax)}): the "
            "rule's exponent is the amax's binary logarithm rounded down, never to nearest.",
            MX_HINTS[1],
        )
    fail(label, f"for {case}, {n_differ} of {s.numel()} scales differ from the spec's rule.", hint)


@register("fp8-mx", hints=MX_HINTS)
def check_mx(mx_quantize: Any) -> None:
    """``mx_quantize(x) -> (scales, elements)``: MXFP8 (E4M3) with 32-element blocks along rows."""
    label = "fp8-mx"
    hint = MX_HINTS[0]
    for case, x in _mx_inputs().items():
        out = _call_by_hand(label, mx_quantize, "MX quantisation", x.clone())
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
                "a block is 32 consecutive elements of one row: a row of 64 has two.",
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
        s = scales.detach().double()
        ref = fp8.quantize(x, "mxfp8")
        want_s = ref.scale_values().double()
        if not torch.equal(s, want_s):
            _diagnose_mx_scales(label, case, x, s, want_s, x.double().reshape(rows, cols // 32, 32))
        got = elements.float()
        if torch.isnan(got).any():
            fail(
                label,
                f"for {case} {plural(int(torch.isnan(got).sum()), 'element')} are NaN: a block's largest "
                "element can land between 448 and 512, and must saturate to ±448.",
                "E4M3 (fn) has no infinity: clamp to its range before the cast.",
            )
        if not torch.equal(got, ref.data.float()):
            wrong = int((got != ref.data.float()).sum())
            fail(
                label,
                f"for {case}, {plural(wrong, 'element')} differ from x divided by its block's scale, rounded to "
                "E4M3 with saturation.",
                "each element is divided by the scale of its own block (32 consecutive elements of its row).",
            )


# ---- fp8-choose-recipe --------------------------------------------------------------------------------

CHOOSE_HINTS = (
    "For each candidate, measure two numbers: what it costs in storage per element, and how accurately "
    "it keeps x. The table in 'What the scales cost' shows where the cost comes from.",
    "The budget counts everything stored, scales included (a Quantized knows its cost per element), and "
    "'at most' includes a recipe that costs exactly max_bits.",
    "Leave out the candidates over the budget, then keep the one with the highest SNR among the rest; "
    "when none is left there is no answer to return, which is an error, not a default.",
)


def _outlier_tensor(rows: int = 128, cols: int = 256, seed: int = 4) -> torch.Tensor:
    """A Gaussian activation with a few outlier channels (columns) 200x larger, as in LLM activations."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=gen)
    x[:, torch.randperm(cols, generator=gen)[:4]] *= 200.0
    return x


def _choose_numbers(x: torch.Tensor, candidates: list[str]) -> dict[str, dict[str, float]]:
    numbers = {}
    for name in candidates:
        q = fp8.quantize(x, name)
        numbers[name] = {
            "bits": q.bits_per_element,
            "element_bits": float(q.fmt.bits),
            "snr": fp8.error_stats(x, q)["snr_db"],
        }
    return numbers


def _best(numbers: dict[str, dict[str, float]], fits: Callable[[dict[str, float]], bool], key: str) -> Any:
    fitting = {n: v for n, v in numbers.items() if fits(v)}
    return max(fitting, key=lambda n: fitting[n][key]) if fitting else None


def _choose_cases() -> list[tuple[str, torch.Tensor, list[str], float]]:
    gen = torch.Generator().manual_seed(5)
    plain = torch.randn(128, 256, generator=gen)
    eight = ["tensorwise", "rowwise", "blockwise", "mxfp8"]
    fp4 = ["mxfp4", "nvfp4", "mxfp8"]
    return [
        ("an outlier-heavy activation, 8.25 bits allowed", _outlier_tensor(), eight, 8.25),
        ("an outlier-heavy activation, 8.1 bits allowed", _outlier_tensor(), eight, 8.1),
        ("an outlier-heavy activation, fp4 recipes, 4.3 bits allowed", _outlier_tensor(seed=9), fp4, 4.3),
        ("an outlier-heavy activation, fp4 recipes, 4.6 bits allowed", _outlier_tensor(seed=9), fp4, 4.6),
        ("a plain Gaussian tensor, 9 bits allowed", plain, ["tensorwise", "mxfp4", "nvfp4"], 9.0),
        ("a plain Gaussian tensor, 8.25 bits allowed", plain, ["mxfp8", "mxfp4", "tensorwise"], 8.25),
    ]


@register("fp8-choose-recipe", hints=CHOOSE_HINTS)
def check_choose_recipe(best_recipe: Any) -> None:
    """``best_recipe(x, candidates, max_bits)``: the highest-SNR recipe within a storage budget."""
    label = "fp8-choose-recipe"
    hint = CHOOSE_HINTS[0]
    cases = _choose_cases()
    for case, x, candidates, max_bits in cases:
        numbers = _choose_numbers(x, candidates)
        want = _best(numbers, lambda v: v["bits"] <= max_bits, "snr")
        assert want is not None
        got = call(label, best_recipe, x.clone(), list(candidates), max_bits)
        if got == want:
            continue
        if not isinstance(got, str) or got not in numbers:
            fail(
                label,
                f"for {case} you returned {got!r}, which is not one of the candidates {candidates}: return "
                "the chosen recipe's name.",
                hint,
            )
        v = numbers[got]
        if v["bits"] > max_bits:
            if v["element_bits"] <= max_bits:
                fail(
                    label,
                    f"for {case} you chose {got!r}: its elements take {v['element_bits']:g} bits, but with its "
                    f"scales it costs {v['bits']:.4g} bits per element, over the budget of {max_bits}. Scales are "
                    "stored too.",
                    CHOOSE_HINTS[1],
                )
            fail(
                label,
                f"for {case} you chose {got!r}, which costs {v['bits']:.4g} bits per element, over the budget "
                f"of {max_bits}.",
                hint,
            )
        if numbers[want]["bits"] == max_bits and got == _best(numbers, lambda u: u["bits"] < max_bits, "snr"):
            fail(
                label,
                f"for {case} you left out {want!r}, which costs exactly {max_bits} bits per element: the budget "
                "is at most max_bits, so it fits, and it keeps x better than your choice.",
                CHOOSE_HINTS[1],
            )
        if v["snr"] == min(u["snr"] for u in numbers.values()):
            fail(
                label,
                f"for {case} you chose {got!r}, the candidate with the *lowest* SNR ({v['snr']:.1f} dB).",
                "a higher SNR means a smaller error relative to the signal: which way does your comparison go?",
            )
        fail(
            label,
            f"for {case} you chose {got!r} ({v['snr']:.1f} dB); another candidate within the budget does better.",
            hint,
        )
    try:
        got = call(label, best_recipe, cases[-1][1].clone(), ["mxfp8", "rowwise"], 3.0)
    except Exception as exc:
        if isinstance(exc.__cause__, ValueError):
            return
        raise
    fail(
        label,
        f"with a budget of 3 bits per element no candidate fits, yet you returned {got!r}.",
        "when no candidate fits the budget there is nothing to choose: say so with a ValueError.",
    )


# ---- fp8-rowwise-gemm ---------------------------------------------------------------------------------

GEMM_HINTS = (
    "Write the dot product of row i of a with row j of w in terms of the quantised data and the two "
    "row scales: which factors are the same for every term of the sum, and can therefore move out of it?",
    "A Quantized holds .data (the fp8 elements) and .scale (the decode scales, one per row, shaped (rows, 1)). "
    "The product of the fp8 data is a matrix of shape (M, N); each of its entries needs the scale of its row "
    "of a and the scale of its row of w.",
    "Multiply the fp8 data in float32 (every product of two fp8 values is exact there, and the sums are "
    "float32's), then scale the result: rows by a's scales, columns by w's.",
)


def _gemm_inputs() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(31)
    a = torch.randn(48, 64, generator=gen) * torch.logspace(-3, 2, 48)[:, None]  # rows of very different size
    w = torch.randn(40, 64, generator=gen) * torch.logspace(1, -2, 40)[:, None]
    sq_a = torch.randn(32, 32, generator=gen) * torch.logspace(-2, 2, 32)[:, None]
    sq_w = torch.randn(32, 32, generator=gen) * torch.logspace(2, -2, 32)[:, None]
    return {"a 48x64 activation and a 40x64 weight": (a, w), "a square 32x32 pair": (sq_a, sq_w)}


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm())


@register("fp8-rowwise-gemm", hints=GEMM_HINTS)
def check_rowwise_gemm(rowwise_gemm: Any) -> None:
    """``rowwise_gemm(qa, qw) -> a @ w.T`` from rowwise-quantised operands, scales applied to the product."""
    label = "fp8-rowwise-gemm"
    hint = GEMM_HINTS[0]
    from ..fp8 import gemm as fp8_gemm
    from ..fp8 import quantized as fp8_quantized

    for case, (a, w) in _gemm_inputs().items():
        qa, qw = fp8.quantize(a, "rowwise", "e4m3"), fp8.quantize(w, "rowwise", "e4m3")
        with shortcuts.watch(
            [
                (fp8_gemm, "fp8_mm", "fp8.fp8_mm"),
                (fp8, "fp8_mm", "fp8.fp8_mm"),
                (fp8_gemm, "scaled_mm", "fp8.scaled_mm"),
                (fp8, "scaled_mm", "fp8.scaled_mm"),
                (fp8_quantized.Quantized, "dequantize", "Quantized.dequantize"),
            ],
            fn=rowwise_gemm,
        ) as seen:
            got = call(label, rowwise_gemm, qa, qw)
        if seen:
            fail(
                label,
                f"your function calls {seen[0]}, which does the very work the exercise asks for (the check "
                "compares your product with fp8.fp8_mm's).",
                "use the quantised data and the scales themselves: .data and .scale.",
            )
        want = fp8.fp8_mm(qa, qw)
        if not isinstance(got, torch.Tensor) or got.shape != want.shape:
            fail(
                label,
                f"for {case} you returned {type(got).__name__} {tuple(getattr(got, 'shape', ()))}; expected the "
                f"product a @ w.T, shaped {tuple(want.shape)}.",
                hint,
            )
        got = got.detach()
        if _relative(got, want) <= 1e-6:
            continue
        data = qa.data.float() @ qw.data.float().T
        sa, sw = qa.scale.float(), qw.scale.float()
        variants: dict[str, Callable[[], torch.Tensor]] = {
            "the scales are not applied: that is the product of the fp8 data alone": lambda: data,
            "only a's row scales are applied; w's scale each column of the product too": lambda: data * sa,
            "only w's scales are applied; a's scale each row of the product too": lambda: data * sw.T,
            "the scales divide the product: .scale is the decode scale, which multiplies": lambda: (
                data / sa / sw.T
            ),
            "w's scales are applied along the rows of the product (sw not transposed): each must scale its "
            "own column, the output feature it belongs to": lambda: data * sa * sw,
            "the product was computed in bfloat16: products of fp8 values are exact in float32, and a GEMM "
            "accumulates in a wide format": lambda: (
                (qa.data.bfloat16() @ qw.data.bfloat16().T).float() * sa * sw.T
            ),
        }
        for what, make in variants.items():
            try:
                value = make()
            except RuntimeError:  # a broadcast this case's shapes do not allow
                continue
            if value.shape == want.shape and _relative(got, value) <= 1e-6:
                fail(label, f"for {case} {what}.", hint if "bfloat16" not in what else GEMM_HINTS[2])
        if _relative(got, a @ w.T) <= 1e-5:
            fail(
                label,
                f"for {case} your product is that of the unquantised tensors: the exercise multiplies the "
                "quantised ones.",
                GEMM_HINTS[1],
            )
        fail(
            label,
            f"for {case} your product differs from the scaled fp8 product by {_relative(got, want):.2e} "
            "(relative).",
            hint,
        )

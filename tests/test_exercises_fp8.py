"""The checks of chapter fp8: correct answers (the reference and other ways of writing it) pass,
realistic mistakes fail, each with the diagnosis of that mistake."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mpcourse import fp8
from mpcourse.exercises import ExerciseFailed, check

FP8 = torch.float8_e4m3fn


# ---- fp8-tensorwise ------------------------------------------------------------------------------------


def tensorwise_reference(x):
    x = x.float()
    amax = x.abs().max()
    scale = amax / 448.0 if amax > 0 else torch.tensor(1.0)
    return (x / scale).clamp(-448, 448).to(FP8), scale


def tensorwise_reciprocal(x):  # multiplying by 448 / amax is as right as dividing by amax / 448
    x = x.float()
    amax = x.abs().max()
    if amax == 0:
        return x.to(FP8), torch.tensor(1.0)
    return (x * (448.0 / amax)).clamp(-448, 448).to(FP8), amax / 448.0


def tensorwise_tiny_floor(x):  # any positive scale is right for zeros; no clamp is needed either:
    x = x.float()  # with the tensor's own amax, x / scale exceeds 448 by at most a rounding error
    scale = x.abs().max().clamp_min(torch.finfo(torch.float32).tiny) / torch.finfo(FP8).max
    return (x / scale).to(FP8), scale


def tensorwise_python_scale(x):  # numpy for the amax, a Python float for the scale
    values = x.float()
    amax = float(np.abs(values.numpy()).max())
    scale = amax / 448.0 if amax else 1.0
    return (values / scale).clamp(-448, 448).to(FP8), scale


@pytest.mark.parametrize(
    "answer", [tensorwise_reference, tensorwise_reciprocal, tensorwise_tiny_floor, tensorwise_python_scale]
)
@pytest.mark.filterwarnings("error")  # a correct answer writes nothing to stderr, warnings included
def test_tensorwise_accepts_correct_answers(answer, capsys) -> None:
    check("fp8-tensorwise", answer)
    out, err = capsys.readouterr()
    assert "correct" in out and err == ""


def _tensorwise_wrong(variant):
    def fn(x):
        if variant == "bf16-scale":  # amax and scale computed in x's dtype
            amax = x.abs().max()
            scale = amax / 448.0 if amax > 0 else torch.tensor(1.0)
            return (x.float() / scale.float()).clamp(-448, 448).to(FP8), scale
        if variant == "bf16-division":  # the scale is right, the division rounds in bf16 first
            amax = x.float().abs().max()
            scale = amax / 448.0 if amax > 0 else torch.tensor(1.0)
            return (x / scale).float().clamp(-448, 448).to(FP8), scale
        if variant == "course-quantize":
            q = fp8.quantize(x, "tensorwise", "e4m3")
            return q.data, q.scale
        x = x.float()
        amax = x.abs().max()
        if variant == "max-not-abs":
            amax = x.max()
        fmt_max = {"e5m2-max": 57344.0, "fnuz-max": 240.0}.get(variant, 448.0)
        if variant in ("pow2-up", "pow2-down"):  # the right scale rounded to a power of two
            rounding = torch.ceil if variant == "pow2-up" else torch.floor
            scale = torch.exp2(rounding(torch.log2(amax / 448.0))) if amax > 0 else torch.tensor(1.0)
            return (x / scale).clamp(-448, 448).to(FP8), scale
        if variant == "off-by-a-bit":  # no known mistake: the generic message
            scale = amax / 440.0 if amax > 0 else torch.tensor(1.0)
            return (x / scale).clamp(-448, 448).to(FP8), scale
        if variant == "inverted":
            scale = 448.0 / amax if amax > 0 else torch.tensor(1.0)
            return (x * scale).clamp(-448, 448).to(FP8), scale
        if variant == "unscaled":
            return x.clamp(-448, 448).to(FP8), torch.tensor(1.0)
        scale = amax / fmt_max
        if variant != "zero-division" and amax == 0:
            scale = torch.tensor(1.0)
        data = (x / scale).clamp(-448, 448)
        if variant == "float32-data":
            return data, scale
        if variant == "per-row":
            s = x.abs().amax(1, keepdim=True).clamp_min(1e-30) / 448
            return (x / s).to(FP8), s
        return data.to(FP8), scale

    return fn


@pytest.mark.parametrize(
    "variant, message",
    [
        ("max-not-abs", "largest value, .* not the largest magnitude"),
        ("e5m2-max", "E5M2's largest value.*\n.*[Tt]he data is torch.float8_e4m3fn: take the largest"),
        ("fnuz-max", "E4M3FNUZ.*\n.*[Tt]he data is torch.float8_e4m3fn: take the largest finite value"),
        (
            "pow2-up",
            r"for a normal tensor \(std 3\) your scale, 0.03125, is a power of two \(2\^-5\): the right "
            "scale rounded",
        ),
        ("pow2-down", r"is a power of two \(2\^-6\).*divided by it is 718"),
        (
            "off-by-a-bit",
            r"for a normal tensor \(std 3\) your scale is 0.0255.*: the amax \(11.23\) divided by "
            "it is 440, not E4M3's largest",
        ),
        ("inverted", "decode scale, which multiplies"),
        ("unscaled", "cast unscaled"),
        ("zero-division", "a tensor of zeros your scale is 0.0: the amax is 0"),
        ("float32-data", "not torch.float8_e4m3fn"),
        ("per-row", "tensorwise means one"),
        ("bf16-scale", "rounded to torch.bfloat16"),
        ("bf16-division", "rounds every value a first time"),
        ("course-quantize", "course's own tensorwise quantisation"),
    ],
)
def test_tensorwise_rejects_mistakes(variant, message) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("fp8-tensorwise", _tensorwise_wrong(variant))


def test_tensorwise_messages_read_right() -> None:
    """A scale from another format's maximum gets the format hint, not the one about negative outliers;
    a wrong scale's message has no stray "(the scale)"; the negative case says "largest-magnitude entry"."""
    with pytest.raises(ExerciseFailed) as err:
        check("fp8-tensorwise", _tensorwise_wrong("fnuz-max"))
    assert "negative" not in str(err.value)
    with pytest.raises(ExerciseFailed) as err:
        check("fp8-tensorwise", _tensorwise_wrong("off-by-a-bit"))
    assert "(the scale)" not in str(err.value)

    def wrong_on_the_negative_case(x):
        data, scale = tensorwise_reference(x)
        return data, scale * 2 if x.abs().max() == 40 else scale

    with pytest.raises(ExerciseFailed, match="a tensor whose largest-magnitude entry is negative"):
        check("fp8-tensorwise", wrong_on_the_negative_case)


# ---- fp8-mx --------------------------------------------------------------------------------------------


def mx_reference(x):
    rows, cols = x.shape
    blocks = x.float().reshape(rows, cols // 32, 32)
    amax = blocks.abs().amax(dim=-1)
    _, e = torch.frexp(amax)  # amax = m * 2^e with m in [0.5, 1): floor(log2 amax) = e - 1
    exponent = torch.where(amax > 0, e - 1 - 8, torch.full_like(e, -127)).clamp(-127, 127)
    scales = 2.0 ** exponent.double()
    elements = (blocks / scales[..., None]).clamp(-448, 448).to(FP8).reshape(rows, cols)
    return scales.float(), elements


def mx_with_log2_in_float64(x):  # the obvious solution, in float64, where floor(log2) of a float32 is exact
    rows, cols = x.shape
    blocks = x.double().reshape(rows, cols // 32, 32)
    amax = blocks.abs().amax(dim=-1)
    exponent = torch.where(amax > 0, torch.floor(torch.log2(amax)) - 8, torch.full_like(amax, -127))
    scales = torch.exp2(exponent.clamp(-127, 127))
    elements = (blocks / scales[..., None]).clamp(-448, 448).float().to(FP8).reshape(rows, cols)
    return scales, elements


def mx_with_log2_corrected(x):  # float32 log2, then one step down wherever 2^e overshoots amax
    rows, cols = x.shape
    blocks = x.float().reshape(rows, cols // 32, 32)
    amax = blocks.abs().amax(dim=-1)
    e = torch.floor(torch.log2(amax))
    e = torch.where(torch.exp2(e.double()) > amax.double(), e - 1, e)
    exponent = torch.where(amax > 0, e - 8, torch.full_like(e, -127)).clamp(-127, 127)
    scales = torch.exp2(exponent.double())
    elements = (blocks.double() / scales[..., None]).clamp(-448, 448).float().to(FP8).reshape(rows, cols)
    return scales.float(), elements


def mx_block_by_block(x):  # a loop over the blocks with math.frexp, scales returned as E8M0
    rows, cols = x.shape
    scales = torch.empty(rows, cols // 32, dtype=torch.float64)
    elements = torch.empty(rows, cols, dtype=torch.float32)
    for r in range(rows):
        for b in range(cols // 32):
            block = x[r, 32 * b : 32 * (b + 1)].double()
            amax = float(block.abs().max())
            exponent = max(-127, min(127, math.frexp(amax)[1] - 1 - 8)) if amax > 0 else -127
            scales[r, b] = math.ldexp(1.0, exponent)
            elements[r, 32 * b : 32 * (b + 1)] = (block / scales[r, b]).clamp(-448, 448).float()
    return scales.to(torch.float8_e8m0fnu), elements.to(FP8)


@pytest.mark.parametrize(
    "answer", [mx_reference, mx_with_log2_in_float64, mx_with_log2_corrected, mx_block_by_block]
)
@pytest.mark.filterwarnings("error")  # a correct answer writes nothing to stderr, warnings included
def test_mx_accepts_correct_answers(answer, capsys) -> None:
    check("fp8-mx", answer)
    assert capsys.readouterr().err == ""


def _mx_wrong(variant):
    def fn(x):
        if variant == "course-quantize":
            q = fp8.quantize(x, "mxfp8")
            return q.scale_values(), q.data
        rows, cols = x.shape
        block = 16 if variant == "block16" else 32
        dtype = torch.float32 if variant == "log2-float32" else torch.float64
        blocks = x.to(dtype).reshape(rows, cols // block, block)
        if variant == "columns":
            blocks = x.double().t().reshape(cols, rows // 32 if rows % 32 == 0 else 1, -1)
        amax = blocks.amax(dim=-1) if variant == "signed-max" else blocks.abs().amax(dim=-1)
        log2 = torch.log2(amax)
        if variant == "not-pow2":
            scales = torch.where(amax > 0, amax / 448, torch.full_like(amax, 2.0**-127))
        else:
            if variant == "ceil":
                e = torch.ceil(torch.log2(amax / 448))
            elif variant == "ceil-minus-one":
                e = torch.ceil(log2) - 1 - 8
            elif variant == "frexp-exponent":
                e = torch.frexp(amax)[1].double() - 8
            elif variant == "emax-9":  # one subtracted too many: every scale half the rule's
                e = torch.floor(log2) - 9
            elif variant == "round":
                e = torch.round(log2) - 8
            elif variant == "no-emax":
                e = torch.floor(log2)
            else:
                e = torch.floor(log2) - 8
            e = torch.where(amax > 0, e, torch.full_like(amax, 0 if variant == "zero-block-one" else -127))
            if variant != "no-clamp-exponent":
                e = e.clamp(-127, 127)
            scales = torch.exp2(e.double())
        data = blocks.double() / scales[..., None]
        data = data.clamp(-448, 448)
        elements = (
            data.float().to(FP8).reshape(rows, cols)
            if variant != "columns"
            else data.float().to(FP8).reshape(cols, rows).t()
        )
        if variant == "exponents":
            return torch.log2(scales), elements
        if variant == "biased-exponents":
            return (torch.log2(scales) + 127).to(torch.uint8), elements
        return scales, elements

    return fn


@pytest.mark.parametrize(
    "variant, message",
    [
        ("log2-float32", "float32 log2 pitfall"),  # issue 15: this answer used to pass
        ("frexp-exponent", "every exponent is one too large"),
        ("emax-9", r"every exponent is one too small \(all scales half the rule's\)"),
        ("ceil-minus-one", "exactly a power of two"),
        ("round", "off by one power of two"),
        ("not-pow2", "not powers of two"),
        ("ceil", "RCEIL"),
        ("no-emax", "without subtracting"),
        ("no-clamp-exponent", "not clamped to E8M0's range"),
        ("zero-block-one", "block of zeros"),
        ("signed-max", "negative element|not powers of two"),
        ("block16", "shape"),
        ("columns", "shape"),
        ("course-quantize", "course's own MX quantisation"),
        ("exponents", "exponents of the scales"),
        ("biased-exponents", "E8M0 bias 127"),
    ],
)
def test_mx_rejects_mistakes(variant, message) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("fp8-mx", _mx_wrong(variant))


def test_mx_one_too_small_is_not_called_rounding() -> None:
    """An exponent offset of 9 used to be told "rounded down, never to nearest": it is not a rounding."""
    with pytest.raises(ExerciseFailed) as err:
        check("fp8-mx", _mx_wrong("emax-9"))
    text = str(err.value)
    assert "one too small" in text and "saturates" in text and "to nearest" not in text


def test_mx_log2_pitfall_is_real_and_named_with_an_example() -> None:
    """float32 log2 of the float32 just below 8 is 3.0, so floor gives 3 where the exponent is 2; the
    check's edge blocks contain such amaxes, with either sign, and the message shows them."""
    below_8 = torch.nextafter(torch.tensor(8.0), torch.tensor(0.0))
    assert torch.log2(below_8).item() == 3.0 and torch.frexp(below_8)[1].item() - 1 == 2
    with pytest.raises(ExerciseFailed) as err:
        check("fp8-mx", _mx_wrong("log2-float32"))
    text = str(err.value)
    assert "just below a power of two" in text and "7.99999952" in text
    assert "amaxes at, just below and just above powers of two" in text  # the new case caught it


def test_mx_saturates_where_the_floor_rule_overflows() -> None:
    """Without a clamp, an element in (448, 512) becomes NaN on a torch whose cast does not saturate;
    the check says so, and an answer that clamps passes either way."""

    def unclamped(x):
        scales, _ = mx_reference(x)
        rows, cols = x.shape
        blocks = x.float().reshape(rows, cols // 32, 32) / scales.double()[..., None]
        values = blocks.float().reshape(rows, cols)
        return scales, torch.where(values.abs() > 448, torch.nan, values).to(FP8)  # a non-saturating cast

    with pytest.raises(ExerciseFailed, match="NaN: a block's largest element"):
        check("fp8-mx", unclamped)


# ---- fp8-choose-recipe ---------------------------------------------------------------------------------


def choose_reference(x, candidates, max_bits):
    best, best_snr = None, -math.inf
    for name in candidates:
        q = fp8.quantize(x, name)
        if q.bits_per_element > max_bits:
            continue
        snr = fp8.error_stats(x, q)["snr_db"]
        if snr > best_snr:
            best, best_snr = name, snr
    if best is None:
        raise ValueError(f"no candidate fits in {max_bits} bits per element")
    return best


def choose_by_error_energy(x, candidates, max_bits):
    """Another correct solution: the smallest squared error is the highest SNR (same x); max() of an empty
    sequence raises the ValueError."""
    fitting = [(name, fp8.quantize(x, name)) for name in candidates]
    errors = {
        n: float(((q.dequantize() - x) ** 2).sum()) for n, q in fitting if q.bits_per_element <= max_bits
    }
    return max(errors, key=lambda n: -errors[n])


@pytest.mark.parametrize("answer", [choose_reference, choose_by_error_energy])
@pytest.mark.filterwarnings("error")  # a correct answer writes nothing to stderr, warnings included
def test_choose_recipe_accepts_correct_answers(answer, capsys) -> None:
    check("fp8-choose-recipe", answer)
    assert capsys.readouterr().err == ""


def _choose_wrong(variant):
    def fn(x, candidates, max_bits):
        scored = []
        for name in candidates:
            q = fp8.quantize(x, name)
            bits = q.fmt.bits if variant == "ignore-scales" else q.bits_per_element
            if variant != "ignore-budget" and (bits >= max_bits if variant == "strict" else bits > max_bits):
                continue
            scored.append((fp8.error_stats(x, q)["snr_db"], name, q))
        if not scored:
            if variant == "no-error":
                return candidates[0]
            raise ValueError("none fits")
        best = (min if variant == "lowest" else max)(scored, key=lambda s: s[0])
        return best[2] if variant == "quantized" else best[1]

    return fn


@pytest.mark.parametrize(
    "variant, message",
    [
        ("ignore-budget", "over the budget"),
        ("ignore-scales", "Scales are stored too"),
        ("lowest", "lowest"),
        ("strict", "costs exactly 8.25 bits per element"),
        ("no-error", "no candidate fits"),
        ("quantized", "not one of the candidates"),
    ],
)
def test_choose_recipe_rejects_mistakes(variant, message) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("fp8-choose-recipe", _choose_wrong(variant))


# ---- hints ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "label, leak",
    [
        ("fp8-tensorwise", "amax / 448"),
        ("fp8-mx", "floor(log2(amax)) - 8"),
        ("fp8-choose-recipe", "error_stats(x, q)['snr_db']"),
    ],
)
def test_hints_do_not_give_the_formula(label, leak) -> None:
    """The hints of issue 15 (fp8.py:43, :197, :267) spelled out the solution; the ladders do not."""
    from mpcourse.exercises import hints

    assert all(leak not in step for step in hints(label))


# ---- fp8-rowwise-gemm -----------------------------------------------------------------------------------


def gemm_reference(qa, qw):
    return (qa.data.float() @ qw.data.float().T) * qa.scale * qw.scale.T


def gemm_outer_product(qa, qw):  # the two scale vectors as one outer product, in float64 then back
    scales = qa.scale.double().reshape(-1, 1) @ qw.scale.double().reshape(1, -1)
    return ((qa.data.double() @ qw.data.double().T) * scales).float()


def gemm_scaled_operands(qa, qw):  # scaling each operand's rows before the product: the same numbers
    return (qa.data.float() * qa.scale) @ (qw.data.float() * qw.scale).T


@pytest.mark.parametrize("answer", [gemm_reference, gemm_outer_product, gemm_scaled_operands])
@pytest.mark.filterwarnings("error")
def test_rowwise_gemm_accepts_correct_answers(answer, capsys) -> None:
    check("fp8-rowwise-gemm", answer)
    assert capsys.readouterr().err == ""


def _gemm_wrong(variant):
    def fn(qa, qw):
        data = qa.data.float() @ qw.data.float().T
        if variant == "no-scales":
            return data
        if variant == "a-only":
            return data * qa.scale
        if variant == "divide":
            return data / qa.scale / qw.scale.T
        if variant == "not-transposed":
            return data * qa.scale * qw.scale
        if variant == "bf16":
            return (qa.data.bfloat16() @ qw.data.bfloat16().T).float() * qa.scale * qw.scale.T
        if variant == "library":
            return fp8.fp8_mm(qa, qw)
        if variant == "dequantize":
            return qa.dequantize() @ qw.dequantize().T
        raise AssertionError(variant)

    return fn


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ("no-scales", "scales are not applied"),
        ("a-only", "only a's row scales"),
        ("divide", "divide the product"),
        ("not-transposed", "not transposed|raised"),
        ("bf16", "bfloat16"),
        ("library", "fp8.fp8_mm"),
        ("dequantize", "Quantized.dequantize"),
    ],
)
def test_rowwise_gemm_rejects_mistakes(variant, message) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("fp8-rowwise-gemm", _gemm_wrong(variant))

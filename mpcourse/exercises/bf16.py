"""Checks for the exercises of chapter ``bf16``: rounding fp32 to bf16 on the bit pattern, the gap
between neighbouring bf16 numbers, which autocast dtype a GPU should get, and a layer norm of bf16
activations whose statistics a large mean does not destroy.

References are independent of the learner's code: torch's own fp32-to-bf16 conversion (one rounding,
to nearest, ties to even), :meth:`mpcourse.formats.FloatFormat.spacing` (exact, from the format's
parameters), the compute capability from which NVIDIA GPUs have bf16 tensor cores (8.0, Ampere), and
torch's layer_norm in float64 (biased variance, eps inside the square root).
The exercises of the pure-bf16 page live in :mod:`mpcourse.exercises.pure_bf16`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import formats
from . import call, fail, register, shortcuts
from .pure_bf16 import watched_calls

BF16 = formats.BF16


# ---- bf16-round-bits ------------------------------------------------------------------------------


def _round_bits_cases() -> torch.Tensor:
    """fp32 values a conversion to bf16 must round right: ties to odd and to even bf16 mantissas, values
    that carry into the next binade or overflow, subnormals, signed zeros, infinities, random values."""
    tie_bits = [
        0x3F808000,  # 1 + 2^-8: halfway between 1 (even mantissa) and 1 + 2^-7 (odd): stays at 1
        0x3F818000,  # halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): goes up
        0xBF818000,  # the same, negative
        0x437F8000,  # 255.5: halfway between 255 (odd) and 256 (even): goes up, into the next binade
        0x43808000,  # 257: the tie of the stalled sum, goes down to 256
        0x7F7F8000,  # halfway between bf16's largest finite number and the next: rounds to infinity
        0x00018000,  # a tie between two fp32 subnormals' bf16 neighbours
        0x3F808001,  # just above a tie: goes up
        0x3F817FFF,  # just below a tie: goes down
        0x3FFFFFFF,  # just below 2: rounds up to 2
        0x7F7FFFFF,  # fp32's largest finite number: above bf16's largest, rounds to infinity
    ]
    specials = torch.tensor([0.0, -0.0, 1.0, -2.5, float("inf"), float("-inf"), 1e-40, -3e-39])
    ties = torch.from_numpy(np.array(tie_bits, dtype=np.uint32).view(np.float32).copy())
    gen = torch.Generator().manual_seed(11)
    magnitudes = torch.exp2(torch.empty(2000).uniform_(-140, 127, generator=gen))
    signs = torch.where(torch.rand(2000, generator=gen) < 0.5, -1.0, 1.0)
    return torch.cat([ties, specials, (signs * magnitudes).float()])


@register(
    "bf16-round-bits",
    hints=[
        "Converting fp32 to bf16 keeps the top 16 bits of the pattern; the question is only when to add one "
        "to them. Compare the low 16 bits with half of 2^16.",
        "Adding a constant to the whole 32-bit pattern before cutting the low 16 bits rounds in integers: "
        "a carry into bit 16 is the round-up. Which constant makes everything above half carry, and "
        "nothing below?",
        "At exactly half, the carry must happen only when bit 16 (the last bit kept) is 1: let that bit "
        "change the constant by one.",
    ],
)
def check_round_bits(to_bf16: Any) -> None:
    """``to_bf16(x)``: a float32 tensor rounded to bf16 (to nearest, ties to even) in integer operations."""
    label = "bf16-round-bits"
    x = _round_bits_cases()
    want = x.to(torch.bfloat16)  # torch rounds fp32 to bf16 once, to nearest, ties to even
    watched, used = watched_calls(to_bf16, (), rounding=True)
    got = call(label, watched, x.clone())
    if used:
        fail(
            label,
            f"your function let a library round to bf16 ({used[0]}).",
            "do the rounding yourself on the integer bit pattern (x.view(torch.int32)); converting a value "
            "whose low 16 bits are already zero to bf16 rounds nothing and is fine.",
        )
    if not isinstance(got, torch.Tensor) or got.dtype != torch.bfloat16 or got.shape != x.shape:
        what = (
            f"a {got.dtype} tensor of shape {tuple(got.shape)}"
            if isinstance(got, torch.Tensor)
            else repr(got)
        )
        fail(
            label,
            f"expected a torch.bfloat16 tensor of shape {tuple(x.shape)}, got {what}.",
            "put the rounded pattern back in the top 16 bits of an int32, view it as float32 and convert "
            "that (exact) value to bf16.",
        )
    got_bits, want_bits = got.view(torch.int16), want.view(torch.int16)
    wrong = got_bits != want_bits
    if not wrong.any():
        return
    bits = x.view(torch.int32)
    low = bits & 0xFFFF
    truncated = (bits & -65536).view(torch.float32).to(torch.bfloat16).view(torch.int16)
    tie = low == 0x8000
    i = int(wrong.nonzero()[0])
    case = f"x = {x[i].item()!r} (bits {int(bits[i]) & 0xFFFFFFFF:08x})"
    answer = f"you gave {got[i].item()!r}, expected {want[i].item()!r}"
    if torch.equal(got_bits, truncated):
        fail(
            label,
            f"for {case} {answer}: your function truncates (rounds toward zero).",
            "cutting off the low 16 bits always rounds toward zero; round to nearest sometimes goes up.",
        )
    if bool(tie[wrong].all()):
        fail(
            label,
            f"for {case}, exactly halfway between two bf16 numbers, {answer}.",
            "every value except the exact ties is right: a tie goes to the neighbour whose last kept bit is 0.",
        )
    fail(label, f"for {case} {answer}.", "round to nearest: compare the low 16 bits with half of 2^16.")


# ---- bf16-gap -------------------------------------------------------------------------------------


def _gap_cases() -> np.ndarray:
    """float32 values across bf16's whole range, in float64: powers of two and just below them, values
    inside binades, subnormals and zero, both signs."""
    specials = [0.0, -0.0, 1.0, 1.5, 2.0, -2.0, 3.999, 255.0, 256.0, 257.5, 1e-3, 2.0**-126, 2.0**-127, 1e-40]
    specials += [float(np.float32(2.0) - np.float32(2.0**-23)), -1e-45, 3.0e38, -BF16.max]
    gen = np.random.default_rng(12)
    random = np.exp2(gen.uniform(-133, 127.9, 3000)) * gen.choice([-1.0, 1.0], 3000)
    return np.concatenate([np.asarray(specials), random]).astype(np.float32).astype(np.float64)


@register(
    "bf16-gap",
    hints=[
        "Inside one binade [2^e, 2^(e+1)) the bf16 numbers are evenly spaced: how many of them are there, "
        "given 7 stored mantissa bits?",
        "So the gap is a power of two that depends only on e, the binade's exponent. Find e from |x| "
        "(np.floor(np.log2(...)), np.frexp, or the float32 bit pattern; mind what frexp returns).",
        "Below bf16's smallest normal number 2^-126 the spacing stops shrinking: subnormals, and zero, share "
        "one gap, the smallest subnormal.",
    ],
)
def check_gap(bf16_gap: Any) -> None:
    """``bf16_gap(x)``: the gap between neighbouring bf16 numbers in the binade of each |x|."""
    label = "bf16-gap"
    x = _gap_cases()
    want = np.asarray(BF16.spacing(x), dtype=np.float64)
    with shortcuts.watch(
        [(formats.FloatFormat, "spacing", "mpcourse.formats' spacing")], fn=bf16_gap
    ) as used:
        got = call(label, bf16_gap, x.copy())
    if used:
        fail(
            label,
            f"your function used {used[0]}, which computes the answer for you.",
            "compute the gap from the binade of |x| and bf16's number of mantissa bits.",
        )
    try:
        got = np.asarray(got.detach().cpu().double() if isinstance(got, torch.Tensor) else got, np.float64)
    except (TypeError, ValueError):
        fail(label, f"your answer {got!r} is not an array of numbers.", "return one gap per element of x.")
    if got.shape != x.shape:
        fail(
            label,
            f"your answer has shape {got.shape}, expected {x.shape}.",
            "return one gap per element of x.",
        )
    wrong = ~(got == want)
    if not wrong.any():
        return
    i = int(np.flatnonzero(wrong)[0])
    case = f"x = {x[i]!r}: you gave {got[i]!r}, expected {want[i]!r}"
    normal = np.abs(x) >= BF16.tiny
    ratio = np.where(want > 0, got / want, np.nan)
    if not wrong[normal].any():
        fail(
            label,
            f"every normal number is right, but for {case}.",
            "below bf16's smallest normal number the gap no longer shrinks with |x|.",
        )
    if np.allclose(ratio[normal], ratio[normal][0]) and ratio[normal][0] in (0.5, 2.0):
        fail(
            label,
            f"for {case}: every normal gap is off by a factor of {ratio[normal][0]:g}.",
            "count the bits again: how many bf16 numbers does one binade hold? (np.frexp's exponent is one "
            "more than the binade's.)",
        )
    if not np.all(np.log2(got[normal & (got > 0)]) % 1 == 0):
        fail(
            label,
            f"for {case}: your gaps are not powers of two.",
            "the gap is the same for every x of one binade; it does not grow in proportion to x.",
        )
    fail(label, f"for {case}.", "find the binade of |x| first; mind exact powers of two.")


# ---- bf16-autocast-dtype --------------------------------------------------------------------------

#: NVIDIA compute capabilities from Volta on, with whether the GPU has bf16 tensor cores (from sm_80).
_CAPABILITIES: dict[tuple[int, int], str] = {
    (7, 0): "V100",
    (7, 2): "Jetson AGX Xavier",
    (7, 5): "T4",
    (8, 0): "A100",
    (8, 6): "RTX 3090 / A10",
    (8, 7): "Jetson Orin",
    (8, 9): "L4",
    (9, 0): "H100",
    (10, 0): "B200",
    (12, 0): "RTX 5090",
}


@register(
    "bf16-autocast-dtype",
    hints=[
        "The question is which GPUs have bf16 tensor cores, not which ones can run bf16 tensors: all of "
        "them can, which is why is_bf16_supported() answers yes on a T4.",
        "bf16 tensor cores came with one GPU generation; look up its compute capability in the device table "
        "of this chapter and compare the whole (major, minor) pair with it.",
        "Python compares tuples element by element, so a (major, minor) pair can be compared with another "
        "pair directly; comparing the major number alone is enough only if you pick the right one.",
    ],
)
def check_autocast_dtype(autocast_dtype: Any) -> None:
    """``autocast_dtype((major, minor))``: torch.bfloat16 where the GPU has bf16 tensor cores, else float16."""
    label = "bf16-autocast-dtype"
    answers = {cc: call(label, autocast_dtype, cc) for cc in _CAPABILITIES}
    for cc, got in answers.items():
        if got not in (torch.bfloat16, torch.float16):
            fail(
                label,
                f"for compute capability {cc} ({_CAPABILITIES[cc]}) you returned {got!r}.",
                "return torch.bfloat16 or torch.float16 (a torch.dtype, not a string).",
            )
    if len(set(answers.values())) == 1:
        fail(
            label,
            f"you returned {next(iter(answers.values()))} for every GPU from a V100 to a B200.",
            "decide from the compute capability you are given; a call that asks this machine's GPU, or "
            "is_bf16_supported(), does not depend on it.",
        )
    for cc, got in answers.items():
        want = torch.bfloat16 if cc >= (8, 0) else torch.float16
        if got != want:
            why = (
                "it has bf16 tensor cores, so bf16 autocast needs no loss scaler and runs as fast as fp16"
                if want == torch.bfloat16
                else "it has no bf16 tensor cores: bf16 would run without them"
            )
            fail(
                label,
                f"for compute capability {cc} ({_CAPABILITIES[cc]}) you returned {got}, but {why}.",
                "find the first compute capability with bf16 tensor cores in this chapter's device table.",
            )


# ---- bf16-stable-norm -----------------------------------------------------------------------------

#: Row length of the activations the check normalises; short, so that a variance divided by d - 1
#: instead of d moves every output by a visible amount (a factor sqrt(64/63)).
_NORM_WIDTH = 64
#: Largest error allowed in an output (whose standard deviation is 1). fp32 arithmetic, Welford's
#: update included, stays far below it; a variance from E[x^2] - E[x]^2 in fp32 does not.
_NORM_TOLERANCE = 1e-3


def _norm_cases() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """bf16 activations, one row per case, and masks of the row groups: means near zero, large means
    (up to 2^14, one row a constant with one element a gap above), a variance comparable to eps, and
    constant rows (variance zero)."""
    gen = torch.Generator().manual_seed(13)
    z = torch.randn(24, _NORM_WIDTH, generator=gen, dtype=torch.float64)
    near_zero = [(0.0, 1.0), (0.0, 1.0), (0.5, 2.0), (-3.0, 1.0)]
    large = [(100.0, 1.0), (-100.0, 1.0), (256.0, 1.0), (300.0, 2.0), (1024.0, 4.0), (4000.0, 16.0)]
    large += [(1000.0, 1.0), (2.0**14, 40.0)]
    rows = [m + s * z[i] for i, (m, s) in enumerate(near_zero + large)]
    spike = torch.full((_NORM_WIDTH,), 2.0**14, dtype=torch.float64)
    spike[5] += BF16.spacing(2.0**14)
    rows.append(spike)
    rows += [0.01 + 0.003 * z[20 + i] for i in range(3)]  # variance about 1e-5, as large as eps
    rows += [
        torch.full((_NORM_WIDTH,), 3.0, dtype=torch.float64),
        torch.zeros(_NORM_WIDTH, dtype=torch.float64),
    ]
    x = torch.stack(rows).to(torch.bfloat16)
    group = torch.tensor([0] * len(near_zero) + [1] * (len(large) + 1) + [2] * 3 + [3] * 2)
    masks = {
        "near zero": group == 0,
        "large mean": group == 1,
        "small variance": group == 2,
        "constant": group == 3,
    }
    return x, masks


@register(
    "bf16-stable-norm",
    hints=[
        "bf16 stores x exactly as it is; the damage is done by arithmetic on it. Which operations round "
        "to bf16 when both of their inputs are bf16, and which dtype can hold every bf16 value exactly?",
        "A variance is a small number computed from large ones when the mean is large. Compare the size of "
        "E[x^2] with that of the variance for activations around 1000 with a spread of 1: how many digits "
        "of E[x^2] must survive for the difference to keep any?",
        "Deviations from the mean are small numbers to begin with; squaring and averaging them loses "
        "nothing to cancellation. Then check what layer_norm divides the sum of squares by, and where its "
        "eps goes.",
    ],
)
def check_stable_norm(layer_norm_stable: Any) -> None:
    """``layer_norm_stable(x, eps)``: a bf16 tensor normalised over its last dimension (no affine
    parameters), as float32, with errors from the arithmetic far below those of bf16 rounding."""
    label = "bf16-stable-norm"
    x, masks = _norm_cases()
    eps = 1e-5
    exact = x.double()
    want = F.layer_norm(exact, (_NORM_WIDTH,), eps=eps)  # biased variance, eps inside the square root
    targets = [
        (F, "layer_norm", "torch.nn.functional.layer_norm"),
        (torch, "layer_norm", "torch.layer_norm"),
        (torch, "native_layer_norm", "torch.native_layer_norm"),
    ]
    with shortcuts.watch(targets, fn=layer_norm_stable) as used:
        got = call(label, layer_norm_stable, x.clone(), eps)
    if used:
        fail(
            label,
            f"your function used {used[0]}, which computes the statistics for you.",
            "compute the mean and the variance of each row yourself.",
        )
    if not isinstance(got, torch.Tensor) or got.shape != x.shape:
        what = f"a tensor of shape {tuple(got.shape)}" if isinstance(got, torch.Tensor) else repr(got)
        fail(
            label,
            f"expected a tensor of shape {tuple(x.shape)}, got {what}.",
            "normalise each row of x over its last dimension; keepdim=True keeps the statistics broadcastable.",
        )
    if got.dtype not in (torch.float32, torch.float64):
        fail(
            label,
            f"your output is {got.dtype}: rounding the output to 16 bits undoes the care taken in computing it.",
            "return float32, the dtype autocast gives a layer norm's output; do the arithmetic in it too.",
        )
    got = got.detach().cpu().double()
    finite = torch.isfinite(got).all(-1)
    if not finite[masks["constant"]].all():
        fail(
            label,
            "a row whose elements are all equal (variance 0) gave NaN or infinity.",
            "that is what eps is for: look at where layer_norm adds it.",
        )
    if not finite.all():
        i = int((~finite).nonzero()[0])
        fail(
            label,
            f"a row with mean {exact[i].mean().item():.4g} gave NaN or infinity: its variance came out "
            "negative or zero.",
            "a variance cannot be negative, but a difference of two nearly equal rounded numbers can be.",
        )
    error = (got - want).abs().amax(-1)
    wrong = error > _NORM_TOLERANCE
    if not wrong.any():
        return
    i = int(wrong.nonzero()[0])
    case = (
        f"for the row with mean {exact[i].mean().item():.4g} your output errs by up to {error[i].item():.2g}"
    )
    # Away from constant rows, a right answer is an affine map of each row: a * x + b, with a = 1/sigma.
    variable = ~masks["constant"]
    design = torch.stack([exact, torch.ones_like(exact)], -1)[variable]
    coefficients = torch.linalg.lstsq(design, got[variable].unsqueeze(-1)).solution
    residual = (design @ coefficients).squeeze(-1) - got[variable]
    if (residual.abs().amax(-1)[wrong[variable]] > 1e-4).any():
        fail(
            label,
            f"{case}, and not just by a wrong mean or scale: values were rounded on the way.",
            "some of your arithmetic runs in bf16: an operation on bf16 tensors rounds its result to bf16.",
        )
    centre = got.mean(-1).abs()
    if (centre[wrong] > _NORM_TOLERANCE / 2).any():
        j = int((wrong & (centre > _NORM_TOLERANCE / 2)).nonzero()[0])
        fail(
            label,
            f"for the row with mean {exact[j].mean().item():.4g} your outputs average {got[j].mean().item():.3g}, "
            "not 0: the mean you subtract is off.",
            "what dtype does a mean of a bf16 tensor have, and how far apart are bf16 numbers at that size?",
        )
    scale = got.std(-1, correction=0) / want.std(-1, correction=0)
    normal = masks["near zero"] | masks["large mean"]
    if torch.allclose(
        scale[normal], torch.full_like(scale[normal], ((_NORM_WIDTH - 1) / _NORM_WIDTH) ** 0.5), atol=1e-4
    ):
        fail(
            label,
            f"{case}: every output is smaller by a factor sqrt({_NORM_WIDTH - 1}/{_NORM_WIDTH}).",
            "torch's layer_norm uses the biased estimator of the variance: which count does that divide by?",
        )
    if not wrong[normal].any():
        fail(
            label,
            f"{case}, a row whose variance is about as large as eps; rows with a larger variance are right.",
            "eps is added to one quantity before the square root is taken: to which?",
        )
    fail(
        label,
        f"{case}: your variance lost its digits to cancellation (rows with a mean near zero are right).",
        "E[x^2] - E[x]^2 subtracts two numbers near mean^2 from each other; square deviations instead.",
    )

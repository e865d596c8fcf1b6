"""Checks for the exercises of chapter ``fp8_libraries`` (FP8 in practice: torchao, Transformer Engine, speed).

References are independent of the learner's code and each is tied to its primary source:

- ``speedup``: :func:`mpcourse.bench.fp8_model.fp8_speedup`, a roofline model whose byte counts are
  those of torchao 0.18's own roofline estimate (``torchao/testing/training/roofline_utils.py``),
  tested against hand-computed values in ``tests/test_fp8_model.py``;
- ``gemm_formats``: :data:`TORCHAO_GEMM_FORMATS`, read from torchao 0.18.0's
  ``Float8LinearConfig.from_recipe_name`` and ``Float8LinearConfig.__post_init__``
  (``torchao/float8/config.py``), and compared with torchao's config objects by the tests wherever
  torchao imports;
- ``te_default``: :func:`te_default_recipe`, the rule of Transformer Engine 2.18's
  ``get_default_fp8_recipe`` and ``_compute_*_support`` (``transformer_engine/pytorch/quantization.py``),
  which the tests compare with :mod:`mpcourse.fp8.libraries`;
- ``auto_filter``: :func:`auto_filter_reference`, torchao 0.18.0's ``_auto_filter_for_tensorwise``
  (``torchao/float8/float8_linear_utils.py``) restated, and compared with it by the tests wherever
  torchao imports.

Each check also computes the usual misreadings of its task and names the one it sees.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..bench import datasheets, fp8_model
from . import ExerciseFailed, NotDoneYet, call, fail, register, shortcuts

# ---- fp8_libraries-speedup ---------------------------------------------------------------------------

SPEEDUP_HINTS = (
    "Write three times and compare them: the bf16 GEMM, the fp8 GEMM, and the casts. Each GEMM's time "
    "is set by whichever of its two limits, arithmetic or memory traffic, takes longer; the two do not "
    "add up, because a GPU overlaps them.",
    "Count what each GEMM moves: both operands read once and the output written once. Which of those "
    "three tensors are 1 byte per element in the fp8 product, and which stay at 2? And how many FLOPs "
    "does one multiply-add count for, in the datasheet's peak?",
    "Before its GEMM, fp8 casts both bf16 operands, and nothing else: current scaling reads a tensor "
    "once for its amax and once more to write the fp8 copy. Those passes do almost no arithmetic, so "
    "their time is their bytes over the bandwidth. The speed-up is the bf16 time over the sum of the "
    "fp8 GEMM's time and the casts' times.",
)

#: The GPUs and shapes the check models: compute-bound and memory-bound GEMMs, torchao's two
#: documented shapes, a decode-like one with few tokens, on an Ada, a Hopper and a Blackwell datasheet.
SPEEDUP_SHEETS: tuple[str, ...] = ("h100-sxm", "l4", "b200-hgx")
SPEEDUP_SHAPES: tuple[tuple[int, int, int], ...] = (
    (1024, 2048, 1024),
    (4096, 8192, 16384),
    (16, 4096, 4096),
    (256, 256, 256),
    (2048, 2048, 2048),
    (8192, 1024, 8192),
)
SPEEDUP_RTOL = 1e-6


def _modelled(
    m: int,
    k: int,
    n: int,
    sheet: datasheets.Datasheet,
    *,
    flops_per_mac: tuple[float, float] = (2, 2),
    fp8_operand_bytes: float = 1,
    out_bytes: tuple[float, float] = (2, 2),
    cast_bytes: float = 5,
    cast_a: bool = True,
    cast_b: bool = True,
    combine: Callable[[float, float], float] = max,
) -> float:
    """The speed-up model with each of its choices exposed, to compute the usual misreadings."""
    bw = sheet.bandwidth_gb_s * 1e9
    bf16_peak, fp8_peak = sheet.peak_tflops("bf16"), sheet.peak_tflops("fp8")
    t16 = combine(
        flops_per_mac[0] * m * k * n / (bf16_peak * 1e12), (2 * (m * k + k * n) + out_bytes[0] * m * n) / bw
    )
    t8 = combine(
        flops_per_mac[1] * m * k * n / (fp8_peak * 1e12),
        (fp8_operand_bytes * (m * k + k * n) + out_bytes[1] * m * n) / bw,
    )
    casts = cast_bytes * (m * k * cast_a + k * n * cast_b) / bw
    return t16 / (t8 + casts)


def _speedup_variants() -> dict[str, Callable[..., float]]:
    """The usual mistakes, each as a model, with the diagnosis the check gives when it sees it.

    Counting M K N FLOPs and using the printed (sparse) peaks both halve every compute time, so no
    input can tell them apart: one diagnosis names both.
    """

    def variant(**choices: Any) -> Callable[..., float]:
        return lambda m, k, n, sheet: _modelled(m, k, n, sheet, **choices)

    return {
        "you left out the casts: without them this is the speed-up of the fp8 GEMM alone, which a training "
        "step never gets, since its operands arrive in bf16": variant(cast_bytes=0),
        "your compute times are half of what they should be: either you count M K N FLOPs per GEMM (a "
        "multiply-add is two FLOPs, and the peaks count both, so a GEMM performs 2 M K N), or you used the "
        "datasheet's printed peaks, which assume 2:4 sparsity (sheet.peak_tflops gives the dense ones)": variant(
            flops_per_mac=(1, 1)
        ),
        "your fp8 GEMM counts half the FLOPs of the bf16 one: the two perform the same arithmetic, "
        "2 M K N each; fp8 is faster because its peak is higher, not because it does less": variant(
            flops_per_mac=(2, 1)
        ),
        "your fp8 GEMM reads its operands at 2 bytes per element, as bf16 would; fp8 operands are 1 byte "
        "each (the output stays bf16)": variant(fp8_operand_bytes=2),
        "your fp8 GEMM writes a 1-byte output; torchao's fp8 GEMMs write bf16, 2 bytes per element": variant(
            out_bytes=(2, 1)
        ),
        "you add the compute time and the memory time; the roofline takes the larger of the two, since the "
        "GPU moves data while it computes": variant(combine=lambda a, b: a + b),
        "your casts move 3 bytes per element: that is a cast whose scale is known in advance (delayed "
        "scaling); torchao's recipes scale currently, which first reads each operand for its amax": variant(
            cast_bytes=3
        ),
        "your casts move 4 bytes per element; count the amax pass (it reads bf16), then the cast (it reads "
        "bf16 and writes fp8)": variant(cast_bytes=4),
        "you cast only the (M x K) operand; the (K x N) weight arrives in bf16 too and is cast as well": variant(
            cast_b=False
        ),
        "you cast only the (K x N) operand; the (M x K) activation arrives in bf16 too and is cast as "
        "well": variant(cast_a=False),
        "your value is the reciprocal: fp8 time over bf16 time; a speed-up is the bf16 time over the fp8 "
        "time (above 1 when fp8 wins)": lambda m, k, n, sheet: 1 / _modelled(m, k, n, sheet),
    }


def _close(got: float, want: float) -> bool:
    return math.isclose(got, want, rel_tol=SPEEDUP_RTOL)


@register("fp8_libraries-speedup", hints=SPEEDUP_HINTS)
def check_speedup(fp8_speedup: Any) -> None:
    """``fp8_speedup(m, k, n, sheet) -> float``: bf16 time over fp8 time, casts included, one GEMM."""
    label = "fp8_libraries-speedup"
    cases = [(shape, datasheets.DATASHEETS[key]) for key in SPEEDUP_SHEETS for shape in SPEEDUP_SHAPES]
    got = []
    with shortcuts.watch(
        [
            (fp8_model, "fp8_speedup", "fp8_model.fp8_speedup"),
            (fp8_model, "gemm_seconds", "fp8_model.gemm_seconds"),
            (fp8_model, "cast_seconds", "fp8_model.cast_seconds"),
        ],
        fn=fp8_speedup,
    ) as seen:
        for (m, k, n), sheet in cases:
            out = call(label, fp8_speedup, m, k, n, sheet)
            if isinstance(out, torch.Tensor) and out.numel() == 1:
                out = out.item()
            if isinstance(out, bool) or not (isinstance(out, (int, float)) or hasattr(out, "__float__")):
                fail(
                    label,
                    f"for M, K, N = {m}, {k}, {n} on the {sheet.name} you returned {type(out).__name__} {out!r}; "
                    "expected one number, the speed-up.",
                    SPEEDUP_HINTS[0],
                )
            got.append(float(out))
    if seen:
        fail(
            label,
            f"your function calls {seen[0]}, the course's model, which is the answer the exercise asks for.",
            "write the three times yourself; fp8_model is there to compare with afterwards.",
        )
    want = [fp8_model.fp8_speedup(m, k, n, sheet) for (m, k, n), sheet in cases]
    wrong = [i for i, (g, w) in enumerate(zip(got, want, strict=True)) if not _close(g, w)]
    if not wrong:
        return
    for diagnosis, variant in _speedup_variants().items():
        if all(_close(g, variant(m, k, n, s)) for g, ((m, k, n), s) in zip(got, cases, strict=True)):
            fail(label, f"{diagnosis}.", SPEEDUP_HINTS[1] if "FLOP" in diagnosis else SPEEDUP_HINTS[2])
    i = wrong[0]
    (m, k, n), sheet = cases[i]
    fail(
        label,
        f"for M, K, N = {m}, {k}, {n} on the {sheet.name} your speed-up is {got[i]:.4g}, not the model's "
        f"{want[i]:.4g} ({len(wrong)} of {len(cases)} cases differ).",
        SPEEDUP_HINTS[0],
    )


# ---- fp8_libraries-gemm_formats ----------------------------------------------------------------------

GEMMS: tuple[str, ...] = ("output", "grad_input", "grad_weight")
E4M3, E5M2 = "float8_e4m3fn", "float8_e5m2"

#: Which of a linear layer's GEMMs torchao 0.18.0 runs in fp8, and with which operand formats, per
#: recipe name. Operands in the order of the GEMM torchao writes: output = input @ weight.T,
#: grad_input = grad_output @ weight, grad_weight = grad_output.T @ input. None: high precision.
#: From ``Float8LinearConfig.from_recipe_name``: tensorwise is the default config, whose grad_output
#: defaults to E5M2 (``__post_init__``); rowwise sets E4M3 for every operand; rowwise_with_gw_hp
#: disables scaling (``ScalingType.DISABLED``) for both operands of the grad_weight GEMM.
TORCHAO_GEMM_FORMATS: dict[str, dict[str, tuple[str, str] | None]] = {
    "tensorwise": {"output": (E4M3, E4M3), "grad_input": (E5M2, E4M3), "grad_weight": (E5M2, E4M3)},
    "rowwise": {"output": (E4M3, E4M3), "grad_input": (E4M3, E4M3), "grad_weight": (E4M3, E4M3)},
    "rowwise_with_gw_hp": {"output": (E4M3, E4M3), "grad_input": (E4M3, E4M3), "grad_weight": None},
}
#: The operands of each GEMM, in the order of :data:`TORCHAO_GEMM_FORMATS`.
GEMM_OPERANDS: dict[str, tuple[str, str]] = {
    "output": ("input", "weight"),
    "grad_input": ("grad_output", "weight"),
    "grad_weight": ("grad_output", "input"),
}

GEMM_FORMATS_HINTS = (
    "Start from torchao's default, Float8LinearConfig(): its casts give a target format per operand "
    "(input, weight, grad_output), and each GEMM takes two of those operands. Which default does "
    "grad_output get, and why would a gradient want that format?",
    "The rowwise recipe builds its CastConfigs with an explicit target_dtype for every operand; "
    "rowwise_with_gw_hp adds separate configs for the operands of the weight-gradient GEMM. Read what "
    "each sets (scaling type, granularity, format).",
    "A cast whose scaling type is ScalingType.DISABLED leaves its tensor in its original precision, and "
    "a GEMM runs in fp8 only if both its operands are fp8 (Float8LinearConfig checks that). Write each "
    "pair in the GEMM's order: output = input @ weight.T, grad_input = grad_output @ weight, "
    "grad_weight = grad_output.T @ input.",
)


def _format_name(x: Any) -> str | None:
    """'float8_e4m3fn' from a torch dtype or a string ('torch.float8_e4m3fn' too); None stays None."""
    if x is None:
        return None
    if isinstance(x, torch.dtype):
        return str(x).removeprefix("torch.")
    if isinstance(x, str):
        return x.strip().removeprefix("torch.")
    return repr(x)


def _normalise_gemm(value: Any) -> tuple[str, ...] | str | None:
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        return tuple(_format_name(v) or "None" for v in value)
    return f"not a pair: {value!r}"


@register("fp8_libraries-gemm_formats", hints=GEMM_FORMATS_HINTS)
def check_gemm_formats(gemm_formats: Any) -> None:
    """``gemm_formats(recipe) -> {gemm: (format, format) | None}`` for torchao's three recipe names."""
    label = "fp8_libraries-gemm_formats"
    hint = GEMM_FORMATS_HINTS[0]
    answers: dict[str, dict[str, Any]] = {}
    for recipe in TORCHAO_GEMM_FORMATS:
        out = call(label, gemm_formats, recipe)
        if not isinstance(out, dict):
            fail(
                label,
                f"for {recipe!r} you returned {type(out).__name__}; expected a dict with the keys "
                f"{', '.join(GEMMS)}.",
                hint,
            )
        if set(out) != set(GEMMS):
            fail(
                label,
                f"for {recipe!r} your dict has the keys {sorted(map(str, out))}; expected exactly "
                f"{', '.join(GEMMS)}.",
                hint,
            )
        answers[recipe] = {g: _normalise_gemm(out[g]) for g in GEMMS}
        for g in GEMMS:
            value = answers[recipe][g]
            if isinstance(value, str) or (isinstance(value, tuple) and len(value) != 2):
                fail(
                    label,
                    f"for {recipe!r}, {g} is {out[g]!r}; give a pair of formats (one per operand), or None for "
                    "a GEMM in high precision.",
                    hint,
                )
            if isinstance(value, tuple) and any("bfloat16" in v or v in ("bf16", "float32") for v in value):
                fail(
                    label,
                    f"for {recipe!r}, {g} is {out[g]!r}: a GEMM in high precision is None in this exercise, "
                    "not a pair of high-precision formats.",
                    hint,
                )
    for recipe, want in TORCHAO_GEMM_FORMATS.items():
        got = answers[recipe]
        for g in GEMMS:
            a, b = got[g], want[g]
            if a == b:
                continue
            _diagnose_gemm(label, recipe, g, a, b)


def _diagnose_gemm(label: str, recipe: str, gemm: str, got: Any, want: Any) -> None:
    operands = " and ".join(GEMM_OPERANDS[gemm])
    if isinstance(got, tuple) and any(v.endswith("fnuz") for v in got):
        fail(
            label,
            f"for {recipe!r}, {gemm} uses {got}: the 'fnuz' formats are what torchao picks on AMD's MI300; on "
            "NVIDIA GPUs (and in this exercise) the formats are float8_e4m3fn and float8_e5m2.",
            GEMM_FORMATS_HINTS[0],
        )
    if want is None:
        fail(
            label,
            f"for {recipe!r} you run {gemm} in fp8 ({got}); this recipe keeps the weight-gradient GEMM in high "
            "precision: both its casts have scaling disabled. That is what makes it torchao's most accurate "
            "recipe.",
            GEMM_FORMATS_HINTS[2],
        )
    if got is None:
        what = (
            "only the weight-gradient GEMM stays in high precision in rowwise_with_gw_hp"
            if recipe == "rowwise_with_gw_hp"
            else f"the {recipe!r} recipe runs all three GEMMs of a linear layer in fp8"
        )
        fail(label, f"for {recipe!r} you keep {gemm} in high precision; {what}.", GEMM_FORMATS_HINTS[1])
    if sorted(got) == sorted(want):
        fail(
            label,
            f"for {recipe!r}, {gemm} has the right formats in the wrong order: {got}. Give them in the order "
            f"of the GEMM's operands, {operands}.",
            GEMM_FORMATS_HINTS[2],
        )
    grad_position = 0 if gemm in ("grad_input", "grad_weight") else None
    if recipe == "tensorwise" and grad_position is not None and got[grad_position] == E4M3:
        fail(
            label,
            f"for 'tensorwise', {gemm} casts grad_output to {got[grad_position]}; the tensorwise recipe is "
            "torchao's default configuration, which casts gradients to float8_e5m2: E5M2 trades a bit of "
            "precision for range.",
            GEMM_FORMATS_HINTS[0],
        )
    if recipe != "tensorwise" and E5M2 in got:
        fail(
            label,
            f"for {recipe!r}, {gemm} uses float8_e5m2 ({got}); the rowwise recipes set float8_e4m3fn for every "
            "operand, gradients included (torchao's docstring: 'e4m3 for activations, weights, gradients').",
            GEMM_FORMATS_HINTS[1],
        )
    if gemm == "output" and E5M2 in got:
        fail(
            label,
            f"for {recipe!r} the forward GEMM uses {got}; its operands, activations and weights, are cast to "
            "float8_e4m3fn in every recipe.",
            GEMM_FORMATS_HINTS[0],
        )
    fail(
        label,
        f"for {recipe!r}, {gemm} should be the formats of {operands}; you gave {got}.",
        GEMM_FORMATS_HINTS[1],
    )


# ---- fp8_libraries-te_default ------------------------------------------------------------------------

TE_DEFAULT_HINTS = (
    "TE's get_default_fp8_recipe asks its questions in order and returns at the first yes: can this GPU run "
    "MXFP8, then is it sm_120 or newer, and otherwise one last recipe. Which GPUs pass the MXFP8 test, "
    "and which newer ones fail it?",
    "The choice of a default does not check that it can run. te.autocast does that when it is entered: "
    "every recipe first needs TE's general fp8 support, and a recipe with blocks needs its own on top. "
    "Read _compute_fp8_support for which GPUs it accepts.",
    "_compute_fp8_support accepts sm_90 and newer outright, refuses anything below sm_89, and on sm_89 "
    "(Ada) alone also looks at the CUDA version (and cuBLASLt's, which comes with it). Compare tuples: "
    "(8, 9) < (9, 0) in Python, as in TE.",
)

#: Transformer Engine 2.18's default-recipe rule (``get_default_fp8_recipe``): MXFP8 where
#: ``_compute_mxfp8_support`` passes (sm_100 up to, not including, sm_120), Float8CurrentScaling on
#: sm_120+, DelayedScaling on everything else, pre-Ada GPUs included.
TE_MXFP8_RANGE = ((10, 0), (12, 0))
TE_CURRENT_FROM = (12, 0)
#: ``_compute_fp8_support``: sm_90+ always, sm_89 with CUDA 12.1+ (and cuBLASLt 12.1.3+), nothing older.
TE_FP8_FROM, TE_FP8_NO_CUDA_CHECK_FROM, TE_ADA_CUDA = (8, 9), (9, 0), (12, 1)

#: (compute capability, CUDA version) pairs the check asks about.
TE_CASES: tuple[tuple[tuple[int, int], tuple[int, int]], ...] = (
    ((7, 0), (12, 4)),
    ((7, 5), (12, 4)),
    ((8, 0), (12, 8)),
    ((8, 6), (12, 8)),
    ((8, 9), (12, 0)),
    ((8, 9), (12, 1)),
    ((8, 9), (12, 8)),
    ((9, 0), (12, 0)),
    ((9, 0), (12, 9)),
    ((10, 0), (12, 8)),
    ((10, 3), (12, 9)),
    ((11, 0), (13, 0)),
    ((12, 0), (12, 8)),
    ((12, 1), (13, 0)),
)


def te_default_recipe(compute_capability: tuple[int, int], cuda: tuple[int, int]) -> tuple[str, bool]:
    """TE 2.18's default recipe class for a GPU, and whether ``te.autocast`` accepts it there.

    The default comes from ``get_default_fp8_recipe``; whether it runs, from the checks ``te.autocast``
    makes on entering (``check_recipe_support`` and ``FP8GlobalStateManager.autocast_enter``): the
    general fp8 support of ``_compute_fp8_support`` for every recipe, and for MXFP8 also
    ``_compute_mxfp8_support`` (which passes wherever MXFP8 was chosen).
    """
    cc = tuple(compute_capability)
    if TE_MXFP8_RANGE[0] <= cc < TE_MXFP8_RANGE[1]:
        name = "MXFP8BlockScaling"
    elif cc >= TE_CURRENT_FROM:
        name = "Float8CurrentScaling"
    else:
        name = "DelayedScaling"
    if cc >= TE_FP8_NO_CUDA_CHECK_FROM:
        runs = True
    elif cc < TE_FP8_FROM:
        runs = False
    else:
        runs = tuple(cuda) >= TE_ADA_CUDA
    return name, runs


def _te_name_variants() -> dict[str, Callable[[tuple[int, int]], str]]:
    """Misreadings of which recipe get_default_fp8_recipe returns, by compute capability."""
    return {
        "you give Float8CurrentScaling everywhere: it is the recipe TE's guides start from, but "
        "get_default_fp8_recipe picks it only on sm_120 and newer": lambda cc: "Float8CurrentScaling",
        "you give MXFP8BlockScaling on sm_120 and newer; TE 2.18 refuses MXFP8 there ('not supported on 12.0+ "
        "architectures yet') and falls back to Float8CurrentScaling": lambda cc: (
            "MXFP8BlockScaling" if cc >= (10, 0) else "DelayedScaling"
        ),
        "you give DelayedScaling on Blackwell (sm_100 to sm_11x); the first question get_default_fp8_recipe "
        "asks is whether MXFP8 runs, and there it does": lambda cc: (
            "Float8CurrentScaling" if cc >= (12, 0) else "DelayedScaling"
        ),
        "you give Float8CurrentScaling from Blackwell on; TE picks MXFP8BlockScaling on sm_100 to sm_11x": lambda cc: (
            "Float8CurrentScaling" if cc >= (10, 0) else "DelayedScaling"
        ),
    }


def _te_runs_variants() -> dict[str, Callable[[tuple[int, int], tuple[int, int]], bool]]:
    """Misreadings of whether te.autocast accepts the default, by compute capability and CUDA version."""
    return {
        "you ignore the CUDA version on Ada: on sm_89 TE's fp8 support also needs CUDA 12.1 (and cuBLASLt "
        "12.1.3)": lambda cc, cuda: cc >= (8, 9),
        "you require CUDA 12.1 on Hopper and newer too; TE checks the CUDA version only on sm_89, and accepts "
        "sm_90+ outright": lambda cc, cuda: cc >= (8, 9) and cuda >= (12, 1),
        "you say the default never runs on Ada; sm_89 runs TE's fp8 recipes with CUDA 12.1 or newer": lambda cc, cuda: (
            cc >= (9, 0)
        ),
    }


def _recipe_name(x: Any) -> str:
    if isinstance(x, type):
        x = x.__name__
    text = str(x).strip()
    return text.removesuffix("()").rsplit(".", 1)[-1]


@register("fp8_libraries-te_default", hints=TE_DEFAULT_HINTS)
def check_te_default(te_default: Any) -> None:
    """``te_default(compute_capability, cuda) -> (recipe class name, runs)`` for TE 2.18."""
    label = "fp8_libraries-te_default"
    hint = TE_DEFAULT_HINTS[0]
    got: list[tuple[str, bool]] = []
    for cc, cuda in TE_CASES:
        out = call(label, te_default, cc, cuda)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            fail(
                label,
                f"for compute capability {cc} you returned {type(out).__name__} {out!r}; expected a pair "
                "(recipe class name, whether te.autocast runs it).",
                hint,
            )
        name, runs = out
        if not isinstance(runs, (bool, np.bool_)):
            fail(
                label,
                f"for compute capability {cc} the second item is {runs!r}; expected True or False.",
                hint,
            )
        got.append((_recipe_name(name), bool(runs)))
    want = [te_default_recipe(cc, cuda) for cc, cuda in TE_CASES]
    if got == want:
        return
    unknown = sorted({n for n, _ in got} - {"DelayedScaling", "Float8CurrentScaling", "MXFP8BlockScaling"})
    if "None" in unknown:
        cc = next(cc for (cc, _), (n, _) in zip(TE_CASES, got, strict=True) if n == "None")
        fail(
            label,
            f"for compute capability {cc} you give no recipe (None); get_default_fp8_recipe never returns None: "
            "it picks a recipe without asking whether it can run, and te.autocast refuses it afterwards.",
            TE_DEFAULT_HINTS[1],
        )
    if unknown:
        fail(
            label,
            f"you name {unknown[0]!r}, which get_default_fp8_recipe never returns in TE 2.18; give the class "
            "name of the recipe it returns (DelayedScaling, for instance).",
            hint,
        )
    names, runs = [n for n, _ in got], [r for _, r in got]
    if names != [n for n, _ in want]:
        for diagnosis, rule in _te_name_variants().items():
            if names == [rule(cc) for cc, _ in TE_CASES]:
                fail(label, f"{diagnosis}.", TE_DEFAULT_HINTS[0])
    else:
        older = [cc for (cc, _), r in zip(TE_CASES, runs, strict=True) if r and cc < TE_FP8_FROM]
        if older:
            fail(
                label,
                f"you say TE's default runs on compute capability {older[0]}, older than Ada (sm_89): it is chosen "
                "there, but te.autocast then refuses it, since _compute_fp8_support needs compute capability 8.9.",
                TE_DEFAULT_HINTS[1],
            )
        for diagnosis, rule in _te_runs_variants().items():
            if runs == [rule(cc, cuda) for cc, cuda in TE_CASES]:
                fail(label, f"{diagnosis}.", TE_DEFAULT_HINTS[2])
    i = next(i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w)
    cc, cuda = TE_CASES[i]
    which = "recipe" if got[i][0] != want[i][0] else "answer to whether it runs"
    fail(
        label,
        f"for compute capability {cc} with CUDA {cuda[0]}.{cuda[1]} you answer {got[i]}; the {which} is not "
        "TE 2.18's.",
        TE_DEFAULT_HINTS[0] if which == "recipe" else TE_DEFAULT_HINTS[1],
    )


# ---- fp8_libraries-auto_filter -----------------------------------------------------------------------

AUTO_FILTER_HINTS = (
    "torchao calls the filter for every nn.Linear it meets, subclasses included, with the module and its "
    "full dotted name; answer False for anything else. Which name test skips 'layers.3.output' when the "
    "list holds 'output'?",
    "A linear layer's weight is stored (out_features, in_features). In torchao's notation the forward GEMM "
    "is (M x K) @ (K x N): K is in_features, N is out_features. Both must be divisible by 16.",
    "The size test skips a layer only when both dimensions are small: K at most 4096 and N at most 1024. "
    "Write it with <= on both, and keep every other layer.",
)

#: torchao 0.18.0's thresholds (``_auto_filter_for_tensorwise``): a layer with K <= 4096 and N <= 1024
#: is left in bf16, "based on performance testing" on H100 GPUs.
AUTO_FILTER_MAX_K, AUTO_FILTER_MAX_N = 4096, 1024


def auto_filter_reference(module: nn.Module, fqn: str, filter_fqns: list[str]) -> bool:
    """torchao 0.18.0's ``_auto_filter_for_tensorwise``: whether to convert ``module`` to fp8 (tensorwise)."""
    if not isinstance(module, nn.Linear):
        return False
    if any(name in fqn for name in filter_fqns):
        return False
    n, k = module.weight.shape
    if k % 16 or n % 16:
        return False
    return not (k <= AUTO_FILTER_MAX_K and n <= AUTO_FILTER_MAX_N)


class _Subclassed(nn.Linear):
    """A subclass of nn.Linear, as nn.MultiheadAttention's out_proj is (NonDynamicallyQuantizableLinear)."""


def _without_memory(module: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """``module`` with a weight of ``shape`` that holds one element: a filter reads shapes only.

    The weight is one value broadcast (``expand``) to the shape, so a 128256 x 8192 layer costs four
    bytes and no time; modules on the meta device would too, but building the first one costs seconds.
    """
    module.weight = nn.Parameter(torch.zeros(1).expand(shape), requires_grad=False)
    return module


def linear_of_shape(k: int, n: int, cls: type[nn.Linear] = nn.Linear) -> nn.Linear:
    """An ``nn.Linear`` with in_features ``k`` and out_features ``n`` whose weight takes no memory."""
    layer = cls(1, 1, bias=False)
    layer.in_features, layer.out_features = k, n
    return _without_memory(layer, (n, k))


def _auto_filter_cases() -> list[tuple[str, nn.Module, str, list[str]]]:
    """(description, module, fqn, filter_fqns): each answer that matters, and the boundaries."""
    skip = ["output", "lm_head"]
    return [
        ("an 8192 -> 8192 attention projection", linear_of_shape(8192, 8192), "layers.0.attention.wq", skip),
        ("a 4096 -> 14336 MLP projection", linear_of_shape(4096, 14336), "layers.0.feed_forward.w1", skip),
        ("a 14336 -> 4096 MLP projection", linear_of_shape(14336, 4096), "layers.0.feed_forward.w2", skip),
        ("a 1024 -> 4096 layer (K small, N large)", linear_of_shape(1024, 4096), "layers.1.up", skip),
        (
            "a 4096 -> 1024 layer (K and N at the thresholds)",
            linear_of_shape(4096, 1024),
            "layers.1.down",
            skip,
        ),
        (
            "a 4112 -> 1024 layer (K just past its threshold)",
            linear_of_shape(4112, 1024),
            "layers.1.wide",
            skip,
        ),
        (
            "a 4096 -> 1040 layer (N just past its threshold)",
            linear_of_shape(4096, 1040),
            "layers.1.tall",
            skip,
        ),
        ("an 8192 -> 1024 layer (K large, N small)", linear_of_shape(8192, 1024), "layers.2.w_kv", skip),
        ("a 2048 -> 512 layer (both small)", linear_of_shape(2048, 512), "layers.2.gate", skip),
        (
            "an 8200 -> 8192 layer (K not divisible by 16)",
            linear_of_shape(8200, 8192),
            "layers.3.odd_in",
            skip,
        ),
        (
            "an 8192 -> 8200 layer (N not divisible by 16)",
            linear_of_shape(8192, 8200),
            "layers.3.odd_out",
            skip,
        ),
        ("the output head 8192 -> 128256", linear_of_shape(8192, 128256), "output", skip),
        (
            "a layer named 'layers.3.output' (it contains 'output')",
            linear_of_shape(8192, 8192),
            "layers.3.output",
            skip,
        ),
        ("an 8192 -> 8192 layer with nothing to filter by name", linear_of_shape(8192, 8192), "lm_head", []),
        (
            "an nn.Linear subclass 8192 -> 8192",
            linear_of_shape(8192, 8192, _Subclassed),
            "layers.4.attn.out_proj",
            skip,
        ),
        ("an nn.LayerNorm(8192)", nn.LayerNorm(8192), "layers.4.norm", skip),
        (
            "an nn.Embedding(128256, 8192)",
            _without_memory(nn.Embedding(1, 1), (128256, 8192)),
            "tok_embeddings",
            skip,
        ),
    ]


def _filter_variants() -> dict[str, Callable[[nn.Module, str, list[str]], bool]]:
    def linear_dims(m: nn.Module) -> tuple[int, int]:
        n, k = m.weight.shape
        return k, n

    def rule(
        size: Callable[[int, int], bool] = lambda k, n: k <= 4096 and n <= 1024,
        name: Callable[[str, list[str]], bool] = lambda fqn, fs: any(f in fqn for f in fs),
        divisible: Callable[[int, int], bool] = lambda k, n: k % 16 == 0 and n % 16 == 0,
        kind: Callable[[nn.Module], bool] = lambda m: isinstance(m, nn.Linear),
        swap: bool = False,
    ) -> Callable[[nn.Module, str, list[str]], bool]:
        def fn(m: nn.Module, fqn: str, fs: list[str]) -> bool:
            if not kind(m):
                return False
            if name(fqn, fs):
                return False
            k, n = linear_dims(m)
            if swap:
                k, n = n, k
            return divisible(k, n) and not size(k, n)

        return fn

    return {
        "you read K and N the wrong way round: nn.Linear stores its weight (out_features, in_features), so "
        "weight.shape is (N, K)": rule(swap=True),
        "you skip a layer when either dimension is small; torchao skips it only when both are (K <= 4096 and "
        "N <= 1024)": rule(size=lambda k, n: k <= 4096 or n <= 1024),
        "your size test uses < where torchao's uses <=: a layer exactly at the thresholds (4096 -> 1024) "
        "stays in bf16": rule(size=lambda k, n: k < 4096 and n < 1024),
        "you compare the full name with the filtered names; torchao skips every layer whose name *contains* "
        "one of them, so 'layers.3.output' is skipped by 'output'": rule(name=lambda fqn, fs: fqn in fs),
        "you test the names with fqn.endswith; torchao skips every layer whose name contains a filtered name "
        "anywhere": rule(name=lambda fqn, fs: any(fqn.endswith(f) for f in fs)),
        "you check only in_features for divisibility by 16; out_features must be divisible too": rule(
            divisible=lambda k, n: k % 16 == 0
        ),
        "you check only out_features for divisibility by 16; in_features must be divisible too": rule(
            divisible=lambda k, n: n % 16 == 0
        ),
        "you leave out the size test: small layers lose to bf16, as the speed-up model shows, so torchao's auto "
        "filter keeps them in bf16": rule(size=lambda k, n: False),
        "you accept only modules whose type is exactly nn.Linear; torchao converts subclasses too (it tests "
        "isinstance), such as nn.MultiheadAttention's out_proj": rule(kind=lambda m: type(m) is nn.Linear),
    }


@register("fp8_libraries-auto_filter", hints=AUTO_FILTER_HINTS)
def check_auto_filter(auto_filter: Any) -> None:
    """``auto_filter(module, fqn, filter_fqns) -> bool``: torchao 0.18's tensorwise auto filter."""
    label = "fp8_libraries-auto_filter"
    hint = AUTO_FILTER_HINTS[0]
    cases = _auto_filter_cases()
    got = []
    for case, module, fqn, names in cases:
        try:
            out = call(label, auto_filter, module, fqn, list(names))
        except ExerciseFailed as err:
            if isinstance(module, nn.Linear) or isinstance(err, NotDoneYet):
                raise
            fail(
                label,
                f"for {case} {str(err).removeprefix(label + ': ')}; a filter must answer False for a module that "
                "is not a linear layer, not raise.",
                hint,
            )
        if not isinstance(out, (bool, np.bool_)):
            fail(label, f"for {case} your filter returned {out!r}; expected True or False.", hint)
        got.append(bool(out))
    want = [auto_filter_reference(m, fqn, names) for _, m, fqn, names in cases]
    if got == want:
        return
    wrong_kind = [c for (c, m, _, _), g in zip(cases, got, strict=True) if g and not isinstance(m, nn.Linear)]
    if wrong_kind:
        fail(
            label,
            f"your filter converts {wrong_kind[0]}: only linear layers are converted, and torchao's filter answers "
            "False for any other module.",
            hint,
        )
    for diagnosis, variant in _filter_variants().items():
        if got == [variant(m, fqn, names) for _, m, fqn, names in cases]:
            step = 1 if "K and N" in diagnosis or "divisib" in diagnosis else 2 if "size" in diagnosis else 0
            fail(label, f"{diagnosis}.", AUTO_FILTER_HINTS[step])
    i = next(i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w)
    verb = "convert" if got[i] else "keep in bf16"
    fail(label, f"for {cases[i][0]} (fqn {cases[i][2]!r}) you {verb} it; torchao's filter does not.", hint)


__all__ = [
    "GEMMS",
    "GEMM_OPERANDS",
    "TE_CASES",
    "TORCHAO_GEMM_FORMATS",
    "auto_filter_reference",
    "check_auto_filter",
    "check_gemm_formats",
    "check_speedup",
    "check_te_default",
    "linear_of_shape",
    "te_default_recipe",
]

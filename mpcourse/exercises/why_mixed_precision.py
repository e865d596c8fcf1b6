"""Checks for the exercises of chapter ``why_mixed_precision``.

Each check compares the learner's function with the package's own answer (the memory calculator,
the datasheet table, the roofline), on cases chosen so that the usual wrong answers give a
different result, and names the mistake when it recognises one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .. import gpus, memory, models, reference
from ..bench import roofline
from ..energy import HOROWITZ_45NM_PJ
from . import call, expect_close, fail, register

#: The memory schemes the memory exercise asks about (names of :data:`mpcourse.memory.SCHEMES`).
MEMORY_RECIPES: tuple[str, ...] = ("fp32", "amp", "pure_bf16")


def _number(label: str, got: Any, case: str, hint: str = "return a Python number.") -> float:
    if hasattr(got, "item") and callable(got.item):
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        fail(label, f"for {case} you returned {got!r}; expected one number.", hint)
    return float(got)


def _near(a: float, b: float) -> bool:
    if math.isinf(a) or math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=1e-6)


def _judge(label: str, got: float, want: float, mistakes: dict[str, float], case: str, hint: str) -> None:
    """Name a recognised mistake if ``got`` matches one (and not the right answer), else compare."""
    for name, value in mistakes.items():
        if _near(got, value) and not _near(value, want):
            fail(label, f"for {case} your answer matches a common mistake: {name}.", hint)
    if math.isinf(want) or math.isinf(got):
        if got != want:
            fail(label, f"for {case} your answer is {got}, which is not right.", hint)
        return
    expect_close(label, got, want, rtol=1e-6, case=case, hint=hint)


# --- why_mixed_precision-memory ----------------------------------------------------------------


def _measured_cases() -> list[tuple[str, int, int, int, str, int]]:
    """One real training step per recipe, measured exactly: (case, params, matmul params, activation
    elements, recipe, measured total bytes)."""

    def loss_of(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x).float(), y)

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 64, generator=gen), torch.randint(0, 10, (256,), generator=gen)
    cases, fp32_elements = [], None
    for recipe, autocast, dtype in (
        ("fp32", None, torch.float32),
        ("amp", torch.bfloat16, torch.float32),
        ("pure_bf16", None, torch.bfloat16),
    ):
        torch.manual_seed(0)
        model = models.MLP(64, 10, width=96).to(dtype)
        step = memory.measure_step(
            model, torch.optim.AdamW(model.parameters()), loss_of, x.to(dtype), y, autocast_dtype=autocast
        )
        if fp32_elements is None:
            fp32_elements = int(step["activations"]) // 4  # elements saved for backward, counted in fp32
        n_params = sum(p.numel() for p in model.parameters())
        cases.append(
            (
                f"a real step of a {n_params:,}-parameter MLP under {recipe!r}, measured exactly",
                n_params,
                memory.matmul_parameter_count(model),
                fp32_elements,
                recipe,
                int(step["total"]),
            )
        )
    return cases


@register("why_mixed_precision-memory")
def check_memory(training_step_bytes: Callable[..., Any]) -> None:
    """``training_step_bytes(n_params, n_matmul_params, activation_elements, recipe)``: bytes a step
    with AdamW holds, for ``recipe`` in ``"fp32"``, ``"amp"``, ``"pure_bf16"``."""
    label = "why_mixed_precision-memory"
    hint = (
        "add up, for the recipe: weights, gradients and AdamW's two moments (each in the parameters' "
        "dtype), the 16-bit copy autocast makes of each matmul parameter (AMP only), and the saved "
        "activations (in the dtype the ops ran in). What dtype are the parameters under AMP?"
    )
    synthetic = [
        (
            "a 7B model (6.5B in matmul layers), 2e9 saved activation elements",
            7_000_000_000,
            6_500_000_000,
            2_000_000_000,
        ),
        (
            "a 125M model (85M in matmul layers), 3e8 saved activation elements",
            125_000_000,
            85_000_000,
            300_000_000,
        ),
    ]
    for case, n, n_mm, acts in synthetic:
        for recipe in MEMORY_RECIPES:
            got = _number(
                label, call(label, training_step_bytes, n, n_mm, acts, recipe), f"{case}, {recipe!r}"
            )
            want = float(memory.estimate(recipe, n, n_matmul_params=n_mm, activation_elements=acts)["total"])
            per = memory.bytes_per_parameter(recipe)
            act_bytes = memory.SCHEMES[recipe].activation_bytes * acts
            copies = per["low-precision weight copies"] * n_mm
            mistakes = {}
            if (
                recipe == "amp"
            ):  # first: it coincides with leaving out AdamW's state, and is the likelier mistake
                pure = memory.estimate("pure_bf16", n, activation_elements=acts)["total"]
                mistakes[
                    "treating AMP like pure bf16: under AMP the weights, gradients and AdamW moments stay fp32"
                ] = float(pure + copies)
            mistakes |= {
                "leaving out the 16-bit copy autocast makes of each matmul weight": want - copies,
                "making 16-bit copies of every parameter, not only of the matmul layers'": want
                - copies
                + per["low-precision weight copies"] * n,
                "counting the saved activations at 4 bytes, as in fp32": want - act_bytes + 4 * acts,
                "leaving out AdamW's state (two moments per parameter)": want - per["optimizer state"] * n,
                "counting one AdamW moment instead of two": want - per["optimizer state"] * n // 2,
                "leaving out the gradients": want - per["gradients"] * n,
                "leaving out the activations": want - act_bytes,
            }
            _judge(label, got, want, mistakes, f"{case}, recipe {recipe!r}", hint)
    for case, n, n_mm, acts, recipe, measured in _measured_cases():
        got = _number(label, call(label, training_step_bytes, n, n_mm, acts, recipe), case)
        if abs(got - measured) > 0.1 * measured:
            fail(
                label,
                f"for {case} you predict {got:,.0f} bytes, but the step held {measured:,} (more than 10% apart).",
                hint,
            )


# --- why_mixed_precision-bound ------------------------------------------------------------------

BOUNDS = ("compute", "memory")


def _bound_cases() -> list[tuple[str, float, float, float, float]]:
    """(case, FLOPs, bytes, peak TFLOP/s, bandwidth GB/s): ops on datasheet GPUs and on stored machines."""
    cases = []
    for gpu in gpus.GPUS:
        low = "bf16" if "bf16" in gpu.dense_tflops else "fp16"
        for precision in ("fp32", low):
            peak = gpu.dense_tflops[precision]
            ops = {
                "a 4096^3 matrix product": roofline.matmul_cost(4096, 4096, 4096, precision),
                "a 512^3 matrix product": roofline.matmul_cost(512, 512, 512, precision),
                "a 256^3 matrix product": roofline.matmul_cost(256, 256, 256, precision),
                "a matrix-vector product (1 x 8192 @ 8192 x 8192)": roofline.matmul_cost(
                    1, 8192, 8192, precision
                ),
                "an elementwise add of 2^26 elements": roofline.elementwise_cost(2**26, precision),
            }
            for op, (flops, nbytes) in ops.items():
                cases.append(
                    (f"{op} in {precision} on an {gpu.name}", flops, nbytes, peak, gpu.bandwidth_gb_s)
                )
    for record in reference.records("matmul"):
        tables = record["tables"]
        best = max(
            (
                r["tflops"]
                for r in tables.get("matmul", [])
                if r.get("precision") == "fp32" and r.get("tflops")
            ),
            default=None,
        )
        bandwidth = (tables.get("bandwidth") or [{}])[0].get("gb_per_s")
        adds = [
            r for r in tables.get("elementwise", []) if r.get("precision") == "fp32" and r.get("op") == "add"
        ]
        if best and bandwidth and adds:
            add = max(adds, key=lambda r: r["elements"])
            where = record["environment"].get("device", "a stored machine")
            cases.append(
                (
                    f"the fp32 add of {add['elements']:,} elements measured on {where} (its measured roofs)",
                    add["flops"],
                    add["bytes"],
                    best,
                    bandwidth,
                )
            )
    return cases


def _bound_rules() -> dict[str, Callable[[float, float, float, float], str]]:
    def right(f: float, b: float, p: float, bw: float) -> str:
        return "compute" if f / b > p * 1e12 / (bw * 1e9) else "memory"

    return {
        "right": right,
        "comparing the FLOPs with the bytes, without the device's balance point": lambda f, b, p, bw: (
            "compute" if f > b else "memory"
        ),
        "mixing units: the balance point is peak (1e12 FLOP/s per TFLOP/s) over bandwidth (1e9 B/s per GB/s)": (
            lambda f, b, p, bw: "compute" if f / b > p / bw else "memory"
        ),
        "swapping the answers (a high intensity means compute-bound)": lambda f, b, p, bw: (
            "memory" if right(f, b, p, bw) == "compute" else "compute"
        ),
    }


@register("why_mixed_precision-bound")
def check_bound(bound: Callable[..., Any]) -> None:
    """``bound(flops, nbytes, peak_tflops, bandwidth_gb_s)``: ``"compute"`` or ``"memory"``."""
    label = "why_mixed_precision-bound"
    hint = (
        "an op needs at least flops / peak seconds of arithmetic and nbytes / bandwidth seconds of memory "
        "traffic; whichever is longer binds. Equivalently, compare its intensity (FLOPs per byte) with "
        "the device's balance point (peak / bandwidth), in the same units."
    )
    rules = _bound_rules()
    cases = _bound_cases()
    answers = []
    for case, f, b, p, bw in cases:
        got = call(label, bound, f, b, p, bw)
        if got not in BOUNDS:
            fail(
                label,
                f"for {case} you returned {got!r}.",
                f"return one of the strings {BOUNDS[0]!r} or {BOUNDS[1]!r}.",
            )
        answers.append(got)
    expected = {name: [rule(f, b, p, bw) for _, f, b, p, bw in cases] for name, rule in rules.items()}
    if answers == expected["right"]:
        return
    for name, predicted in expected.items():
        if name != "right" and answers == predicted:
            fail(label, f"your answers match a common mistake: {name}.", hint)
    wrong = next(i for i, (a, w) in enumerate(zip(answers, expected["right"])) if a != w)
    fail(label, f"for {cases[wrong][0]} you answered {answers[wrong]!r}, which is not right.", hint)


# --- why_mixed_precision-step-speedup -------------------------------------------------------------


def _stored_matmul_shares() -> list[tuple[str, float]]:
    """The share of an fp32 training step spent in matrix products, in each stored ``train`` record."""
    shares = []
    for record in reference.records("train"):
        kernels = [k for k in record["tables"].get("kernels", []) if k.get("recipe") == "fp32"]
        share = sum(k["share"] for k in kernels if k.get("op") in ("aten::mm", "aten::addmm", "aten::bmm"))
        if kernels and 0 < share < 1:
            shares.append((str(record["environment"].get("device", "a stored machine")), share))
    return shares


@register("why_mixed_precision-step-speedup")
def check_step_speedup(step_speedup: Callable[..., Any]) -> None:
    """``step_speedup(matmul_share, matmul_speedup)``: how many times faster the whole step runs."""
    label = "why_mixed_precision-step-speedup"
    hint = (
        "split the old step time into the part spent in matrix products (its share) and the rest; only "
        "the first part gets faster. Compute the new step time as a fraction of the old one, then turn "
        "it into a speed-up (old time / new time)."
    )
    h100 = next(g for g in gpus.GPUS if g.preset == "h100")
    ratio = h100.dense_tflops["bf16"] / h100.dense_tflops["fp32"]
    cases = [(0.9, 8.0), (0.5, 2.0), (0.25, 100.0), (1.0, 4.0), (0.0, 10.0), (0.7, 0.5)]
    cases += [(share, ratio) for _, share in _stored_matmul_shares()]
    for f, s in cases:
        case = f"matmul_share={f:.3g}, matmul_speedup={s:.3g}"
        got = _number(label, call(label, step_speedup, f, s), case)
        want = 1 / ((1 - f) + f / s)
        mistakes = {
            "the new step time as a fraction of the old, not the speed-up": (1 - f) + f / s,
            "averaging the speed-ups, weighted by the share (the rest runs at speed 1, but times add, speeds do not)": (
                f * s + (1 - f)
            ),
            "the matmul speed-up alone, as if the whole step were matrix products": s,
            "the limit for infinitely fast matrix products, 1 / (1 - share)": 1 / (1 - f)
            if f < 1
            else math.inf,
            "speeding up the part that is not matrix products": 1 / (f + (1 - f) / s),
        }
        _judge(label, got, want, mistakes, case, hint)


# --- why_mixed_precision-energy ------------------------------------------------------------------


def _breakeven(d_in: int, d_out: int, b: float, e_fma: float, e_byte: float) -> float:
    """Rows m above which a linear layer's arithmetic energy exceeds its DRAM energy (inf: never)."""
    denominator = d_in * d_out * e_fma - b * e_byte * (d_in + d_out)
    return b * e_byte * d_in * d_out / denominator if denominator > 0 else math.inf


@register("why_mixed_precision-energy")
def check_energy(energy_breakeven_rows: Callable[..., Any]) -> None:
    """``energy_breakeven_rows(d_in, d_out, bytes_per_element, pj_per_fma, pj_per_byte)``."""
    label = "why_mixed_precision-energy"
    hint = (
        "with m rows, the layer does m * d_in * d_out multiply-adds and moves x (m x d_in), W "
        "(d_in x d_out) and y (m x d_out) once each. Set the two energies equal and solve for m; "
        "if the arithmetic can never catch up, whatever m, return math.inf."
    )
    pj = HOROWITZ_45NM_PJ  # Horowitz (ISSCC 2014), 45 nm
    fp32 = pj["fp32 multiply"] + pj["fp32 add"]
    fp16 = pj["fp16 multiply"] + pj["fp16 add"]
    dram = (pj["DRAM, 64-bit read (low)"] / 8, pj["DRAM, 64-bit read (high)"] / 8)  # per byte
    cases = []
    for e_byte in dram:
        for d in ((4096, 4096), (1024, 4096), (12288, 49152), (64, 64)):
            cases += [(*d, 4, fp32, e_byte), (*d, 2, fp16, e_byte)]
    cases.append((8192, 8192, 1, 0.5, dram[0]))
    for d_in, d_out, b, e_f, e_b in cases:
        case = f"d_in={d_in}, d_out={d_out}, {b} bytes per element, {e_f:.2g} pJ per multiply-add, {e_b:.4g} pJ per byte"
        got = _number(label, call(label, energy_breakeven_rows, d_in, d_out, b, e_f, e_b), case)
        want = _breakeven(d_in, d_out, b, e_f, e_b)
        if got < 0:
            fail(
                label,
                f"for {case} you returned a negative number of rows, {got:.4g}.",
                "when the arithmetic energy can never exceed the DRAM energy, whatever the number of rows, "
                "there is no break-even point: return math.inf.",
            )
        mistakes = {
            "counting 2 * m * d_in * d_out multiply-adds (that is the FLOP count: one multiply-add is two FLOPs)": (
                _breakeven(d_in, d_out, b, 2 * e_f, e_b)
            ),
            "counting bits instead of bytes": _breakeven(d_in, d_out, 8 * b, e_f, e_b),
            "leaving out the activations x and y, counting only the weights' bytes": b * e_b / e_f,
            "leaving out the weights, counting only the activations' bytes": 0.0,
        }
        _judge(label, got, want, mistakes, case, hint)

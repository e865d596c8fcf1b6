"""Checks for the exercises of chapter ``why_mixed_precision``.

Each check compares the learner's function with the package's own answer (the memory calculator,
the datasheet table, the roofline), on cases chosen so that the usual wrong answers give a
different result, and names the mistake when it recognises one.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from .. import gpus, memory, models, reference
from ..bench import roofline
from ..energy import HOROWITZ_45NM_PJ
from . import call, expect_close, fail, plural, register

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


def _judge_all(label: str, results: list[tuple[str, float, float, dict[str, float]]], hint: str) -> None:
    """Judge every case at once: ``results`` holds (case, got, want, mistakes).

    A mistake is named when it explains the answers of *every* case (where a case does not know it,
    the answer must be right), so that a value that happens to coincide with one mistake in one case
    is not taken for it; otherwise the first wrong case is judged alone.
    """
    wrong = [r for r in results if not _near(r[1], r[2])]
    if not wrong:
        return
    names = list(dict.fromkeys(name for _, _, _, mistakes in results for name in mistakes))
    for name in names:
        if all(
            _near(got, mistakes[name]) if name in mistakes else _near(got, want)
            for _, got, want, mistakes in results
        ):
            fail(label, f"for {wrong[0][0]} your answer matches a common mistake: {name}.", hint)
    _judge(label, wrong[0][1], wrong[0][2], wrong[0][3], wrong[0][0], hint)


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


MEMORY_HINTS = (
    "List what a training step with AdamW keeps for every parameter, and for every saved activation; "
    "then, recipe by recipe, ask in which dtype each of them lives (the section 'Memory: bytes per "
    "parameter' measured one step of each).",
    "Under AMP the parameters stay fp32, and so do their gradients and AdamW's moments, created in the "
    "parameters' dtype. What autocast adds is a 16-bit copy of the weights it casts: those of the matrix "
    "products only. The saved activations take the bytes of the dtype their operation ran in.",
    "Add up bytes per parameter times n_params, bytes per copied weight times n_matmul_params, and bytes "
    "per saved element times activation_elements. The answer is a number of bytes, not of gigabytes.",
)


@register("why_mixed_precision-memory", hints=MEMORY_HINTS)
def check_memory(training_step_bytes: Callable[..., Any]) -> None:
    """``training_step_bytes(n_params, n_matmul_params, activation_elements, recipe)``: bytes a step
    with AdamW holds, for ``recipe`` in ``"fp32"``, ``"amp"``, ``"pure_bf16"``."""
    label = "why_mixed_precision-memory"
    hint = MEMORY_HINTS[0] + " What dtype are the parameters under AMP?"
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
    results = []
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
            if recipe == "amp":
                pure = memory.estimate("pure_bf16", n, activation_elements=acts)["total"]
                mistakes[
                    "treating AMP like pure bf16: under AMP the weights, gradients and AdamW moments stay fp32"
                ] = float(pure + copies)
            if recipe == "pure_bf16":
                mistakes[
                    "adding autocast's 16-bit weight copies under pure bf16, where the weights already "
                    "are 16-bit and nothing is copied"
                ] = want + 2 * n_mm
            if recipe == "fp32":
                mistakes["saving fp32's activations in 16 bits: without autocast they stay fp32"] = (
                    want - act_bytes + 2 * acts
                )
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
                "answering in gigabytes (1e9 bytes); the question asks for bytes": want / 1e9,
                "answering in GiB (2**30 bytes); the question asks for bytes": want / 2**30,
            }
            results.append((f"{case}, recipe {recipe!r}", got, want, mistakes))
    _judge_all(label, results, hint)
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


def _borderline_cases() -> list[tuple[str, float, float, float, float]]:
    """Ops just above and just below an H100's balance point, where a unit slip changes the answer."""
    h100 = next(g for g in gpus.GPUS if g.preset == "h100")
    cases = []
    for precision in ("fp32", "bf16"):
        peak, bw = h100.dense_tflops[precision], h100.bandwidth_gb_s
        balance = peak * 1e12 / (bw * 1e9)
        for factor, where in ((0.95, "5% below"), (1.05, "5% above")):
            nbytes = 3 * 2**24
            cases.append(
                (
                    f"an op {where} the balance point of an {h100.name} in {precision} "
                    f"({factor * balance:.1f} FLOP/byte)",
                    factor * balance * nbytes,
                    float(nbytes),
                    peak,
                    bw,
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
        "reading GB/s as GiB/s: a datasheet's GB is 10^9 bytes, not 2^30": lambda f, b, p, bw: (
            "compute" if f / b > p * 1e12 / (bw * 2**30) else "memory"
        ),
        "the intensity upside down (bytes per FLOP instead of FLOPs per byte)": lambda f, b, p, bw: (
            "compute" if b / f > p * 1e12 / (bw * 1e9) else "memory"
        ),
        "swapping the answers (a high intensity means compute-bound)": lambda f, b, p, bw: (
            "memory" if right(f, b, p, bw) == "compute" else "compute"
        ),
    }


BOUND_HINTS = (
    "An operation needs some time for its arithmetic and some time for its memory traffic, on the "
    "device it runs on: which of the two is longer? The roofline paragraph of 'Bandwidth' says what each is.",
    "Units: the peak is in TFLOP/s (10^12 FLOP per second) and the bandwidth in GB/s (10^9 bytes per "
    "second, a datasheet's GB). Bring both to per-second figures before you compare.",
    "Equivalently, compare the operation's arithmetic intensity (FLOPs per byte moved) with the device's "
    "balance point (peak over bandwidth, in FLOPs per byte): above the balance point, the arithmetic binds.",
)


@register("why_mixed_precision-bound", hints=BOUND_HINTS)
def check_bound(bound: Callable[..., Any]) -> None:
    """``bound(flops, nbytes, peak_tflops, bandwidth_gb_s)``: ``"compute"`` or ``"memory"``."""
    label = "why_mixed_precision-bound"
    hint = BOUND_HINTS[0]
    rules = _bound_rules()
    cases = _bound_cases() + _borderline_cases()
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
    wrong = [i for i, (a, w) in enumerate(zip(answers, expected["right"])) if a != w]
    fail(
        label,
        f"for {cases[wrong[0]][0]} you answered {answers[wrong[0]]!r}, which is not right "
        f"({plural(len(wrong), 'answer')} of {len(cases)} wrong).",
        hint,
    )


# --- why_mixed_precision-step-speedup -------------------------------------------------------------


#: The operators that only multiply matrices: PyTorch's mm family.
MATMUL_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm"})


def stored_step_profiles() -> list[dict[str, Any]]:
    """One dict per stored ``train`` record with fp32 and bf16 profiles: ``machine``, ``bf16_status``
    (bf16's status there), ``fp32_kernels`` and ``bf16_kernels`` (the kernel tables, as
    :func:`mpcourse.bench.profiling.kernel_table` gives them) and ``measured``, the step speed-up the
    timed steps measured (fp32 step time over bf16 step time)."""
    found = []
    for record in reference.records("train"):
        kernels = pd.DataFrame(record["tables"].get("kernels", []))
        steps = pd.DataFrame(record["tables"].get("recipes", []))
        if kernels.empty or steps.empty or not {"fp32", "bf16"} <= set(kernels["recipe"]):
            continue
        steps = steps.set_index("recipe")
        found.append(
            {
                "machine": str(record["environment"].get("device", "a stored machine")),
                "bf16_status": steps.loc["bf16", "status"],
                "fp32_kernels": kernels[kernels["recipe"] == "fp32"]
                .drop(columns="recipe")
                .reset_index(drop=True),
                "bf16_kernels": kernels[kernels["recipe"] == "bf16"]
                .drop(columns="recipe")
                .reset_index(drop=True),
                "measured": float(steps.loc["fp32", "step_ms"] / steps.loc["bf16", "step_ms"]),
            }
        )
    return found


def _profile(rows: list[tuple[str, str, float]], step_ms: float) -> pd.DataFrame:
    """A kernel table as the profiler gives it: the longest rows of a step of ``step_ms``."""
    frame = pd.DataFrame(
        [
            {"name": op, "op": op, "dtypes": dt, "calls": 1.0, "ms": ms, "share": ms / step_ms}
            for op, dt, ms in rows
        ]
    )
    return frame.sort_values("ms", ascending=False, ignore_index=True)


@functools.cache
def _speedup_cases() -> list[tuple[str, pd.DataFrame, pd.DataFrame]]:
    """The check's profiles (computed once; the learner gets copies)."""
    gpu_like = (
        "a step where the products dominate and speed up 10x (a GPU-like profile)",
        _profile(
            [
                ("aten::mm", "fp32", 48.0),
                ("aten::addmm", "fp32", 22.0),
                ("aten::bmm", "fp32", 6.0),
                ("aten::_scaled_dot_product_efficient_attention", "fp32", 5.5),
                ("aten::gelu", "fp32", 5.0),
                ("aten::native_layer_norm", "fp32", 4.0),
                ("aten::add", "fp32", 3.0),
            ],
            100.0,
        ),
        _profile(
            [
                ("aten::mm", "bf16", 4.8),
                ("aten::addmm", "bf16", 2.2),
                ("aten::bmm", "bf16", 0.6),
                ("aten::_scaled_dot_product_efficient_attention", "bf16", 2.5),
                ("aten::gelu", "bf16", 2.6),
                ("aten::native_layer_norm", "fp32", 4.0),
                ("aten::copy_", "fp32, bf16", 3.0),
                ("aten::add", "bf16", 1.5),
            ],
            26.0,
        ),
    )
    uncovered = (
        "a bf16 profile with one product autocast did not cover (an fp32 aten::mm row)",
        _profile(
            [
                ("aten::mm", "fp32", 20.0),
                ("aten::addmm", "fp32", 10.0),
                ("aten::_softmax", "fp32", 6.0),
                ("aten::add", "fp32", 4.0),
                ("aten::mul", "fp32", 3.0),
            ],
            50.0,
        ),
        _profile(
            [
                ("aten::_softmax", "fp32", 6.0),
                ("aten::mm", "bf16", 4.0),
                ("aten::mm", "fp32", 4.0),
                ("aten::copy_", "fp32, bf16", 3.0),
                ("aten::add", "bf16", 3.0),
                ("aten::addmm", "bf16", 2.5),
                ("aten::mul", "bf16", 2.0),
            ],
            30.0,
        ),
    )
    emulated = (
        "a CPU that emulates bf16: the products get 30x slower",
        _profile(
            [
                ("aten::mm", "fp32", 90.0),
                ("aten::addmm", "fp32", 50.0),
                ("aten::gelu", "fp32", 10.0),
                ("aten::sum", "fp32", 5.0),
                ("aten::copy_", "fp32", 4.0),
            ],
            180.0,
        ),
        _profile(
            [
                ("aten::mm", "bf16", 2700.0),
                ("aten::addmm", "bf16", 1500.0),
                ("aten::copy_", "fp32, bf16", 60.0),
                ("aten::gelu", "bf16", 12.0),
                ("aten::sum", "bf16", 6.0),
            ],
            4300.0,
        ),
    )
    cases = [gpu_like, uncovered, emulated]
    for stored in stored_step_profiles():
        cases.append(
            (f"the stored profiles of {stored['machine']}", stored["fp32_kernels"], stored["bf16_kernels"])
        )
    return cases


def _step_time(kernels: pd.DataFrame) -> float:
    return float((kernels["ms"] / kernels["share"]).iloc[0])


def _product_ms(kernels: pd.DataFrame, ops: Any = MATMUL_OPS, dtypes: str | None = None) -> float:
    rows = kernels[kernels["op"].isin(ops)]
    if dtypes is not None:
        rows = rows[rows["dtypes"].str.contains(dtypes)]
    return float(rows["ms"].sum())


def _speedup_mistakes(fp32: pd.DataFrame, bf16: pd.DataFrame) -> tuple[float, dict[str, float]]:
    """The right prediction, and the usual wrong readings of the profiles or of Amdahl's law."""
    step, old, new = _step_time(fp32), _product_ms(fp32), _product_ms(bf16)
    share, k = old / step, old / new
    listed = float(fp32["ms"].sum())
    attention = MATMUL_OPS | {op for op in set(fp32["op"]) | set(bf16["op"]) if "attention" in op}
    old_att, new_att = _product_ms(fp32, attention), _product_ms(bf16, attention)
    only_mm_old, only_mm_new = _product_ms(fp32, {"aten::mm"}), _product_ms(bf16, {"aten::mm"})
    bf16_share = new / _step_time(bf16)
    want = step / (step - old + new)
    return want, {
        "the step's time taken as the sum of the rows shown: the table lists only the longest operators, "
        "and its share column is of the whole step": listed / (listed - old + new),
        "counting only aten::mm: a linear layer with a bias runs as aten::addmm, and batched products as "
        "aten::bmm": step / (step - only_mm_old + only_mm_new),
        "counting attention as a matrix product (the prompt leaves it out: it also runs a softmax)": step
        / (step - old_att + new_att),
        "leaving out the bf16 profile's fp32 aten::mm row: an fp32 product inside autocast is still a product "
        "of the bf16 step": step / (step - old + _product_ms(bf16, dtypes="bf16")),
        "the ratio of the two profiled steps' times: that is what the profiles measured, not the prediction "
        "if only the products changed": step / _step_time(bf16),
        "the products' share of the bf16 step, where Amdahl's law needs their share of the fp32 step": 1
        / ((1 - bf16_share) + bf16_share / k),
        "the new step time as a fraction of the old, not the speed-up": (step - old + new) / step,
        "averaging the speed-ups, weighted by the share (the rest runs at speed 1, but times add, speeds do "
        "not)": share * k + (1 - share),
        "the products' speed-up alone, as if the whole step were matrix products": k,
        "the products' speed-up upside down (bf16 time over fp32 time)": 1 / ((1 - share) + share * k),
        "speeding up the part that is not matrix products": 1 / (share + (1 - share) / k),
    }


STEP_SPEEDUP_HINTS = (
    "Find the rows of each profile that are matrix products (the op column names PyTorch operators), "
    "and how long they take in fp32 and in bf16.",
    "The tables list only the longest operators, so their rows do not add up to the step; the share "
    "column is each row's part of the whole step. One row's ms and share give the whole step's time.",
    "The predicted bf16 step is the fp32 step with its products' time replaced by their time in the bf16 "
    "profile, everything else unchanged; the speed-up is the old step time over the new one.",
)


@register("why_mixed_precision-step-speedup", hints=STEP_SPEEDUP_HINTS)
def check_step_speedup(predict_step_speedup: Callable[..., Any]) -> None:
    """``predict_step_speedup(fp32_kernels, bf16_kernels)``: the step speed-up if only the products changed."""
    label = "why_mixed_precision-step-speedup"
    hint = STEP_SPEEDUP_HINTS[0]
    results = []
    for case, fp32, bf16 in _speedup_cases():
        got = _number(label, call(label, predict_step_speedup, fp32.copy(), bf16.copy()), case)
        want, mistakes = _speedup_mistakes(fp32, bf16)
        results.append((case, got, want, mistakes))
    _judge_all(label, results, hint)


# --- why_mixed_precision-energy ------------------------------------------------------------------


def _breakeven(d_in: int, d_out: int, b: float, e_fma: float, e_byte: float) -> float:
    """Rows m above which a linear layer's arithmetic energy exceeds its DRAM energy (inf: never)."""
    denominator = d_in * d_out * e_fma - b * e_byte * (d_in + d_out)
    return b * e_byte * d_in * d_out / denominator if denominator > 0 else math.inf


ENERGY_HINTS = (
    "Write both energies as functions of the number of rows m: the arithmetic (one pj_per_fma per "
    "multiply-add) and the DRAM traffic (pj_per_byte for every byte of x, W and y).",
    "A multiply-add is one operation here, not two (a FLOP count counts it twice). W is read once whatever "
    "m is, while the bytes of x and y grow with m, like the arithmetic.",
    "Set the two energies equal and solve for m, as a float. If one more row adds at least as much traffic "
    "energy as arithmetic energy, the two never meet, whatever m: return math.inf.",
)


@register("why_mixed_precision-energy", hints=ENERGY_HINTS)
def check_energy(energy_breakeven_rows: Callable[..., Any]) -> None:
    """``energy_breakeven_rows(d_in, d_out, bytes_per_element, pj_per_fma, pj_per_byte)``."""
    label = "why_mixed_precision-energy"
    hint = ENERGY_HINTS[0]
    pj = HOROWITZ_45NM_PJ  # Horowitz (ISSCC 2014), 45 nm
    fp32 = pj["fp32 multiply"] + pj["fp32 add"]
    fp16 = pj["fp16 multiply"] + pj["fp16 add"]
    dram = (pj["DRAM, 64-bit read (low)"] / 8, pj["DRAM, 64-bit read (high)"] / 8)  # per byte
    cases = []
    for e_byte in dram:
        for d in ((4096, 4096), (1024, 4096), (12288, 49152), (64, 64)):
            cases += [(*d, 4, fp32, e_byte), (*d, 2, fp16, e_byte)]
    cases.append((8192, 8192, 1, 0.5, dram[0]))
    results = []
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
        per_row = b * e_b

        def without(traffic_per_row: float) -> float:
            gain = d_in * d_out * e_f - per_row * traffic_per_row
            return per_row * d_in * d_out / gain if gain > 0 else math.inf

        mistakes = {
            "counting 2 * m * d_in * d_out multiply-adds (that is the FLOP count: one multiply-add is two FLOPs)": (
                _breakeven(d_in, d_out, b, 2 * e_f, e_b)
            ),
            "counting bits instead of bytes": _breakeven(d_in, d_out, 8 * b, e_f, e_b),
            "leaving out the activations x and y, counting only the weights' bytes": b * e_b / e_f,
            "leaving out the weights, counting only the activations' bytes": 0.0,
            "leaving out the output y, which is written once too": without(d_in),
            "leaving out the input x, which is read once too": without(d_out),
            "reading W once per row: the layer reads its weights once per call, whatever the number of rows": (
                math.inf
            ),
        }
        if math.isfinite(want) and want != round(want):
            mistakes["rounding to a whole number of rows: the break-even point is a real number"] = float(
                math.ceil(want)
            )
            mistakes["rounding down to a whole number of rows: the break-even point is a real number"] = (
                float(math.floor(want))
            )
        results.append((case, got, want, mistakes))
    _judge_all(label, results, hint)

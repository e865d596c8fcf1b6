"""Checks for the exercises of chapter ``training_performance``.

No check times anything: the MFU exercise reads a seeded, simulated run's log of step times, and the
FLOP-counting exercises compare with the counts of Chowdhery et al. (2022, Appendix B) and, for
selective recomputation, Korthikanti et al. (2022), computed here.
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np

from ..bench import datasheets
from . import ExerciseFailed, NotDoneYet, call, fail, register
from .benchmarking import _judge, _number

# ---- training_performance-mfu -------------------------------------------------------------------------

#: (parameters, tokens per step, steady step seconds, datasheet key, precision, seed) of the runs.
_MFU_RUNS: tuple[tuple[float, int, float, str, str, int], ...] = (
    (124e6, 8 * 1024, 0.05, "h100-sxm", "bf16", 1),
    (1.3e9, 16 * 1024, 2.0, "a100-sxm-80gb", "tf32", 3),
    (350e6, 4096, 0.4, "h100-sxm", "fp32", 6),
    (124e6, 2048, 0.04, "l4", "bf16", 8),
    (7e9, 4 * 4096, 0.6, "h200-sxm", "fp8", 9),
    (124e6, 8 * 1024, 0.5, "v100-sxm2-32gb", "bf16", 2),
)
# The seeds of the runs with a peak are chosen so that every step of the log, the steady ones included, is
# more than 4% away from the median in at least one of them: any single step's time fails somewhere.

#: How much slower than a steady step the first three steps of a run are (set-up, allocation, kernel choice).
_WARMUP = (40.0, 6.0, 2.0)
#: Step-to-step variation of the steady steps (standard deviation, as a fraction; cut off at three of them).
_JITTER = 0.05
#: The run saves a checkpoint every this many steps, and a step that saves takes this many times longer.
_CHECKPOINT_EVERY, _CHECKPOINT_COST = 30, 20.0


def step_log(steady: float, steps: int = 60, seed: int = 0) -> list[float]:
    """A run's step times (seeded): three slow warm-up steps, then steady steps that vary by about 5% from one
    to the next; every 30th step (the last of a 60-step run among them) also saves a checkpoint, which makes it
    twenty times slower."""
    noise = np.random.default_rng(seed).normal(0.0, _JITTER, steps).clip(-3 * _JITTER, 3 * _JITTER)
    times = steady * (1 + noise)
    times[: len(_WARMUP)] *= _WARMUP
    times[_CHECKPOINT_EVERY - 1 :: _CHECKPOINT_EVERY] *= _CHECKPOINT_COST
    return [float(t) for t in times]


def checkpoint_steps(steps: int = 60) -> list[int]:
    """The (0-based) indices of the steps of :func:`step_log` that save a checkpoint."""
    return list(range(_CHECKPOINT_EVERY - 1, steps, _CHECKPOINT_EVERY))


@register(
    "training_performance-mfu",
    hints=(
        "MFU has three ingredients: the model FLOPs of one step, the time of a typical step, and a peak. Check "
        "each against the chapter: which FLOPs count, which steps are typical, which peak.",
        "Plot or print the step times: the first steps of a run are not typical, and not every later one is. "
        "Summarise them the way the chapter's recipe table does.",
        "The peak is the datasheet's dense figure for the precision the products ran in; a GPU with no units "
        "for that precision has no such figure, and then there is no MFU to report.",
    ),
)
def check_mfu(mfu: Any) -> None:
    """``mfu(step_seconds, n_params, tokens_per_step, gpu, precision)``: the run's model FLOPs utilisation
    as a fraction, or None where ``gpu`` has no peak for ``precision``."""
    label = "training_performance-mfu"
    for n_params, tokens, steady, key, precision, seed in _MFU_RUNS:
        gpu = datasheets.DATASHEETS[key]
        steps = step_log(steady, seed=seed)
        size = f"{n_params / 1e9:g}B" if n_params >= 1e9 else f"{n_params / 1e6:g}M"
        saves = ", ".join(str(i + 1) for i in checkpoint_steps(len(steps)))
        case = (
            f"a {precision} run of a {size}-parameter transformer, {tokens} tokens per step, on the "
            f"{gpu.name} (steps {steps[0]:.3g} s, {steps[1]:.3g} s, {steps[2]:.3g} s, then about {steady:g} s "
            f"give or take {_JITTER:.0%}, steps {saves} saving a checkpoint):"
        )
        peak = gpu.peak_tflops(precision)
        try:
            got = call(label, mfu, list(steps), n_params, tokens, gpu, precision)
        except NotDoneYet:
            raise
        except ExerciseFailed as exc:
            if peak is not None:
                raise
            fail(
                label,
                f"for {case} {str(exc).removeprefix(label + ': ')}. The {gpu.name} has no {precision} units, so "
                "its datasheet has no figure for that precision.",
                "decide what MFU means when the GPU has no peak for the precision, and return that.",
            )
        if peak is None:
            if got is not None:
                fail(
                    label,
                    f"for {case} you returned {got!r}; the {gpu.name} has no {precision} units (its datasheet has no "
                    f"{precision} figure), so there is no peak to compare with: expected None.",
                    "an MFU against another precision's peak measures something else; the answer is then None.",
                )
            continue
        value = _number(label, got, case)
        model_flops = 6 * n_params * tokens
        typical = statistics.median(steps)
        want = model_flops / typical / (peak * 1e12)
        printed = gpu.printed_tflops[precision]

        def at(seconds: float) -> float:  # the MFU of a step of this many seconds
            return model_flops / seconds / (peak * 1e12)

        warm = len(_WARMUP)
        mistakes = {
            "the mean of every step, the slow first steps and the checkpoint saves included": at(
                statistics.fmean(steps)
            ),
            "the mean of the steps after the first, two slow warm-up steps and the checkpoint saves still "
            "included": at(statistics.fmean(steps[1:])),
            "the mean of the steps after the warm-up, the slow steps that save a checkpoint still included": at(
                statistics.fmean(steps[warm:])
            ),
            "the time of the whole run instead of one step": at(sum(steps)),
            f"the datasheet's printed {precision} figure, which assumes 2:4 sparsity: dense products get half of it": (
                model_flops / typical / (printed * 1e12)
            ),
            f"the fp32 peak, not the {precision} peak the products ran at": model_flops
            / typical
            / (gpu.dense_tflops["fp32"] * 1e12),
            "counting only the forward pass (2 FLOPs per parameter per token)": want / 3,
            "a percentage instead of a fraction": want * 100,
            "the peak left in TFLOP/s while the FLOPs are plain FLOPs": want * 1e12,
        }
        # Mistakes with many close candidates, named only on an exact match. Any one step's time: every step
        # of the log is far enough from a typical one in at least one of the check's seeded runs to be named
        # there (tests/test_exercises_benchmarking.py makes sure).
        exact = {
            "the first step's time, which pays the run's one-off set-up": at(steps[0]),
            "the fastest step's time: steady steps vary by a few percent, and the minimum picks the luckiest "
            "of them, not a typical one": at(min(steps)),
            "the last step's time: the run ends by saving a checkpoint, so its last step is one of the slowest": at(
                steps[-1]
            ),
        }
        exact |= {
            f"the time of a single step, step {i + 1} of the log ({seconds:.4g} s): steady steps vary by about "
            f"{_JITTER:.0%} from one to the next, so one step is not a typical step": at(seconds)
            for i, seconds in enumerate(steps)
        }
        for k in range(2, len(steps) // 2):  # the warm-up dropped, by any count, but not the checkpoint saves
            dropped = "the warm-up" if k == warm else f"the first {k}"
            warm_left = "a slow warm-up step and " if k < warm else ""
            exact[
                f"the mean of the steps after {dropped}, {warm_left}the slow steps that save a checkpoint still "
                "included"
            ] = at(statistics.fmean(steps[k:]))
        _judge(
            label,
            value,
            want,
            mistakes,
            case,
            "check each of the three ingredients: the FLOPs of a step, a typical step's time, and the peak.",
            rel=0.03,
            exact=exact,
        )


# ---- training_performance-step-flops --------------------------------------------------------------

#: (parameters in the blocks, layers, width, sequence length, tokens per step) of the models checked: a
#: GPT-2-small-like model, a 1.3B one, a 7B one, and a small model on long sequences, where attention dominates.
_MODELS: tuple[tuple[float, int, int, int, int], ...] = (
    (85e6, 12, 768, 1024, 8 * 1024),
    (1.2e9, 24, 2048, 2048, 16 * 2048),
    (6.4e9, 32, 4096, 4096, 256 * 4096),
    (300e6, 24, 1024, 32768, 2 * 32768),
)


def _describe(n_params: float, layers: int, width: int, seq_len: int, tokens: int) -> str:
    size = f"{n_params / 1e9:g}B" if n_params >= 1e9 else f"{n_params / 1e6:g}M"
    return (
        f"a transformer with {size} parameters in {layers} blocks of width {width}, sequences of {seq_len} "
        f"tokens, {tokens} tokens per step"
    )


def _parts(n_params: float, layers: int, width: int, seq_len: int, tokens: int) -> dict[str, float]:
    """FLOPs of one step, split by where they go: the forward of the weights and of attention, per step."""
    return {
        "weights_forward": 2 * n_params * tokens,
        "attention_forward": 4 * layers * width * seq_len * tokens,  # QK^T and the weighted sum: 2 T d each
    }


def model_step_flops(n_params: float, layers: int, width: int, seq_len: int, tokens: int) -> float:
    """The model FLOPs of one training step, ``(6 N + 12 L d T)`` per token (Chowdhery et al. 2022, App. B)."""
    p = _parts(n_params, layers, width, seq_len, tokens)
    return 3 * (p["weights_forward"] + p["attention_forward"])


@register(
    "training_performance-step-flops",
    hints=(
        "Split a step into the weights' products and attention's two products (scores and weighted sum), and "
        "count each in the forward pass first.",
        "Per token, each weight does one multiply-add forward; each of attention's two products does one per "
        "position of the sequence and per unit of width, in every block. How much does the backward add?",
        "The backward pass of a product computes two products of the forward's size (for each input's "
        "gradient). Multiply per-token counts by the tokens of the step.",
    ),
)
def check_step_flops(step_flops: Any) -> None:
    """``step_flops(n_params, layers, width, seq_len, tokens)``: model FLOPs of one training step."""
    label = "training_performance-step-flops"
    for n_params, layers, width, seq_len, tokens in _MODELS:
        case = _describe(n_params, layers, width, seq_len, tokens)
        got = _number(label, call(label, step_flops, n_params, layers, width, seq_len, tokens), case)
        want = model_step_flops(n_params, layers, width, seq_len, tokens)
        six_nt = 6 * n_params * tokens
        attention = 12 * layers * width * seq_len * tokens
        mistakes = {
            "6NT alone: attention's two products have no parameters, so 6N leaves them out": six_nt,
            "attention counted in the forward pass only": six_nt + attention / 3,
            "half the attention term: one of its two products, or a causal mask's saving, which the course's "
            "count (PaLM's, and FlopCounterMode's) does not take": six_nt + attention / 2,
            "attention twice over: each of its two products costs 2 T d per token forward, not 4 T d": six_nt
            + 2 * attention,
            "attention growing with the square of the sequence length per token": six_nt
            + attention * seq_len,
            "attention counted once per sequence instead of once per token": six_nt + attention / seq_len,
            "the forward pass only": want / 3,
            "FLOPs per token instead of per step": want / tokens,
            "multiply-adds instead of FLOPs (a multiply-add is 2 FLOPs)": want / 2,
        }
        _judge(
            label,
            got,
            want,
            mistakes,
            case,
            "count the weights' and attention's FLOPs separately, forward first, then the backward.",
            rel=1e-6,
        )


# ---- training_performance-hfu ---------------------------------------------------------------------

_RECOMPUTE = ("none", "selective", "full")

#: (model index, step seconds, datasheet key, precision, recomputation) of the runs checked.
_HFU_RUNS: tuple[tuple[int, float, str, str, str], ...] = (
    (0, 0.05, "h100-sxm", "bf16", "full"),
    (1, 1.5, "a100-sxm-80gb", "bf16", "none"),
    (2, 80.0, "h100-sxm", "bf16", "selective"),
    (3, 1.5, "h200-sxm", "bf16", "selective"),
    (1, 0.7, "h100-sxm", "fp8", "full"),
    (3, 4.0, "a100-sxm-80gb", "bf16", "full"),
)


def hardware_step_flops(
    n_params: float, layers: int, width: int, seq_len: int, tokens: int, recompute: str
) -> float:
    """The FLOPs a step executes: the model's, plus the forward work recomputed in the backward pass.

    ``"full"`` reruns every block's forward (weights and attention); ``"selective"`` reruns only attention's
    core (Korthikanti et al. 2022), whose products are the attention forward; ``"none"`` reruns nothing.
    """
    if recompute not in _RECOMPUTE:
        raise ValueError(f"recompute must be one of {_RECOMPUTE}, got {recompute!r}")
    p = _parts(n_params, layers, width, seq_len, tokens)
    extra = {"none": 0.0, "selective": p["attention_forward"], "full": sum(p.values())}[recompute]
    return model_step_flops(n_params, layers, width, seq_len, tokens) + extra


def _pair(label: str, got: Any, case: str) -> tuple[float, float]:
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        fail(
            label,
            f"for {case} you returned {got!r}; expected a pair (mfu, hfu).",
            "return a tuple of two numbers, MFU first.",
        )
    return _number(label, got[0], case + " (the MFU)"), _number(label, got[1], case + " (the HFU)")


@register(
    "training_performance-hfu",
    hints=(
        "MFU and HFU share the step time and the peak; they differ only in which FLOPs they count. Which of "
        "them does recomputation change?",
        "Recomputation reruns forward work during the backward pass. Write down which forward work each "
        "setting reruns: all of a block's, only attention's core, or none.",
        "Both are fractions of the dense peak of the precision the products ran in; the datasheet gives it "
        "in TFLOP/s.",
    ),
)
def check_hfu(mfu_hfu: Any) -> None:
    """``mfu_hfu(n_params, layers, width, seq_len, tokens, step_seconds, gpu, precision, recompute)``:
    the pair (MFU, HFU) of a step, as fractions."""
    label = "training_performance-hfu"
    for index, seconds, key, precision, recompute in _HFU_RUNS:
        n_params, layers, width, seq_len, tokens = _MODELS[index]
        gpu = datasheets.DATASHEETS[key]
        peak = gpu.dense_tflops[precision] * 1e12
        case = (
            f"{_describe(n_params, layers, width, seq_len, tokens)}, {seconds:g} s per {precision} step on the "
            f"{gpu.name}, recompute={recompute!r}"
        )
        got = call(
            label, mfu_hfu, n_params, layers, width, seq_len, tokens, seconds, gpu, precision, recompute
        )
        mfu, hfu = _pair(label, got, case)
        model = model_step_flops(n_params, layers, width, seq_len, tokens)
        hardware = hardware_step_flops(n_params, layers, width, seq_len, tokens, recompute)
        p = _parts(n_params, layers, width, seq_len, tokens)
        want_mfu, want_hfu = model / seconds / peak, hardware / seconds / peak
        common = {
            "a percentage instead of a fraction": 100,
            "the peak left in TFLOP/s while the FLOPs are plain FLOPs": 1e12,
            f"the datasheet's printed {precision} figure, which assumes 2:4 sparsity": (
                gpu.dense_tflops[precision] / gpu.printed_tflops[precision]
            ),
        }
        mfu_mistakes = {
            "the recomputed FLOPs counted in the MFU: model FLOPs are what the model needs, whatever the "
            "hardware reran": want_hfu,
            "6NT alone, attention left out": 6 * n_params * tokens / seconds / peak,
        } | {name: want_mfu * factor for name, factor in common.items()}
        _judge(
            label, mfu, want_mfu, mfu_mistakes, case + " (the MFU)", "count only the model's FLOPs.", rel=1e-4
        )
        hfu_mistakes = {
            "the HFU equal to the MFU, as if nothing were recomputed": want_mfu,
            "a whole extra step counted for recomputation: only forward work is rerun": 2 * want_mfu,
            "the rerun attention forgotten (2N per token added, not attention's forward)": (
                model + (2 * n_params * tokens if recompute != "none" else 0)
            )
            / seconds
            / peak,
            "selective recomputation counted as full: it reruns only attention's core": (
                model + sum(p.values()) if recompute == "selective" else hardware
            )
            / seconds
            / peak,
            "full recomputation counted as selective: it reruns every block's forward, weights included": (
                model + p["attention_forward"] if recompute == "full" else hardware
            )
            / seconds
            / peak,
            "recomputation added even though recompute is 'none'": (model + sum(p.values())) / seconds / peak,
        } | {name: want_hfu * factor for name, factor in common.items()}
        _judge(
            label,
            hfu,
            want_hfu,
            hfu_mistakes,
            case + " (the HFU)",
            "write down which forward work the recomputation setting reruns, and add only that.",
            rel=1e-4,
        )


# ---- training_performance-bf16-products -----------------------------------------------------------

#: The operators whose kernels are matrix products, as the exercise states them.
PRODUCT_OPS = ("aten::mm", "aten::addmm", "aten::bmm")

_COLUMNS = ("name", "op", "dtypes", "calls", "ms")


def kernel_tables() -> dict[str, Any]:
    """Three kernel tables of one training step, in the layout of ``profiling.kernel_table``: a GPU step under
    bf16 autocast (opaque ``nvjet`` kernel names), the same on a CPU (operator names), and an fp32 step."""
    import pandas as pd

    gpu_bf16 = [
        ("nvjet_hsh_128x256_64x4_1x2_h_bz_coopA_NNT", "aten::mm", "bf16 bf16", 36, 4.10),
        ("nvjet_hsh_256x128_64x4_2x1_v_bz_coopB_TNN", "aten::addmm", "bf16 bf16 bf16", 24, 2.65),
        ("ampere_bf16_s16816gemm_bf16_128x64_ldg8_f2f_tn", "aten::bmm", "bf16 bf16", 12, 0.95),
        ("sm80_xmma_gemm_f32f32_tf32f32_f32_nn_n_tilesize128x128", "aten::mm", "fp32 fp32", 2, 0.60),
        ("void at::native::unrolled_elementwise_kernel<copy bf16>", "aten::copy_", "fp32 bf16", 48, 0.80),
        (
            "void at::native::vectorized_layer_norm_kernel<float>",
            "aten::native_layer_norm",
            "fp32 fp32 fp32",
            25,
            0.55,
        ),
        ("void at::native::vectorized_elementwise_kernel<gelu bf16>", "aten::gelu", "bf16", 12, 0.35),
        ("void at::native::cunn_SoftMaxForward<float>", "aten::_softmax", "fp32", 12, 0.40),
        ("multi_tensor_apply_kernel<AdamW>", "aten::_fused_adamw_", "fp32 fp32 fp32 fp32", 1, 0.90),
    ]
    cpu_bf16 = [
        ("aten::mm", "aten::mm", "bf16 bf16", 36, 31.0),
        ("aten::addmm", "aten::addmm", "bf16 bf16 bf16", 24, 19.5),
        ("aten::bmm", "aten::bmm", "bf16 bf16", 12, 6.0),
        ("aten::copy_", "aten::copy_", "fp32 bf16", 48, 9.0),
        ("aten::native_layer_norm", "aten::native_layer_norm", "fp32 fp32 fp32", 25, 7.5),
        ("aten::_softmax", "aten::_softmax", "fp32", 12, 4.0),
        ("aten::add_", "aten::add_", "fp32 fp32", 150, 12.0),
    ]
    fp32 = [
        ("sm80_xmma_gemm_f32f32_tf32f32_f32_nn_n_tilesize128x128", "aten::mm", "fp32 fp32", 36, 9.8),
        ("sm80_xmma_gemm_f32f32_tf32f32_f32_tn_n_tilesize64x128", "aten::addmm", "fp32 fp32 fp32", 24, 6.1),
        (
            "void at::native::vectorized_layer_norm_kernel<float>",
            "aten::native_layer_norm",
            "fp32 fp32 fp32",
            25,
            0.7,
        ),
        ("multi_tensor_apply_kernel<AdamW>", "aten::_fused_adamw_", "fp32 fp32 fp32 fp32", 1, 0.9),
    ]
    return {
        name: pd.DataFrame(rows, columns=list(_COLUMNS))
        for name, rows in {
            "a GPU step under bf16 autocast": gpu_bf16,
            "a CPU step under bf16 autocast": cpu_bf16,
            "an fp32 step on a GPU": fp32,
        }.items()
    }


def _all_bf16(dtypes: str) -> bool:
    names = dtypes.split()
    return bool(names) and all(d == "bf16" for d in names)


@register(
    "training_performance-bf16-products",
    hints=(
        "Two questions per row: is it a matrix product, and did it run in bf16? Which column answers each "
        "reliably, on a GPU and on a CPU alike?",
        "Kernel names are not a reliable guide to dtypes (recent cuBLAS names are opaque), and not every row "
        "that touches bf16 is a product: a cast has one bf16 and one fp32 dtype.",
        "The share is of the step's time: time, not calls, over the whole table.",
    ),
)
def check_bf16_products(bf16_product_share: Any) -> None:
    """``bf16_product_share(table)``: the fraction of a step's time spent in bf16 matrix products."""
    label = "training_performance-bf16-products"
    for case, table in kernel_tables().items():
        got = _number(label, call(label, bf16_product_share, table.copy()), case)
        product = table["op"].isin(PRODUCT_OPS)
        bf16 = table["dtypes"].map(_all_bf16)
        total = table["ms"].sum()
        want = table.loc[product & bf16, "ms"].sum() / total
        mistakes = {
            "calls, not time: a kernel called often may take little time": table.loc[
                product & bf16, "calls"
            ].sum()
            / table["calls"].sum(),
            "kernels chosen by 'bf16' in their name: recent cuBLAS kernels have opaque names, and CPU rows carry "
            "operator names": table.loc[table["name"].str.contains("bf16"), "ms"].sum() / total,
            "every row with a bf16 dtype, casts and elementwise ops included": table.loc[
                table["dtypes"].str.contains("bf16"), "ms"
            ].sum()
            / total,
            "every matrix product, whatever its dtype": table.loc[product, "ms"].sum() / total,
            "a share of the products' time, not of the step's": (
                table.loc[product & bf16, "ms"].sum() / table.loc[product, "ms"].sum()
            ),
            "a percentage instead of a fraction": want * 100,
        }
        _judge(
            label,
            got,
            want,
            mistakes,
            case,
            "decide per row: a product? in bf16? then weigh by time.",
            rel=1e-6,
        )

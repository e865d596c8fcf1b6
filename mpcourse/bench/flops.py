"""FLOPs of a model, and model FLOPs utilisation (MFU).

MFU is the fraction of the hardware's peak that a training run turns into useful model
arithmetic: ``model FLOPs per step / step time / peak FLOP/s`` (Chowdhery et al., 2022, App. B).
"Model FLOPs" count the operations the model mathematically needs, not what the software
happens to execute (recomputation, padding, elementwise work), so MFU compares runs across
implementations. The peak is that of the precision the matrix products run in: a bf16 run is
measured against the bf16 peak, not the fp32 one.

Two ways to count: :func:`count_flops` runs the step under ``torch.utils.flop_counter.FlopCounterMode``,
which adds up the FLOPs of every matrix product, convolution and attention kernel as it
executes (elementwise ops count zero); :func:`transformer_flops` is the ``6 * parameters * tokens``
rule for a transformer's forward and backward pass (Kaplan et al., 2020): 2 FLOPs per parameter
per token forward, 4 backward. They agree when matrix products dominate and every parameter takes
part in one; they differ by the first layer's input gradient (which nobody needs), biases (counted
in N by :func:`mpcourse.memory.matmul_parameter_count`, but no product FLOPs), embeddings (a lookup,
no FLOPs) and attention (FLOPs without parameters: :func:`attention_flops`). ``FlopCounterMode`` has
formulas for the fused CUDA attention kernels (flash, memory-efficient, cuDNN), but not for the fused
CPU kernel (``_scaled_dot_product_flash_attention_for_cpu``, torch 2.14), which counts as zero.
"""

from __future__ import annotations

from collections.abc import Callable

from torch.utils.flop_counter import FlopCounterMode

__all__ = ["attention_flops", "count_flops", "flops_by_op", "mfu", "transformer_flops"]


def count_flops(fn: Callable[[], object]) -> int:
    """Total FLOPs ``fn()`` executes in matrix products, convolutions and attention, counted by
    ``FlopCounterMode`` (a forward and backward step: wrap both in ``fn``)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def flops_by_op(fn: Callable[[], object]) -> dict[str, int]:
    """FLOPs of ``fn()`` per operator (e.g. ``aten.mm``, ``aten.addmm``), as ``FlopCounterMode`` counts them."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return {str(op): int(v) for op, v in counter.get_flop_counts()["Global"].items()}


def transformer_flops(parameters: int, tokens: int) -> int:
    """The ``6 N T`` estimate of a transformer training step's FLOPs: N parameters, T tokens per step."""
    if parameters < 1 or tokens < 1:
        raise ValueError(f"parameters and tokens must be positive, got {parameters} and {tokens}")
    return 6 * parameters * tokens


def attention_flops(layers: int, width: int, seq_len: int, tokens: int) -> int:
    """FLOPs of self-attention's two products in a training step, which the ``6 N T`` rule leaves out.

    Per token and layer, the scores ``Q K^T`` and the weighted sum of the values each take
    ``2 * seq_len * width`` FLOPs forward (``width`` = heads x head dimension), and the backward pass
    twice the forward: ``12 * seq_len * width`` in all, the ``12 L H Q T`` term of Chowdhery et al.
    (2022), Appendix B. A causal mask does not change the count: it is of the full score matrix, as
    ``FlopCounterMode`` counts it too.
    """
    if min(layers, width, seq_len, tokens) < 1:
        raise ValueError(
            f"layers, width, seq_len and tokens must be positive, got {layers}, {width}, {seq_len}, {tokens}"
        )
    return 12 * layers * width * seq_len * tokens


def mfu(flops_per_step: float, step_seconds: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation as a fraction (0.4 means 40% of peak)."""
    if flops_per_step < 0 or step_seconds <= 0 or peak_tflops <= 0:
        raise ValueError(
            f"need flops_per_step >= 0, step_seconds > 0 and peak_tflops > 0; got "
            f"{flops_per_step}, {step_seconds}, {peak_tflops}"
        )
    return flops_per_step / step_seconds / (peak_tflops * 1e12)

"""FP8 matrix products: an exact emulation of a scaled GEMM, and PyTorch's real one with its rules.

A scaled fp8 GEMM computes ``C = (A_fp8 · B_fp8^T) × scales``. The products of two 8-bit floats are
exact in fp32 (4 × 4 significand bits fit easily), the tensor core adds them up in (about) fp32,
and the scales, which only exist per row, per block or per tensor, are applied to the partial sums
afterwards. :func:`fp8_mm` does exactly that in fp32 on any device, for every scaling recipe of
:mod:`mpcourse.fp8.recipes`: with scales that vary along K (blocks), each block's partial sum is
scaled and then added, which is also how DeepSeek-V3 promotes partial sums to fp32 every 128
elements.

:func:`scaled_mm` calls ``torch._scaled_mm``, the real thing, after checking the operands against
its rules and saying which one is broken and what is accepted (see :func:`scaled_mm_problems`):
on CUDA it needs compute capability 8.9 (Ada) or 9.0+ (Hopper), mat1 row-major and mat2
column-major, K and N divisible by 16, and never E5M2 × E5M2; on the CPU recent PyTorch emulates it.
"""

from __future__ import annotations

import functools
import math

import torch

from .. import device as device_mod
from ..formats import dtype_name
from .recipes import Quantized

#: torch dtypes ``torch._scaled_mm`` multiplies (OCP fp8 on NVIDIA; the fnuz pair on AMD MI300).
SCALED_MM_DTYPES: tuple[str, ...] = ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
#: Scaling pairs this wrapper passes to ``torch._scaled_mm`` (the ones every fp8 GPU supports).
SCALED_MM_RECIPES: tuple[str, ...] = ("tensorwise", "delayed", "rowwise")


class UnsupportedFP8Error(RuntimeError):
    """Native fp8 was asked for on a device that has no fp8 units (or a library that is missing)."""


def _k_block(q: Quantized, k: int) -> int:
    """How many consecutive K elements share one scale in an operand quantised along its last axis."""
    if q.recipe in ("tensorwise", "delayed", "rowwise"):
        return k
    assert q.block_size is not None
    return q.block_size


def _per_row_and_kblock(q: Quantized, kb: int) -> torch.Tensor:
    """The operand's scales as a (rows, K / kb) float32 matrix."""
    rows, k = q.data.shape
    s = q.scale_values()
    if s.dim() == 0:
        s = s.reshape(1, 1)
    # expand each dimension to (rows, K / kb): rows from their block extent, K blocks from theirs
    if s.shape[0] != rows:
        s = s.repeat_interleave(rows // s.shape[0], dim=0)
    if s.shape[1] != k // kb:
        s = s.repeat_interleave((k // kb) // s.shape[1], dim=1)
    return s


def fp8_mm(a: Quantized, b: Quantized, *, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``A @ B.T`` of two quantised operands, as a scaled fp8 GEMM computes it (emulated, any device).

    ``a`` is (M, K) and ``b`` is (N, K), both quantised along K (``axis=-1``; a weight of an
    ``nn.Linear`` is already (N, K)). Products of elements are exact in fp32; each run of K
    elements that shares one scale in both operands is summed in fp32, multiplied by the two
    scales, and added to the result in fp32.

    Raises:
        ValueError: operands that are not 2-D, not quantised along K, of different K, or whose
            blocks along K do not nest (one block size must divide the other).
    """
    for name, q in (("a", a), ("b", b)):
        if not isinstance(q, Quantized):
            raise TypeError(
                f"{name} must be a Quantized (from mpcourse.fp8.quantize), got {type(q).__name__}"
            )
        if q.data.dim() != 2:
            raise ValueError(f"{name} must be 2-D, got shape {tuple(q.data.shape)}")
        if q.recipe not in ("tensorwise", "delayed") and q.axis != 1:
            raise ValueError(
                f"{name} is quantised along axis {q.axis}; a GEMM operand must be quantised along K "
                "(its last axis): quantize(..., axis=-1)"
            )
    (m, k), (n, kb_) = a.data.shape, b.data.shape
    if k != kb_:
        raise ValueError(f"inner dimensions differ: a is {m}x{k}, b is {n}x{kb_} (b is (N, K): C = a @ b.T)")
    block_a, block_b = _k_block(a, k), _k_block(b, k)
    kb = min(block_a, block_b)
    if max(block_a, block_b) % kb:
        raise ValueError(f"blocks along K do not nest: {block_a} and {block_b}; one must divide the other")
    sa, sb = _per_row_and_kblock(a, kb), _per_row_and_kblock(b, kb)
    da, db = a.data.float(), b.data.float()
    nb = k // kb
    if nb == 1:
        out = (da @ db.T) * sa * sb.T
    else:
        out = torch.zeros(m, n, dtype=torch.float32, device=da.device)
        # chunks of blocks, so the (chunk, M, N) partial sums stay small
        chunk = max(1, min(nb, (1 << 24) // max(m * n, 1)))
        a3, b3 = da.reshape(m, nb, kb), db.reshape(n, nb, kb)
        for start in range(0, nb, chunk):
            stop = min(nb, start + chunk)
            partial = torch.einsum("mjk,njk->jmn", a3[:, start:stop], b3[:, start:stop])
            scales = sa[:, start:stop].T[:, :, None] * sb[:, start:stop].T[:, None, :]
            out += (partial * scales).sum(0)
    return out.to(out_dtype)


# ---- torch._scaled_mm -----------------------------------------------------------------------------


@functools.cache
def cpu_rowwise_scaled_mm() -> bool:
    """Whether this PyTorch's CPU ``torch._scaled_mm`` accepts rowwise scales.

    Its CPU emulation took only per-tensor scales in older releases (2.11 among them, Colab's in late
    2026); asking once is more reliable than a version table.
    """
    if not hasattr(torch, "_scaled_mm"):
        return False
    one = torch.ones(16, 16).to(torch.float8_e4m3fn)
    try:
        torch._scaled_mm(
            one, one.t(), scale_a=torch.ones(16, 1), scale_b=torch.ones(1, 16), out_dtype=torch.bfloat16
        )
    except (RuntimeError, NotImplementedError):
        return False
    return True


_CPU_ROWWISE = (
    "this PyTorch's CPU torch._scaled_mm takes only per-tensor (tensorwise) scales; rowwise needs a "
    "newer PyTorch on the CPU, or a GPU; fp8_mm emulates it anywhere"
)


def scaled_mm_problems(
    a: Quantized, b: Quantized, device_kind: str = "cuda", out_dtype: torch.dtype = torch.bfloat16
) -> list[str]:
    """Why ``torch._scaled_mm`` would refuse ``a @ b.T`` on a ``device_kind`` device (empty: it accepts).

    The rules are those of PyTorch's ``Blas.cpp`` for CUDA (``"cuda"``); on the CPU (``"cpu"``),
    where recent PyTorch emulates the op, only the dtype and scaling rules apply.
    """
    problems = []
    names = (dtype_name(a.data.dtype), dtype_name(b.data.dtype))
    for which, q, name in (("a", a, names[0]), ("b", b, names[1])):
        if name not in SCALED_MM_DTYPES:
            problems.append(
                f"{which} holds {q.fmt.name} elements ({q.recipe}); _scaled_mm multiplies fp8 tensors "
                f"({', '.join(SCALED_MM_DTYPES)}). MX/NVFP4 operands need the block-scaled API of recent "
                "PyTorch on Blackwell (sm_100); the emulated fp8_mm handles them anywhere"
            )
        if q.recipe not in SCALED_MM_RECIPES:
            problems.append(
                f"{which} uses the {q.recipe!r} recipe; this wrapper passes {', '.join(SCALED_MM_RECIPES)} "
                "scales (blockwise 1x128/128x128 and MX pairs exist in recent PyTorch on sm_90/sm_100 only); "
                "use fp8_mm for the others"
            )
    if names == ("float8_e5m2", "float8_e5m2") and device_kind == "cuda":
        problems.append(
            "E5M2 x E5M2 is not supported (cuBLASLt); accepted pairs: E4M3 x E4M3, E4M3 x E5M2, "
            "E5M2 x E4M3 (gradients in E5M2 meet E4M3 weights or activations)"
        )
    rowwise = {a.recipe == "rowwise", b.recipe == "rowwise"}
    if device_kind == "cpu" and True in rowwise and not cpu_rowwise_scaled_mm():
        problems.append(_CPU_ROWWISE)
    if rowwise == {True, False}:
        problems.append(
            "one operand is rowwise and the other tensorwise; _scaled_mm takes both tensorwise "
            "(scalar scales) or both rowwise ((M, 1) and (1, N) scales)"
        )
    if a.data.dim() != 2 or b.data.dim() != 2:
        problems.append(f"operands must be 2-D; got {tuple(a.data.shape)} and {tuple(b.data.shape)}")
        return problems
    if a.data.shape[1] != b.data.shape[1]:
        problems.append(
            f"inner dimensions differ: a is {tuple(a.data.shape)}, b is {tuple(b.data.shape)} (C = a @ b.T)"
        )
    if device_kind == "cuda":
        k, n = a.data.shape[1], b.data.shape[0]
        bad = [f"{d}={v}" for d, v in (("K", k), ("N", n)) if v % 16]
        if bad:
            problems.append(
                f"on CUDA, K and N must be divisible by 16; got {', '.join(bad)} (pad the operands "
                "or keep this layer in bf16)"
            )
        if (
            a.recipe == "rowwise"
            and b.recipe == "rowwise"
            and out_dtype not in (torch.bfloat16, torch.float16)
        ):
            problems.append(
                f"rowwise scaling on CUDA outputs bf16 or fp16 (on sm_89, and older cuBLAS); got {out_dtype}"
            )
    return problems


def scaled_mm(
    a: Quantized,
    b: Quantized,
    *,
    out_dtype: torch.dtype = torch.bfloat16,
    use_fast_accum: bool = False,
    native: bool = False,
    portable: bool = True,
) -> torch.Tensor:
    """``A @ B.T`` with ``torch._scaled_mm``: real fp8 tensor cores on sm_89+, PyTorch's emulation on CPU.

    ``a`` is (M, K) row-major and ``b`` is (N, K) (an ``nn.Linear`` weight): its transpose is the
    column-major (K, N) mat2 that cuBLASLt requires, at no copy. Scales are passed as the decode
    scales ``torch._scaled_mm`` expects: 0-d for tensorwise, (M, 1) and (1, N) for rowwise.

    Args:
        native: demand real fp8 hardware; raises :class:`UnsupportedFP8Error` on a device without it
            (the CPU, a T4, an A100) instead of running PyTorch's emulation.
        portable: hold every device to CUDA's rules (the default), so that what runs on a CPU here
            runs on an H100 too; ``False`` applies only the current device's rules (the CPU
            emulation accepts E5M2 x E5M2 and any K and N).

    Raises:
        ValueError: operands ``torch._scaled_mm`` refuses, naming each rule broken and what is accepted.
        UnsupportedFP8Error: ``native=True`` on a device without fp8 units, or ``_scaled_mm`` missing.
    """
    dev = a.data.device
    if not hasattr(torch, "_scaled_mm"):
        raise UnsupportedFP8Error(f"this PyTorch ({torch.__version__}) has no torch._scaled_mm; use fp8_mm")
    if dev.type == "cuda" or native:
        caps = (
            device_mod.capabilities(kind="cuda")
            if dev.type == "cuda"
            else device_mod.capabilities(kind=dev.type)
        )
        if not caps.fp8_native:
            raise UnsupportedFP8Error(
                f"native fp8 needs an NVIDIA GPU of compute capability 8.9 (Ada: L4, RTX 40xx) or 9.0+ (Hopper: "
                f"H100, H200), or an AMD MI300+; this is {caps.describe()}. Use fp8_mm (emulated) here"
            )
    problems = scaled_mm_problems(a, b, "cuda" if (dev.type == "cuda" or portable) else dev.type, out_dtype)
    if dev.type == "cpu" and portable and "rowwise" in (a.recipe, b.recipe) and not cpu_rowwise_scaled_mm():
        problems.append(_CPU_ROWWISE)
    if problems:
        raise ValueError("torch._scaled_mm cannot multiply these operands:\n- " + "\n- ".join(problems))
    if a.recipe == "rowwise":
        scale_a = a.scale.float().reshape(-1, 1)
        scale_b = b.scale.float().reshape(1, -1)
    else:
        scale_a, scale_b = a.scale.float().reshape(()), b.scale.float().reshape(())
    mat1 = a.data.contiguous()
    mat2 = b.data.contiguous().t()  # (K, N), column-major
    return torch._scaled_mm(
        mat1, mat2, scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype, use_fast_accum=use_fast_accum
    )


def flops(m: int, k: int, n: int) -> float:
    """Floating-point operations of an (M, K) @ (K, N) product: 2MKN."""
    return 2.0 * m * k * n


def relative_error(result: torch.Tensor, reference: torch.Tensor) -> float:
    """``||result - reference|| / ||reference||`` in float64."""
    r, f = result.detach().double(), reference.detach().double()
    denom = torch.linalg.norm(f).item()
    return torch.linalg.norm(r - f).item() / denom if denom else math.inf

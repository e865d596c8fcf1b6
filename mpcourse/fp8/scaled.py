"""``torch.nn.functional.scaled_mm``, the public scaled GEMM, as the course's recipes call it.

PyTorch's public API names how each operand was scaled instead of guessing it from the scales'
shapes (as the private ``torch._scaled_mm`` does)::

    F.scaled_mm(mat_a, mat_b, scale_a, scale_recipe_a, scale_b, scale_recipe_b,
                swizzle_a=None, swizzle_b=None, bias=None, output_dtype=torch.bfloat16,
                contraction_dim=(), use_fast_accum=False)

(signature of torch 2.14.1, ``torch/nn/functional.py``; ``ScalingType`` and ``SwizzleType`` are
``torch.nn.functional.ScalingType`` / ``SwizzleType``). Each course recipe maps onto it as
:data:`LAYOUTS` says; the accepted *pairs* are those of the dispatch table ``scale_kernel_dispatch``
in PyTorch's ``aten/src/ATen/native/cuda/ScaledBlas.cpp`` (:data:`PAIRS`).

================ ====================== ================= ============== =====================
course recipe    ScalingType            scale dtype       swizzle (CUDA) scale as passed
================ ====================== ================= ============== =====================
tensorwise       TensorWise             float32           none           0-d
rowwise          RowWise                float32           none           A (M, 1), B (1, N)
blockwise        BlockWise1x128         float32           none           (rows, K/128), stride (1, rows)
blockwise_2d     BlockWise128x128       float32           none           (pad4(K/128), rows/128), stride (1, pad4)
mx (MXFP8/FP4)   BlockWise1x32          float8_e8m0fnu    SWIZZLE_32_4_4 flat, 128x4 tiles
nvfp4            BlockWise1x16 +        float8_e4m3fn +   SWIZZLE_32_4_4 flat + 0-d tensor scale
                 TensorWise             float32           + NO_SWIZZLE
================ ====================== ================= ============== =====================

``mat_b`` is the (K, N) column-major transpose of the (N, K) operand (an ``nn.Linear`` weight), at
no copy. FP4 elements travel packed two per byte (``torch.float4_e2m1fn_x2``, K halved).

:func:`scaled_mm` checks the operands first and names what is wrong and what is accepted;
:func:`support_table` says which recipe runs where: probed on this machine, and read from
PyTorch's source for sm_89, sm_90 and sm_100.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..formats import dtype_name
from . import gemm
from .gemm import UnsupportedFP8Error
from .nvfp4 import pack_e2m1
from .quantized import Quantized
from .recipes import quantize

__all__ = [
    "FROM_SOURCE",
    "LAYOUTS",
    "PAIRS",
    "PUBLIC_API_SINCE",
    "TABLE_RECIPES",
    "OperandLayout",
    "check_operands",
    "expected_scale_shape",
    "has_public_scaled_mm",
    "probe",
    "scaled_mm",
    "scaled_mm_arguments",
    "support_table",
    "swizzle_32_4_4",
    "unswizzle_32_4_4",
]

#: A PyTorch release known to have ``torch.nn.functional.scaled_mm``: its enums are documented for 2.12
#: (docs.pytorch.org/docs/2.12/generated/torch.nn.functional.ScalingType.html), and 2.14.1, which the
#: course installs, was checked. Whether an earlier release has it is not verified, so the module tests
#: for the function itself and names this version only in its error message, as one that suffices.
PUBLIC_API_SINCE = "2.12"

#: PyTorch source this module's rules come from (the stored pytorch/pytorch snapshot it was read in).
SCALED_BLAS = "aten/src/ATen/native/cuda/ScaledBlas.cpp (pytorch/pytorch @ 0174dfa)"
DEVICE_UTILS = "aten/src/ATen/native/cuda/ScaledBlasDeviceUtils.cpp (pytorch/pytorch @ 1568909)"
COMMON_CUDA = "torch/testing/_internal/common_cuda.py (torch 2.14.1, PLATFORM_SUPPORTS_MX_GEMM)"

FP8_DTYPES: tuple[str, ...] = ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")


@dataclass(frozen=True)
class OperandLayout:
    """How one course recipe is passed to ``F.scaled_mm``: enum members, dtypes and K block."""

    recipe: str
    scaling: tuple[str, ...]  # ScalingType member names, one per scale tensor
    swizzle: tuple[str, ...]  # SwizzleType member names on CUDA, one per scale tensor
    formats: tuple[str, ...]  # element formats a kernel exists for
    scale_dtype: str
    k_block: int | None  # elements along K per scale (None: the whole row)


#: Course recipe -> F.scaled_mm arguments. Scale dtypes, blocks and swizzles: ScaledBlas.cpp
#: (``is_blockwise_1x32_scaling``: e8m0 scales, 32 per block; ``is_blockwise_1x16_scaling``: e4m3,
#: 16; ``_scaled_mxfp8_mxfp8`` / ``_scaled_nvfp4_nvfp4``: "scale_a must be swizzled to
#: SWIZZLE_32_4_4"; 1x128 and 128x128 fp32 scales for DeepSeek-V3's recipe, arXiv 2412.19437 §3.3).
LAYOUTS: dict[str, OperandLayout] = {
    lay.recipe: lay
    for lay in (
        OperandLayout("tensorwise", ("TensorWise",), ("NO_SWIZZLE",), FP8_DTYPES, "float32", None),
        OperandLayout("rowwise", ("RowWise",), ("NO_SWIZZLE",), FP8_DTYPES, "float32", None),
        OperandLayout("blockwise", ("BlockWise1x128",), ("NO_SWIZZLE",), FP8_DTYPES, "float32", 128),
        OperandLayout("blockwise_2d", ("BlockWise128x128",), ("NO_SWIZZLE",), FP8_DTYPES, "float32", 128),
        OperandLayout(
            "mx",
            ("BlockWise1x32",),
            ("SWIZZLE_32_4_4",),
            ("float8_e4m3fn", "float8_e5m2", "float4_e2m1fn"),
            "float8_e8m0fnu",
            32,
        ),
        OperandLayout(
            "nvfp4",
            ("BlockWise1x16", "TensorWise"),
            ("SWIZZLE_32_4_4", "NO_SWIZZLE"),
            ("float4_e2m1fn",),
            "float8_e4m3fn",
            16,
        ),
    )
}

#: Recipe pairs (A, B) a kernel exists for: ScaledBlas.cpp ``scale_kernel_dispatch`` (tensorwise,
#: rowwise, the three DeepSeek block pairs, nvfp4, mxfp8, mxfp4). ``delayed`` scales like tensorwise.
PAIRS: tuple[tuple[str, str], ...] = (
    ("tensorwise", "tensorwise"),
    ("rowwise", "rowwise"),
    ("blockwise", "blockwise"),
    ("blockwise", "blockwise_2d"),
    ("blockwise_2d", "blockwise"),
    ("mx", "mx"),
    ("nvfp4", "nvfp4"),
)

#: The recipes of :func:`support_table`: a column name -> (recipe and format of A, of B).
TABLE_RECIPES: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "tensorwise": (("tensorwise", "float8_e4m3fn"), ("tensorwise", "float8_e4m3fn")),
    "rowwise": (("rowwise", "float8_e4m3fn"), ("rowwise", "float8_e4m3fn")),
    "1x128 x 1x128": (("blockwise", "float8_e4m3fn"), ("blockwise", "float8_e4m3fn")),
    "1x128 x 128x128": (("blockwise", "float8_e4m3fn"), ("blockwise_2d", "float8_e4m3fn")),
    "mxfp8": (("mx", "float8_e4m3fn"), ("mx", "float8_e4m3fn")),
    "mxfp4": (("mx", "float4_e2m1fn"), ("mx", "float4_e2m1fn")),
    "nvfp4": (("nvfp4", "float4_e2m1fn"), ("nvfp4", "float4_e2m1fn")),
}

_RUNS = "runs"
_DEEPSEEK = "no: DeepSeek style (1x128, 128x128) scaling only supported in CUDA for SM90"
_NO_MX = "no: MX/NVFP4 block scaling needs sm_100 (PLATFORM_SUPPORTS_MX_GEMM is SM100OrLater)"
_MXFP4 = "runs if torch is built with MSLK (else: MXFP4 scaling supported on ROCM and CUDA+FBGEMM_GENAI only)"

#: What PyTorch's source says runs on each GPU generation (read, not measured): the device check
#: ``scaled_mm_arch_allowed`` (8.9 or >= 9.0, DEVICE_UTILS); ``_check_deepseek_support`` (major == 9,
#: cuBLASLt >= 12.9); rowwise via CUTLASS ``f8f8bf16_rowwise`` below 9.0 or cuBLAS < 12.9, and on 10.x
#: (SCALED_BLAS); MX and NVFP4 on sm_100 only (COMMON_CUDA); MXFP4 needs an MSLK build (SCALED_BLAS).
FROM_SOURCE: dict[str, dict[str, str]] = {
    "sm_89": dict.fromkeys(("tensorwise", "rowwise"), _RUNS)
    | dict.fromkeys(("1x128 x 1x128", "1x128 x 128x128"), _DEEPSEEK)
    | dict.fromkeys(("mxfp8", "mxfp4", "nvfp4"), _NO_MX),
    "sm_90": dict.fromkeys(("tensorwise", "rowwise"), _RUNS)
    | dict.fromkeys(("1x128 x 1x128", "1x128 x 128x128"), "runs (cuBLASLt >= 12.9)")
    | dict.fromkeys(("mxfp8", "mxfp4", "nvfp4"), _NO_MX),
    "sm_100": dict.fromkeys(("tensorwise", "rowwise"), _RUNS)
    | dict.fromkeys(("1x128 x 1x128", "1x128 x 128x128"), _DEEPSEEK)
    | {"mxfp8": _RUNS, "mxfp4": _MXFP4, "nvfp4": _RUNS},
}


def has_public_scaled_mm() -> bool:
    """Whether this PyTorch has ``torch.nn.functional.scaled_mm`` (asked at call time)."""
    return hasattr(F, "scaled_mm")


# ---- checking the operands ------------------------------------------------------------------------


def _kind(q: Quantized) -> str:
    """The course recipe that decides q's scaling type (``delayed`` scales like ``tensorwise``)."""
    return "tensorwise" if q.recipe == "delayed" else q.recipe


def expected_scale_shape(q: Quantized) -> tuple[int, ...]:
    """The shape of ``q.scale`` that ``quantize(..., axis=-1)`` makes for q's recipe, for (rows, K) data."""
    rows, k = q.data.shape
    kind, block = _kind(q), q.block_size or 1
    shapes: dict[str, tuple[int, ...]] = {
        "tensorwise": (),
        "rowwise": (rows, 1),
        "blockwise": (rows, k // block),
        "blockwise_2d": (rows // block, k // block),
        "mx": (rows, k // block),
        "nvfp4": (rows, k // block),
    }
    return shapes[kind]


def _check_one(name: str, q: object) -> list[str]:
    """What is wrong with one operand on its own (type, rank, axis, format, block, scale)."""
    if not isinstance(q, Quantized):
        raise TypeError(f"{name} must be a Quantized (from mpcourse.fp8.quantize), got {type(q).__name__}")
    if q.data.dim() != 2:
        return [f"{name} must be 2-D, got shape {tuple(q.data.shape)}"]
    kind = _kind(q)
    if kind not in LAYOUTS:
        return [f"{name} uses recipe {q.recipe!r}; F.scaled_mm takes {', '.join(LAYOUTS)} (and delayed)"]
    lay, k = LAYOUTS[kind], q.data.shape[1]
    problems = []
    if kind != "tensorwise" and q.axis != 1:
        problems.append(
            f"{name} is quantised along axis {q.axis}; a GEMM operand's scales run along K, its last "
            "axis: quantize(..., axis=-1) (for backward, see mpcourse.fp8.layouts)"
        )
    if q.fmt.name not in lay.formats:
        problems.append(
            f"{name} holds {q.fmt.name} elements; F.scaled_mm's {kind} kernels take {', '.join(lay.formats)}"
        )
    if lay.k_block is not None and q.block_size != lay.k_block:
        problems.append(
            f"{name} has blocks of {q.block_size}; ScalingType.{lay.scaling[0]} means {lay.k_block}"
        )
    if lay.k_block is not None and k % lay.k_block:
        problems.append(
            f"{name}: K={k} is not divisible by the block of {lay.k_block} elements; pad K with zeros"
        )
    if problems:
        return problems
    stored = q.fmt.torch_dtype or torch.float32  # FP4 elements: float32 holding E2M1 values, packed later
    if q.data.dtype != stored:
        problems.append(
            f"{name}'s elements are {dtype_name(q.data.dtype)}; {q.fmt.name} elements are stored as "
            f"{dtype_name(stored)} (quantize with mpcourse.fp8.quantize, which casts them)"
        )
    if dtype_name(q.scale.dtype) != lay.scale_dtype:
        problems.append(f"{name}'s scales are {dtype_name(q.scale.dtype)}; {kind} needs {lay.scale_dtype}")
    if q.scale.numel() != 1 or kind != "tensorwise":
        want = expected_scale_shape(q)
        tiles = (q.data.shape[0] // 16, k // 16)  # NVFP4's 16x16 weight tiles (arXiv 2509.25149 §4.3)
        if tuple(q.scale.shape) != want and not (kind == "nvfp4" and tuple(q.scale.shape) == tiles):
            problems.append(f"{name}'s scale has shape {tuple(q.scale.shape)}; {kind} needs {want}")
    if kind == "nvfp4" and q.tensor_scale is None:
        problems.append(f"{name} is nvfp4 without its fp32 tensor scale (Quantized.tensor_scale)")
    elif kind == "nvfp4" and (
        not isinstance(q.tensor_scale, torch.Tensor)
        or q.tensor_scale.numel() != 1
        or q.tensor_scale.dtype != torch.float32
    ):
        got = q.tensor_scale
        what = (
            f"a {dtype_name(got.dtype)} tensor of shape {tuple(got.shape)}"
            if isinstance(got, torch.Tensor)
            else type(got).__name__
        )
        problems.append(
            f"{name}'s nvfp4 tensor scale is {what}; ScalingType.TensorWise takes one float32 value (a 0-d tensor)"
        )
    return problems


def check_operands(a: Quantized, b: Quantized, device_type: str = "cpu") -> None:
    """Raise ``ValueError`` listing every reason ``F.scaled_mm`` would refuse ``a @ b.T``.

    ``a`` is (M, K) and ``b`` is (N, K), both quantised along K. On ``"cuda"`` the device rules of
    ScaledBlas.cpp apply too: K and N divisible by 16, and never E5M2 x E5M2 (cuBLASLt).

    Raises:
        TypeError: an operand that is not a :class:`Quantized`.
        ValueError: everything else, each problem naming what is accepted.
    """
    problems = _check_one("a", a) + _check_one("b", b)
    if not problems:
        pair = (_kind(a), _kind(b))
        fp4 = (a.fmt.name == "float4_e2m1fn", b.fmt.name == "float4_e2m1fn")
        if pair not in PAIRS:
            accepted = ", ".join(f"{x} x {y}" for x, y in PAIRS)
            problems.append(f"no F.scaled_mm kernel for {pair[0]} x {pair[1]}; accepted pairs: {accepted}")
        elif fp4[0] != fp4[1]:
            problems.append(
                f"a holds {a.fmt.name} and b {b.fmt.name}; MX kernels take MXFP8 x MXFP8 or MXFP4 x MXFP4"
            )
        if a.data.shape[1] != b.data.shape[1]:
            problems.append(
                f"inner dimensions differ: a is {tuple(a.data.shape)}, b is {tuple(b.data.shape)} (C = a @ b.T)"
            )
        if device_type == "cuda":
            bad = [f"{d}={v}" for d, v in (("K", a.data.shape[1]), ("N", b.data.shape[0])) if v % 16]
            if bad:
                problems.append(f"on CUDA, K and N must be divisible by 16; got {', '.join(bad)}")
            if (a.fmt.name, b.fmt.name) == ("float8_e5m2", "float8_e5m2"):
                problems.append(
                    "E5M2 x E5M2 is not supported on CUDA (cuBLASLt); accepted: E4M3 x E4M3, E4M3 x E5M2, E5M2 x E4M3"
                )
    if problems:
        raise ValueError("F.scaled_mm cannot multiply these operands:\n- " + "\n- ".join(problems))


# ---- layouts of the scales --------------------------------------------------------------------------


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def swizzle_32_4_4(scale: torch.Tensor) -> torch.Tensor:
    """A (rows, K-blocks) block-scale matrix in cuBLAS's blocked layout (``SwizzleType.SWIZZLE_32_4_4``).

    cuBLAS, "1D block scaling factors layout": the matrix is zero-padded to 128-row x 4-column tiles
    stored one after another (512 bytes each, tiles of a row band consecutive); inside a tile, row
    ``r`` and column ``c`` sit at ``(r % 32) * 16 + (r // 32) * 4 + c``. Returns a flat tensor of
    ``128 * ceil(rows/128) * 4 * ceil(cols/4)`` elements in ``scale``'s dtype (indices, no arithmetic).
    """
    rows, cols = scale.shape
    bands, tiles = _ceil(rows, 128), _ceil(cols, 4)
    bits = scale.view(torch.uint8) if scale.element_size() == 1 else scale
    padded = torch.zeros(bands * 128, tiles * 4, dtype=bits.dtype, device=scale.device)
    padded[:rows, :cols] = bits
    r = torch.arange(bands * 128, device=scale.device)[:, None]
    c = torch.arange(tiles * 4, device=scale.device)[None, :]
    offset = 512 * ((r // 128) * tiles + c // 4) + (r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4
    out = torch.empty(padded.numel(), dtype=bits.dtype, device=scale.device)
    out[offset.reshape(-1)] = padded.reshape(-1)
    return out.view(scale.dtype) if bits is not scale else out


def unswizzle_32_4_4(flat: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The (rows, cols) matrix that :func:`swizzle_32_4_4` stored in ``flat`` (padding dropped)."""
    tiles = _ceil(cols, 4)
    r = torch.arange(rows, device=flat.device)[:, None]
    c = torch.arange(cols, device=flat.device)[None, :]
    offset = 512 * ((r // 128) * tiles + c // 4) + (r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4
    bits = flat.view(torch.uint8) if flat.element_size() == 1 else flat
    out = bits[offset]
    return out.view(flat.dtype) if bits is not flat else out


def _outer_major(s: torch.Tensor) -> torch.Tensor:
    """The same matrix with stride (1, rows): ScaledBlas.cpp's 1x128 scales ("outer-dim-major")."""
    return s.t().contiguous().t()


def _tile_scales(s: torch.Tensor) -> torch.Tensor:
    """(rows/128, K/128) tile scales as ScaledBlas.cpp takes them: shape (pad4(K/128), rows/128), stride (1, pad4)."""
    tiles, kb = s.shape
    padded = torch.zeros(tiles, _ceil(kb, 4) * 4, dtype=torch.float32, device=s.device)
    padded[:, :kb] = s
    return padded.t()


def _elements(q: Quantized) -> torch.Tensor:
    """q's elements as the kernel reads them: fp8 as they are, FP4 packed two per byte."""
    return pack_e2m1(q.data) if q.fmt.name == "float4_e2m1fn" else q.data.contiguous()


def _scales(q: Quantized, role: str) -> list[torch.Tensor]:
    """q's scale tensor(s) in the layout F.scaled_mm expects for operand ``role`` ("a" or "b")."""
    kind, s = _kind(q), q.scale
    if kind == "tensorwise":
        return [s.float().reshape(())]
    if kind == "rowwise":
        return [s.float().reshape(-1, 1) if role == "a" else s.float().reshape(1, -1).contiguous()]
    if kind == "blockwise":
        return [_outer_major(s.float())]
    if kind == "blockwise_2d":
        return [_tile_scales(s.float())]
    if kind == "mx":
        return [swizzle_32_4_4(s)]
    assert q.tensor_scale is not None
    if (
        s.shape[0] != q.data.shape[0]
    ):  # 16x16 tiles: the kernel takes 1x16 blocks, so repeat each tile's scale
        s = s.repeat_interleave(16, dim=0)
    return [swizzle_32_4_4(s), q.tensor_scale.float().reshape(())]


def scaled_mm_arguments(a: Quantized, b: Quantized) -> dict[str, Any]:
    """The keyword arguments ``F.scaled_mm(**args)`` gets for ``a @ b.T`` (printable, for the chapter).

    ``mat_b`` is ``b``'s elements transposed, (K, N) column-major; NVFP4 passes two scales and two
    recipes per operand (blocks and the fp32 tensor scale), the others one.
    """
    check_operands(a, b, a.data.device.type)
    st, sw = F.ScalingType, F.SwizzleType
    args: dict[str, Any] = {"mat_a": _elements(a), "mat_b": _elements(b).t()}
    for role, q in (("a", a), ("b", b)):
        lay = LAYOUTS[_kind(q)]
        scales = _scales(q, role)
        many = len(scales) > 1
        args[f"scale_{role}"] = scales if many else scales[0]
        recipes = [getattr(st, name) for name in lay.scaling]
        args[f"scale_recipe_{role}"] = recipes if many else recipes[0]
        if lay.swizzle != ("NO_SWIZZLE",):
            swizzles = [getattr(sw, name) for name in lay.swizzle]
            args[f"swizzle_{role}"] = swizzles if many else swizzles[0]
    return args


# ---- the call ---------------------------------------------------------------------------------------


#: Recipes the private ``torch._scaled_mm`` multiplies in every release that has it (the fallback).
PRIVATE_RECIPES: tuple[str, ...] = ("tensorwise", "rowwise")


def _private(a: Quantized, b: Quantized, out_dtype: torch.dtype, use_fast_accum: bool) -> torch.Tensor:
    """``torch._scaled_mm`` for a torch without the public API: tensorwise and rowwise only.

    The call itself is :func:`mpcourse.fp8.gemm.scaled_mm`, the course's wrapper of the private op
    (also the one :class:`~mpcourse.fp8.linear.FP8Linear` uses), held to this device's rules.
    """
    if not hasattr(torch, "_scaled_mm") or {_kind(a), _kind(b)} - set(PRIVATE_RECIPES):
        raise UnsupportedFP8Error(
            f"this PyTorch ({torch.__version__}) has no torch.nn.functional.scaled_mm; "
            f"{a.recipe} x {b.recipe} needs PyTorch >= {PUBLIC_API_SINCE} (the fallback, torch._scaled_mm, "
            f"takes {' and '.join(PRIVATE_RECIPES)} only). Use mpcourse.fp8.fp8_mm to emulate it"
        )
    return gemm.scaled_mm(a, b, out_dtype=out_dtype, use_fast_accum=use_fast_accum, portable=False)


def scaled_mm(
    a: Quantized, b: Quantized, *, out_dtype: torch.dtype = torch.bfloat16, use_fast_accum: bool = False
) -> torch.Tensor:
    """``A @ B.T`` of two quantised operands with PyTorch's public ``F.scaled_mm``.

    ``a`` is (M, K) and ``b`` is (N, K) (an ``nn.Linear`` weight), both from
    :func:`mpcourse.fp8.quantize` with ``axis=-1``; pairs of recipes as :data:`PAIRS` lists. On a
    PyTorch without the public API, tensorwise and rowwise pairs go to ``torch._scaled_mm``.

    Raises:
        TypeError / ValueError: operands that no kernel takes (see :func:`check_operands`).
        UnsupportedFP8Error: a recipe this PyTorch has no API for, naming the version needed.
        RuntimeError / NotImplementedError / ValueError from torch: a recipe this device cannot run
            (the CPU runs tensorwise and rowwise only; see :func:`support_table`).
    """
    check_operands(a, b, a.data.device.type)
    if not has_public_scaled_mm():
        return _private(a, b, out_dtype, use_fast_accum)
    return F.scaled_mm(**scaled_mm_arguments(a, b), output_dtype=out_dtype, use_fast_accum=use_fast_accum)


# ---- which recipe runs where ----------------------------------------------------------------------


def _probe_operands(column: str, device: str) -> tuple[Quantized, Quantized]:
    """Tiny operands for one :data:`TABLE_RECIPES` column: M = N = 128, K = 256 (every block divides)."""
    gen = torch.Generator().manual_seed(0)
    (ra, fa), (rb, fb) = TABLE_RECIPES[column]
    x = torch.randn(128, 256, generator=gen).to(device)
    w = torch.randn(128, 256, generator=gen).to(device)
    return quantize(x, ra, fa), quantize(w, rb, fb)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


@functools.cache
def probe(column: str, device: str = "cpu") -> str:
    """``"runs"``, or the first line of the error, for one :data:`TABLE_RECIPES` column on ``device``."""
    if column not in TABLE_RECIPES:
        raise ValueError(f"unknown recipe {column!r}; accepted: {', '.join(TABLE_RECIPES)}")
    a, b = _probe_operands(column, device)
    try:
        scaled_mm(a, b, out_dtype=torch.bfloat16)
    except (RuntimeError, NotImplementedError, ValueError, TypeError) as err:
        return _first_line(err)
    return _RUNS


def _device_label(device: str) -> str:
    if device == "cpu":
        return "cpu (this machine)"
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor} {torch.cuda.get_device_name(device)} (this machine)"


def support_table(devices: tuple[str, ...] | None = None, probe_fn: Callable[[str, str], str] = probe) -> Any:
    """A pandas DataFrame: for each place (rows) and recipe (columns), "runs" or why not.

    Rows for ``devices`` (default: the CPU, and CUDA device 0 if present) are probed, each recipe
    tried on 128x256 @ 256x128 operands ("measured"); rows sm_89, sm_90, sm_100 are :data:`FROM_SOURCE`,
    read from PyTorch's checks ("from source"), with the file in the ``source`` column.
    """
    import pandas as pd

    if devices is None:
        devices = ("cpu", "cuda:0") if torch.cuda.is_available() else ("cpu",)
    rows: dict[str, dict[str, str]] = {}
    for dev in devices:
        rows[_device_label(dev)] = {col: probe_fn(col, dev) for col in TABLE_RECIPES} | {
            "basis": "measured",
            "source": f"probed with torch {torch.__version__}",
        }
    sources = f"{SCALED_BLAS}; {DEVICE_UTILS}; {COMMON_CUDA}"
    for arch, entries in FROM_SOURCE.items():
        rows[arch] = dict(entries) | {"basis": "from source", "source": sources}
    return pd.DataFrame.from_dict(rows, orient="index")

"""NVFP4 training quantisation as NVIDIA specifies it, emulated exactly, one visible step at a time.

Source: NVIDIA, "Pretraining Large Language Models with NVFP4", arXiv 2509.25149 (v1, 2025), cited
below as [NVFP4 §n]. Where the paper states a formula and leaves the floating-point details open
(the order of the fp32 operations, what a zero amax does), this module follows Transformer Engine's
reference quantiser (``NVIDIA/TransformerEngine``, ``transformer_engine/pytorch/experimental/
quantization_microblock_ref.py``, ``_quantize_blockwise_reference``), so the stored bits are the
ones TE computes. Everything runs in float32 with torch operations, on any device.

The format [NVFP4 §2]: E2M1 elements (±{0, 0.5, 1, 1.5, 2, 3, 4, 6}), one E4M3 scale per 16
consecutive elements, and one fp32 scale per tensor, so that the block scales fit E4M3's range.
Quantising a tensor ``x`` ([NVFP4 App. B]; TE's reference, step for step, all fp32):

====  =============================================  ======================================================
step  quantity                                       formula
====  =============================================  ======================================================
1     global amax                                    ``amax(|x|)`` over the whole tensor
2     global encode scale ``s_enc``                  ``(6 * 448) / amax``; fp32 max if that overflows
                                                     (amax = 0), 1 if it is 0 (amax = inf)
3     global decode scale ``s_dec`` (fp32, stored)   ``1 / s_enc``  (= amax / 2688)
4     block amax                                     ``amax(|x_b|)`` over a 1x16 block (16x16 for weights)
5     block decode scale, before rounding            ``(block_amax / 6) * s_enc``  (<= 448 by step 2)
6     block scale (E4M3, stored)                     step 5 clamped to [-448, 448], rounded to nearest even
7     block encode scale                             ``1 / (fp32(step 6) * s_dec)``; fp32 max if that overflows
8     scaled elements                                ``x * step 7``, clamped to [-6, 6] (0 where step 6 is 0)
9     elements (E2M1, stored)                        step 8 rounded: to nearest even, or stochastically
====  =============================================  ======================================================

and ``x ≈ element × block scale × s_dec``. A block whose scale underflows E4M3 (block amax below
about 2^-10 / 448 of the global amax) gets scale 0 and decodes to 0. Its elements are stored as 0
here, as :func:`~mpcourse.fp8.recipes.quantize` does (TE's step 7 makes their encode scale fp32
max, so TE stores ±6 there; both decode to 0 and give the same GEMM; only those blocks' element bits
differ from TE's).

The training recipe [NVFP4 §4] quantises the three GEMMs of a linear layer ``y = x W^T`` as
:data:`GEMMS` lists: activations and gradients in 1x16 blocks along the GEMM's inner dimension,
weights in 16x16 blocks (§4.3: then ``W`` and ``W^T`` quantise to the same values, so the forward
and the backward pass see the same weight); gradients rounded stochastically, everything else to
nearest even (§4.4); and the two inputs of the weight-gradient GEMM multiplied by a 16x16 random
Hadamard transform along their inner (token) dimension first (§4.2), which spreads block outliers
and cancels in the product. A few sensitive layers, mostly the last ones (about 15% of the linear
layers in the paper's 12B model), stay in BF16 (§4.1); that choice belongs to the model, not here.

Elements are returned in the course's :class:`~mpcourse.fp8.quantized.Quantized` container, as a
float32 tensor holding E2M1 values (torch's ``float4_e2m1fn_x2`` packs two per byte and has almost
no operations; :func:`pack_e2m1` produces that layout); block scales as ``torch.float8_e4m3fn``;
``tensor_scale`` is ``s_dec``. :func:`~mpcourse.fp8.recipes.quantize` with ``recipe="nvfp4"`` calls
:func:`quantize_steps` (1x16 blocks along its ``axis``, to nearest), so the course has one NVFP4
quantiser and one arithmetic, TE's; this module adds the 16x16 weight tiles, stochastic rounding
and the Hadamard transform of the training recipe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from .. import formats
from .quantized import Quantized, expand_blocks
from .recipes import cast

__all__ = [
    "BLOCK",
    "BLOCK_SHAPES",
    "E2M1_MAX",
    "E4M3_MAX",
    "GEMMS",
    "HADAMARD_SIZE",
    "ROLES",
    "TE_WGRAD_SIGNS",
    "NVFP4Steps",
    "apply_rht",
    "block_crest_factor",
    "dgrad",
    "fprop",
    "global_encode_scale",
    "hadamard_matrix",
    "pack_e2m1",
    "quantize",
    "quantize_activation",
    "quantize_gradient",
    "quantize_steps",
    "quantize_weight",
    "random_signs",
    "rht_matrix",
    "transpose",
    "wgrad",
]

Rounding = Literal["nearest", "stochastic"]

E2M1 = formats.E2M1
E4M3 = formats.E4M3
#: Largest E2M1 and E4M3 values, 6 and 448 (mpcourse.formats' data: OCP MX v1.0 FP4 E2M1, OCP OFP8 v1.0 E4M3).
E2M1_MAX: float = E2M1.max
E4M3_MAX: float = E4M3.max
#: Elements per block scale [NVFP4 §2]: 16 contiguous values share one E4M3 scale.
BLOCK = 16
#: Block shapes [NVFP4 §4.3]: 1x16 for activations and gradients, 16x16 for weights.
BLOCK_SHAPES: dict[str, tuple[int, int]] = {"1x16": (1, BLOCK), "16x16": (BLOCK, BLOCK)}
#: Size of the random Hadamard transform [NVFP4 §4.2]: 16x16, applied in 16-element blocks.
HADAMARD_SIZE = 16
#: Transformer Engine's fixed random signs for the wgrad Hadamard transform (TE
#: ``transformer_engine/pytorch/tensor/nvfp4_tensor.py``, ``get_wgrad_sign_vector``): one sign
#: vector for every layer and step, as [NVFP4 §4.2] describes (a single random sign vector).
TE_WGRAD_SIGNS: tuple[int, ...] = (1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1)

#: How each tensor of a linear layer is quantised [NVFP4 §4.3, §4.4]: (block shape, rounding).
ROLES: dict[str, tuple[str, Rounding]] = {
    "weight": ("16x16", "nearest"),
    "activation": ("1x16", "nearest"),
    "gradient": ("1x16", "stochastic"),
}

#: The three GEMMs of ``y = x W^T`` and how NVFP4 feeds them [NVFP4 §4]: (name, product,
#: first operand, second operand). K: in-features, N: out-features, M: tokens.
GEMMS: tuple[tuple[str, str, str, str], ...] = (
    ("fprop", "y = x W^T", "x: 1x16 blocks along K, nearest", "W: 16x16 blocks, nearest"),
    (
        "dgrad",
        "dx = dy W",
        "dy: 1x16 blocks along N, stochastic",
        "W: the same 16x16-block quantisation, transposed",
    ),
    (
        "wgrad",
        "dW = dy^T x",
        "dy^T: Hadamard along M, 1x16 blocks along M, stochastic",
        "x^T: Hadamard along M, 1x16 blocks along M, nearest",
    ),
)

_FP32_MAX = torch.finfo(torch.float32).max


# ---- checks ---------------------------------------------------------------------------------------


def _check_tensor(x: object, what: str) -> torch.Tensor:
    """``x`` as float32, after checking it is a finite floating-point tensor with at least one dimension."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(
            f"{what} must be a floating-point torch tensor (float32, bfloat16, float16, float64); got "
            f"{type(x).__name__} {getattr(x, 'dtype', '')}".rstrip()
        )
    if x.dim() == 0 or x.numel() == 0:
        raise ValueError(
            f"{what} must have at least one dimension and one element; got shape {tuple(x.shape)}"
        )
    x = x.detach().float()
    if not bool(torch.isfinite(x).all()):
        raise ValueError(
            f"{what} holds NaN or inf: E2M1 has neither, and the global amax would make every scale "
            "meaningless; find where the non-finite values come from first (e.g. a loss scaler's overflow)"
        )
    return x


def _check_divides(length: int, what: str) -> None:
    """NVFP4 fixes the block at 16 [NVFP4 §2]: the remedy for a dimension it does not divide is padding."""
    if length % BLOCK:
        padded = -(-length // BLOCK) * BLOCK
        raise ValueError(
            f"NVFP4 blocks hold {BLOCK} elements (fixed by the format), which do not divide {what} ({length}): "
            f"pad it with zeros to {padded} (zeros change no block's scale and add nothing to a GEMM)"
        )


def _block_shape(block_shape: str) -> tuple[int, int]:
    if block_shape not in BLOCK_SHAPES:
        raise ValueError(f"block_shape={block_shape!r}; accepted: {', '.join(map(repr, BLOCK_SHAPES))}")
    return BLOCK_SHAPES[block_shape]


# ---- the two-level scale ------------------------------------------------------------------------


def global_encode_scale(amax: torch.Tensor) -> torch.Tensor:
    """Step 2: ``s_enc = (6 * 448) / amax`` in fp32, with TE's guards [NVFP4 App. B].

    It maps the tensor's amax to the largest block scale E4M3 can hold (448) times the largest
    element (6), so every block scale of step 5 lands in E4M3's range. amax = 0 gives inf, held at
    fp32 max (all scales then round to 0, and nothing becomes NaN); amax = inf gives 0, replaced by 1.
    """
    amax = amax.float()
    # A true division: ``2688 / tensor`` would be ``reciprocal(tensor) * 2688`` in torch, rounded twice.
    s_enc = torch.div(torch.full_like(amax, E2M1_MAX * E4M3_MAX), amax)
    s_enc = torch.clamp(s_enc, max=_FP32_MAX)
    return torch.where(s_enc == 0, torch.ones_like(s_enc), s_enc)


def _block_amax(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Step 4: the amax of each block; shape ``(..., K/16)`` for 1x16, ``(M/16, K/16)`` for 16x16."""
    rows, cols = shape
    if rows == 1:
        return x.abs().reshape(*x.shape[:-1], x.shape[-1] // cols, cols).amax(dim=-1)
    m, k = x.shape
    return x.abs().reshape(m // rows, rows, k // cols, cols).amax(dim=(1, 3))


def _round_elements(
    scaled: torch.Tensor, rounding: Rounding, generator: torch.Generator | None
) -> torch.Tensor:
    """Step 9: E2M1 values of ``scaled`` (already in [-6, 6]), as float32, by mpcourse.formats' rounding.

    ``"stochastic"`` rounds up with probability equal to the distance from the E2M1 value below, in
    units of the gap, so the expected result is the input exactly [NVFP4 §4.4]; ``generator`` makes
    it reproducible.
    """
    if rounding not in ("nearest", "stochastic"):
        raise ValueError(f"rounding={rounding!r}; accepted: 'nearest', 'stochastic'")
    # The same algorithm as mpcourse.formats.round_tensor(scaled, E2M1, ...), bit for bit and with the
    # same random draws (tests/test_fp8_nvfp4.py compares them), written out for E2M1's three gaps:
    # training calls it five times per layer and step, and the general routine is several times slower.
    a = scaled.detach().abs().to(torch.float64)
    gap = torch.where(a < 2, 0.5, torch.where(a < 4, 1.0, 2.0))  # E2M1: 0.5 below 2, then 1, then 2
    q = a / gap  # exact: a division by a power of two
    if rounding == "nearest":
        n = torch.round(q)  # ties to even: to the even multiple of the gap, E2M1's even mantissa
    else:
        low = torch.floor(q)
        n = low + (torch.rand(q.shape, generator=generator, device=q.device, dtype=torch.float64) < q - low)
    return torch.copysign(n * gap, scaled.detach().to(torch.float64)).to(torch.float32)


@dataclass(frozen=True)
class NVFP4Steps:
    """Every intermediate of one NVFP4 quantisation (the steps of the module's table), all fp32
    except ``block_scale`` (``torch.float8_e4m3fn``, the stored bits).

    Block-shaped fields have the shape of the scales: ``(..., K/16)`` for 1x16 blocks and
    ``(M/16, K/16)`` for 16x16 tiles; element-shaped ones have ``x``'s shape.
    """

    x: torch.Tensor
    block_shape: str
    rounding: Rounding
    global_amax: torch.Tensor
    global_encode: torch.Tensor
    global_decode: torch.Tensor
    block_amax: torch.Tensor
    block_decode_unrounded: torch.Tensor
    block_scale: torch.Tensor
    block_encode: torch.Tensor
    scaled: torch.Tensor
    elements: torch.Tensor

    def to_quantized(self) -> Quantized:
        """The course's container: E2M1 values (float32), E4M3 block scales, ``tensor_scale = s_dec``."""
        return Quantized(
            self.elements,
            self.block_scale,
            "nvfp4",
            E2M1,
            BLOCK,
            self.x.dim() - 1,
            self.global_decode,
        )

    def block(self, row: int = 0, col: int = 0) -> dict[str, object]:
        """Every step for one block, as plain Python numbers (for a table in a chapter).

        ``row, col`` index the scales: for 1x16 blocks of a 2-D tensor, row ``row`` and elements
        ``16 col ... 16 col + 15``; for 16x16 tiles, tile ``(row, col)`` (its values flattened).
        """
        if self.x.dim() != 2:
            raise ValueError(f"block() reads 2-D tensors; this one has shape {tuple(self.x.shape)}")
        n_rows, n_cols = self.block_scale.shape
        if not (0 <= row < n_rows and 0 <= col < n_cols):
            raise ValueError(f"block ({row}, {col}) is outside the {n_rows} x {n_cols} blocks of this tensor")
        r, c = BLOCK_SHAPES[self.block_shape]
        cut = (slice(row * r, (row + 1) * r), slice(col * c, (col + 1) * c))
        flat = lambda t: t[cut].flatten().tolist()
        return {
            "x": flat(self.x),
            "global_amax": self.global_amax.item(),
            "global_encode": self.global_encode.item(),
            "global_decode": self.global_decode.item(),
            "block_amax": self.block_amax[row, col].item(),
            "block_decode_unrounded": self.block_decode_unrounded[row, col].item(),
            "block_scale": self.block_scale[row, col].float().item(),
            "block_scale_bits": int(self.block_scale[row, col].view(torch.uint8).item()),
            "block_encode": self.block_encode[row, col].item(),
            "scaled": flat(self.scaled),
            "elements": flat(self.elements),
            "dequantized": flat(self.dequantize()),
        }

    def dequantize(self) -> torch.Tensor:
        """``element × block scale × s_dec`` (float32), multiplied in that order, as TE's GEMM applies them."""
        scale = expand_blocks(self.block_scale.float(), self.x.shape)
        return self.elements * scale * self.global_decode


def quantize_steps(
    x: torch.Tensor,
    *,
    block_shape: str = "1x16",
    rounding: Rounding = "nearest",
    generator: torch.Generator | None = None,
) -> NVFP4Steps:
    """Quantise ``x`` to NVFP4 and keep every intermediate (see the module's table of steps).

    Args:
        x: a finite floating-point tensor. 1x16 blocks run along the last dimension (the inner, K,
            dimension of the GEMM that consumes it; transpose first for a wgrad operand); 16x16 tiles
            need a 2-D tensor (a weight, ``(out_features, in_features)``).
        block_shape: ``"1x16"`` (activations, gradients) or ``"16x16"`` (weights) [NVFP4 §4.3].
        rounding: ``"nearest"`` (ties to even) or ``"stochastic"`` (gradients) [NVFP4 §4.4].
        generator: a ``torch.Generator`` on ``x``'s device, for reproducible stochastic rounding.

    Raises:
        TypeError: ``x`` is not a floating-point tensor.
        ValueError: a dimension 16 does not divide, a 16x16 tile on a tensor that is not 2-D, NaN or
            inf in ``x``, or an unknown block shape or rounding.
    """
    rows, _ = _block_shape(block_shape)
    x = _check_tensor(x, "x")
    if rows > 1 and x.dim() != 2:
        raise ValueError(
            f"16x16 blocks are for 2-D weights (out_features, in_features); got a {x.dim()}-D tensor of shape "
            f"{tuple(x.shape)}. Use block_shape='1x16' for activations and gradients"
        )
    _check_divides(x.shape[-1], f"the last dimension of shape {tuple(x.shape)}")
    if rows > 1:
        _check_divides(x.shape[0], f"the first dimension of shape {tuple(x.shape)} (16x16 tiles)")
    if rounding not in ("nearest", "stochastic"):
        raise ValueError(f"rounding={rounding!r}; accepted: 'nearest', 'stochastic'")

    global_amax = x.abs().amax()  # step 1
    s_enc = global_encode_scale(global_amax)  # step 2
    s_dec = torch.div(torch.ones_like(s_enc), s_enc)  # step 3
    block_amax = _block_amax(x, BLOCK_SHAPES[block_shape])  # step 4
    unrounded = torch.clamp((block_amax / E2M1_MAX) * s_enc, max=_FP32_MAX)  # step 5
    block_scale = cast(unrounded, E4M3, saturate=True)  # step 6: clamp to ±448, nearest even
    block_encode = torch.clamp(torch.div(1.0, block_scale.float() * s_dec), max=_FP32_MAX)  # step 7
    scaled = torch.clamp(x * expand_blocks(block_encode, x.shape), -E2M1_MAX, E2M1_MAX)  # step 8
    scaled = torch.where(expand_blocks(block_scale.float(), x.shape) > 0, scaled, torch.zeros_like(scaled))
    elements = _round_elements(scaled, rounding, generator)  # step 9
    return NVFP4Steps(
        x, block_shape, rounding, global_amax, s_enc, s_dec, block_amax, unrounded, block_scale,
        block_encode, scaled, elements,
    )  # fmt: skip


def quantize(
    x: torch.Tensor,
    *,
    block_shape: str = "1x16",
    rounding: Rounding = "nearest",
    generator: torch.Generator | None = None,
) -> Quantized:
    """NVFP4 quantisation of ``x`` as a :class:`Quantized` (arguments as in :func:`quantize_steps`)."""
    return quantize_steps(x, block_shape=block_shape, rounding=rounding, generator=generator).to_quantized()


def quantize_weight(w: torch.Tensor) -> Quantized:
    """A weight ``(out_features, in_features)``: 16x16 tiles, nearest [NVFP4 §4.3]."""
    if isinstance(w, torch.Tensor) and w.dim() != 2:
        raise ValueError(
            f"a weight must be a 2-D tensor (out_features, in_features) for 16x16 tiles; got shape {tuple(w.shape)}"
        )
    return quantize(w, block_shape="16x16")


def quantize_activation(x: torch.Tensor) -> Quantized:
    """An activation: 1x16 blocks along the last dimension, nearest [NVFP4 §4.4]."""
    return quantize(x, block_shape="1x16")


def quantize_gradient(g: torch.Tensor, generator: torch.Generator | None = None) -> Quantized:
    """A gradient: 1x16 blocks along the last dimension, stochastic rounding [NVFP4 §4.4]."""
    return quantize(g, block_shape="1x16", rounding="stochastic", generator=generator)


def transpose(q: Quantized) -> Quantized:
    """``W^T`` of a 16x16-tiled quantised weight, without re-quantising: elements and scales transposed.

    This is what 2D scaling buys [NVFP4 §4.3]: the dgrad GEMM needs ``W`` with blocks along the other
    axis, and a 16x16 tile is a tile either way, so the transpose is the quantisation of ``W^T``. A
    1x16-block tensor has no such transpose: its blocks would run along the wrong axis, and it must be
    quantised again from the high-precision values, which gives different values.
    """
    if (
        q.recipe != "nvfp4"
        or q.data.dim() != 2
        or q.scale.shape != (q.shape[0] // BLOCK, q.shape[1] // BLOCK)
    ):
        raise ValueError(
            "transpose needs a 16x16-tiled NVFP4 weight (quantize_weight / block_shape='16x16'); "
            f"got {q!r}. A 1x16-block tensor must be quantised again along the other axis"
        )
    return Quantized(q.data.t(), q.scale.t(), q.recipe, q.fmt, q.block_size, q.axis, q.tensor_scale)


# ---- the random Hadamard transform ----------------------------------------------------------------


def hadamard_matrix(n: int = HADAMARD_SIZE, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The normalised Sylvester Hadamard matrix of order ``n`` (a power of two): ``H[i, j] =
    (-1)^popcount(i & j) / sqrt(n)``, so ``H H^T = I``. The same 16x16 matrix as TE's table."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or n & (n - 1):
        raise ValueError(f"a Sylvester Hadamard matrix needs an order that is a power of two; got {n!r}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return (h / math.sqrt(n)).to(dtype)


def random_signs(n: int = HADAMARD_SIZE, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` random ±1 (float32), each with probability 1/2: the diagonal of the "random" in RHT."""
    bits = torch.randint(0, 2, (n,), generator=generator)
    return (2 * bits - 1).float()


def rht_matrix(signs: torch.Tensor | tuple[int, ...] = TE_WGRAD_SIGNS) -> torch.Tensor:
    """The random Hadamard transform ``R = diag(signs) H`` (float32), orthogonal: ``R R^T = I``.

    TE builds it in this order (``sign_matrix @ hadamard``) and applies it as ``x_block @ R``; the
    default signs are TE's fixed vector :data:`TE_WGRAD_SIGNS`; :func:`random_signs` draws others.
    """
    s = torch.as_tensor(signs, dtype=torch.float32).flatten()
    if s.numel() & (s.numel() - 1) or not bool(((s == 1) | (s == -1)).all()):
        raise ValueError(
            f"signs must be a power-of-two number of ±1 entries (16 for NVFP4); got {s.numel()} values "
            f"{s.tolist()[:4]}..."
        )
    return torch.diag(s) @ hadamard_matrix(s.numel())


def apply_rht(x: torch.Tensor, matrix: torch.Tensor | None = None, *, axis: int = -1) -> torch.Tensor:
    """Multiply each 16-element block of ``x`` along ``axis`` by ``matrix`` (``x_block @ R``).

    Applied to both inputs of a GEMM along its inner dimension, it cancels: ``(A R)(B R)^T = A R R^T
    B^T = A B^T``, so the product is unchanged (up to rounding) while the blocks that get quantised
    have their outliers spread over 16 values [NVFP4 §4.2]. In NVFP4 training it is applied to the
    wgrad GEMM's inputs ``dy^T`` and ``x^T``, along the token dimension. Computed in ``x``'s dtype
    (float32 unless float64 is given, for exact checks).
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(
            f"apply_rht expects a floating-point tensor; got {type(x).__name__} {getattr(x, 'dtype', '')}"
        )
    r = rht_matrix() if matrix is None else matrix
    n = r.shape[-1]
    if r.dim() != 2 or r.shape[0] != n:
        raise ValueError(f"matrix must be square (n, n); got shape {tuple(r.shape)}")
    if x.dim() == 0 or not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis={axis} is not a dimension of a tensor of shape {tuple(x.shape)}")
    moved = x.movedim(axis, -1)
    if moved.shape[-1] % n:
        raise ValueError(
            f"the Hadamard transform works in blocks of {n}, which do not divide axis {axis} of shape "
            f"{tuple(x.shape)} ({moved.shape[-1]}): pad it with zeros to a multiple of {n}"
        )
    blocks = moved.reshape(*moved.shape[:-1], moved.shape[-1] // n, n)
    out = (blocks @ r.to(x.dtype)).reshape(moved.shape)
    return out.movedim(-1, axis)


def block_crest_factor(x: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """``amax / rms`` of each block of ``block`` values along the last dimension (1 for a flat block,
    ``sqrt(block)`` = 4 for a single outlier among zeros; 0 for an all-zero block).

    What the Hadamard transform lowers: quantisation error grows with it, because the block scale
    follows the amax while most values sit far below it.
    """
    b = x.detach().double().reshape(*x.shape[:-1], x.shape[-1] // block, block)
    rms = b.pow(2).mean(-1).sqrt()
    amax = b.abs().amax(-1)
    return torch.where(rms > 0, amax / rms.clamp_min(1e-300), torch.zeros_like(rms))


# ---- the three GEMMs, emulated ------------------------------------------------------------------


def _as_2d(t: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dim() == 0:
        raise ValueError(f"{what} must be a tensor with at least one dimension; got {type(t).__name__}")
    return t.reshape(-1, t.shape[-1])


def fprop(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``y = x W^T`` from NVFP4 operands: ``x`` in 1x16 blocks along K, ``W`` in 16x16 tiles (float32)."""
    x2 = _as_2d(x, "x")
    y = quantize_activation(x2).dequantize() @ quantize_weight(w).dequantize().t()
    return y.reshape(*x.shape[:-1], w.shape[0])


def dgrad(
    grad_output: torch.Tensor, w: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``dx = dy W``: ``dy`` in 1x16 blocks along N, stochastic; ``W`` the same 16x16 quantisation as
    in :func:`fprop`, transposed (no re-quantisation: :func:`transpose`)."""
    g2 = _as_2d(grad_output, "grad_output")
    w_t = transpose(quantize_weight(w))  # (K, N): blocks along N, the inner dimension of this GEMM
    dx = quantize_gradient(g2, generator).dequantize() @ w_t.dequantize().t()
    return dx.reshape(*grad_output.shape[:-1], w.shape[1])


def wgrad(
    grad_output: torch.Tensor,
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    signs: torch.Tensor | tuple[int, ...] | None = TE_WGRAD_SIGNS,
) -> torch.Tensor:
    """``dW = dy^T x``: both operands transposed so that M (tokens) is the inner dimension, multiplied
    by the random Hadamard transform along M (``signs=None`` skips it), then quantised in 1x16 blocks
    along M: ``dy^T`` stochastically, ``x^T`` to nearest [NVFP4 §4.2, §4.4]. The number of tokens
    must be a multiple of 16."""
    g_t, x_t = _as_2d(grad_output, "grad_output").t(), _as_2d(x, "x").t()
    if g_t.shape[1] != x_t.shape[1]:
        raise ValueError(f"grad_output has {g_t.shape[1]} tokens and x has {x_t.shape[1]}: they must match")
    _check_divides(x_t.shape[1], "the number of tokens M (wgrad's inner dimension)")
    if signs is not None:
        r = rht_matrix(signs)
        g_t, x_t = apply_rht(g_t, r), apply_rht(x_t, r)
    return quantize_gradient(g_t, generator).dequantize() @ quantize_activation(x_t).dequantize().t()


# ---- storage ----------------------------------------------------------------------------------


def pack_e2m1(elements: torch.Tensor) -> torch.Tensor:
    """Two E2M1 codes per byte, as Blackwell's tensor cores and TE store them: element ``2i`` in the
    low nibble, ``2i + 1`` in the high one (TE ``cast_to_fp4x2``). Returns ``torch.float4_e2m1fn_x2``
    where torch has it (else uint8), shaped like ``elements`` with the last dimension halved.

    ``elements`` must hold E2M1 values (what :func:`quantize` stores); the codes come from
    :meth:`mpcourse.formats.FloatFormat.encode`.
    """
    if not isinstance(elements, torch.Tensor) or elements.dim() == 0 or elements.shape[-1] % 2:
        raise ValueError(
            "pack_e2m1 needs a tensor whose last dimension is even (two codes per byte); got shape "
            f"{tuple(getattr(elements, 'shape', ()))}"
        )
    values = elements.detach().cpu().double().numpy()
    if not (E2M1.round(values) == values).all():
        raise ValueError("pack_e2m1 needs E2M1 values (±{0, 0.5, 1, 1.5, 2, 3, 4, 6}); quantize first")
    codes = torch.from_numpy(E2M1.encode(values).astype("uint8")).to(elements.device)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    dtype = getattr(torch, "float4_e2m1fn_x2", None)
    return packed.view(dtype) if dtype is not None else packed

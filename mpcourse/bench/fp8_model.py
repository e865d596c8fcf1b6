"""A roofline model of the fp8-over-bf16 speed-up of one GEMM, from a GPU's datasheet alone.

Whether fp8 makes a matrix product faster can be measured only on a GPU with fp8 tensor cores, but
it can be *predicted* anywhere, and the prediction explains the measurement: fp8 halves the time of
a compute-bound product at best, and it adds work that bf16 does not have, the casts of both
operands from bf16 to fp8. This module is that prediction, with every assumption written down so a
page can draw it on a machine without a GPU and set it next to torchao's published points and the
course's stored measurements.

The model (the roofline of :mod:`mpcourse.bench.roofline`, Williams et al. 2009):

- a GEMM ``(M x K) @ (K x N)`` performs ``2 M K N`` FLOPs and, at best, reads each operand once and
  writes its output once; it takes ``max(FLOPs / peak, bytes / bandwidth)``, with the datasheet's
  dense peak of its precision;
- bf16 operands and output take 2 bytes per element; an fp8 GEMM reads 1-byte operands and writes
  a bf16 output, as ``torch._scaled_mm`` does in torchao's recipes;
- the fp8 product first casts both bf16 operands with *current* (tensorwise) scaling, the scaling of
  torchao's recipes: one pass reads the bf16 tensor for its amax (2 bytes per element), a second
  reads it again and writes the fp8 copy (2 + 1 bytes): 5 bytes per element, at the memory
  bandwidth, since a cast does almost no arithmetic. (Delayed scaling knows its scale before the
  cast and would skip the first pass.)

torchao's own roofline estimate, ``torchao/testing/training/roofline_utils.py`` (torchao 0.18.0),
counts a GEMM's bytes the same way and a tensorwise cast with the same two passes (writing one fp8
copy for each layout its GEMMs need). It then models a whole linear layer (three
GEMMs, each operand cast for the forward and for the backward), scales the peaks by measured
efficiencies and adds a floor for kernel launches; this module models one GEMM at the datasheet's
peaks and has no launch cost, so it is an upper bound on what fp8 can gain, and it is least accurate
for small GEMMs, whose time launches and partly idle tensor cores dominate.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .datasheets import Datasheet
from .roofline import matmul_cost, roofline_seconds

__all__ = [
    "CAST_BYTES_PER_ELEMENT",
    "cast_seconds",
    "fp8_speedup",
    "gemm_seconds",
    "has_fp8",
    "speedup_rows",
]

#: Bytes moved per element by one current-scaling cast from bf16 to fp8: the amax pass reads the bf16
#: tensor (2), the cast reads it again (2) and writes fp8 (1). Without the amax pass (delayed scaling): 3.
CAST_BYTES_PER_ELEMENT: dict[str, int] = {"current": 5, "delayed": 3}


def _require_datasheet(sheet: object) -> None:
    if not isinstance(sheet, Datasheet):
        raise TypeError(
            "sheet must be a datasheet from mpcourse.bench.datasheets.DATASHEETS (e.g. DATASHEETS['h100-sxm']), "
            f"got {type(sheet).__name__}"
        )


def _check_sheet(sheet: object, precision: str) -> float:
    """The dense peak of ``precision`` on ``sheet``, or a clear error for a sheet without one."""
    _require_datasheet(sheet)
    peak = sheet.peak_tflops(precision)
    if peak is None:
        with_fp8 = ", ".join(_fp8_keys()) or "none"
        raise ValueError(
            f"the {sheet.name} has no {precision} units, so it has no {precision} speed to model; "
            f"datasheets with fp8: {with_fp8}"
        )
    return peak


def _fp8_keys() -> list[str]:
    from .datasheets import DATASHEETS

    return [key for key, s in DATASHEETS.items() if has_fp8(s)]


def has_fp8(sheet: Datasheet) -> bool:
    """Whether the datasheet's GPU has fp8 tensor cores (a dense fp8 peak), so fp8 has a speed to model."""
    return sheet.peak_tflops("fp8") is not None


def _check_dims(m: int, k: int, n: int) -> None:
    for name, value in (("m", m), ("k", k), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"GEMM dimensions must be positive integers; got {name}={value!r}")


def gemm_seconds(m: int, k: int, n: int, precision: str, sheet: Datasheet) -> float:
    """The roofline time of ``(m x k) @ (k x n)`` in ``precision`` ("bf16" or "fp8", bf16 output)."""
    if precision not in ("bf16", "fp8"):
        raise ValueError(f"precision must be 'bf16' or 'fp8', got {precision!r}")
    _check_dims(m, k, n)
    peak = _check_sheet(sheet, precision)
    flops, nbytes = matmul_cost(m, n, k, precision, out_precision="bf16")
    return roofline_seconds(flops, nbytes, peak, sheet.bandwidth_gb_s)


def cast_seconds(elements: int, sheet: Datasheet, scaling: str = "current") -> float:
    """The time to cast ``elements`` bf16 values to fp8: memory-bound, bytes of :data:`CAST_BYTES_PER_ELEMENT`."""
    if scaling not in CAST_BYTES_PER_ELEMENT:
        raise ValueError(f"scaling must be one of {', '.join(CAST_BYTES_PER_ELEMENT)}; got {scaling!r}")
    if isinstance(elements, bool) or not isinstance(elements, int) or elements < 1:
        raise ValueError(f"elements must be a positive integer, got {elements!r}")
    _require_datasheet(sheet)
    return elements * CAST_BYTES_PER_ELEMENT[scaling] / (sheet.bandwidth_gb_s * 1e9)


def fp8_speedup(m: int, k: int, n: int, sheet: Datasheet, *, scaling: str = "current") -> float:
    """How many times faster one GEMM runs in fp8 than in bf16, casts of both operands included.

    ``bf16 time / (fp8 time + cast of the (m x k) operand + cast of the (k x n) operand)``; above 1
    fp8 wins. ``scaling="delayed"`` drops the amax pass of the casts.

    Raises:
        ValueError: for dimensions that are not positive integers, or a GPU without fp8 units.
        TypeError: for a ``sheet`` that is not a datasheet.
    """
    _check_sheet(sheet, "fp8")
    bf16 = gemm_seconds(m, k, n, "bf16", sheet)
    fp8 = gemm_seconds(m, k, n, "fp8", sheet)
    casts = cast_seconds(m * k, sheet, scaling) + cast_seconds(k * n, sheet, scaling)
    return bf16 / (fp8 + casts)


def speedup_rows(shapes: Iterable[Sequence[int]], sheets: Iterable[Datasheet]) -> list[dict[str, object]]:
    """One row per (GPU, shape): the modelled speed-up with and without the casts, and what binds.

    For a table or a figure: ``gpu``, ``M, K, N``, ``GFLOP``, ``bound`` (what limits the bf16 GEMM:
    "compute" or "memory"), ``speed-up`` (casts included) and ``GEMM only`` (casts left out). Sheets
    without fp8 units are skipped.
    """
    rows = []
    shapes = [tuple(s) for s in shapes]
    for sheet in sheets:
        if not has_fp8(sheet):
            continue
        for shape in shapes:
            if len(shape) != 3:
                raise ValueError(f"each shape must be (M, K, N), got {shape!r}")
            m, k, n = shape
            flops, nbytes = matmul_cost(m, n, k, "bf16")
            compute = flops / (sheet.peak_tflops("bf16") * 1e12)
            memory = nbytes / (sheet.bandwidth_gb_s * 1e9)
            rows.append(
                {
                    "gpu": sheet.name,
                    "M, K, N": f"{m}, {k}, {n}",
                    "GFLOP": flops / 1e9,
                    "bound": "compute" if compute >= memory else "memory",
                    "speed-up": fp8_speedup(m, k, n, sheet),
                    "GEMM only": gemm_seconds(m, k, n, "bf16", sheet) / gemm_seconds(m, k, n, "fp8", sheet),
                }
            )
    return rows

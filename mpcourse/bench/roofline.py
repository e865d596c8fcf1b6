"""The roofline model: will a lower precision make this op faster, and by how much at most?

An op that performs ``F`` floating-point operations and moves ``B`` bytes to and from memory
takes at least ``max(F / peak, B / bandwidth)`` seconds on a device with those two limits
(Williams, Waterman and Patterson, 2009). Its *arithmetic intensity* ``I = F / B`` (FLOPs per byte)
decides which limit binds: below the device's *balance point* ``peak / bandwidth`` the op is
memory-bound, above it compute-bound.

Lowering precision changes both terms. It halves ``B`` (fp32 -> bf16) or quarters it (-> fp8), so
a memory-bound op can become at most 2x or 4x faster; it raises ``peak`` (tensor cores run bf16
several times faster than fp32), which only helps ops that are compute-bound. Large matrix products
are compute-bound (their intensity grows with size); elementwise ops, norms and small products are
memory- or overhead-bound, and gain only from moving fewer bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..device import PRECISIONS
from .datasheets import Datasheet

__all__ = [
    "BYTES",
    "Roofs",
    "attainable_tflops",
    "elementwise_cost",
    "matmul_cost",
    "predicted_speedup",
    "roofline_seconds",
]

#: Bytes per element of each precision's storage format (TF32 is stored as fp32).
BYTES: dict[str, int] = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "fp8": 1}


def _bytes_of(precision: str) -> int:
    if precision not in BYTES:
        raise ValueError(f"unknown precision {precision!r}; accepted: {', '.join(BYTES)}")
    return BYTES[precision]


def matmul_cost(m: int, n: int, k: int, precision: str, out_precision: str | None = None) -> tuple[int, int]:
    """(FLOPs, bytes) of ``(m x k) @ (k x n)``: ``2mnk`` FLOPs; both operands read and the result
    written once each (the best case, which large products approach thanks to on-chip reuse).

    ``out_precision`` is the result's precision (default: the operands'; fp8 products write bf16).
    """
    if min(m, n, k) < 1:
        raise ValueError(f"matrix dimensions must be positive, got m={m}, n={n}, k={k}")
    out = out_precision or ("bf16" if precision == "fp8" else precision)
    return 2 * m * n * k, (m * k + k * n) * _bytes_of(precision) + m * n * _bytes_of(out)


def elementwise_cost(
    elements: int, precision: str, *, inputs: int = 2, outputs: int = 1, flops_per_element: int = 1
) -> tuple[int, int]:
    """(FLOPs, bytes) of an elementwise op, e.g. ``z = x + y``: 1 FLOP and 3 tensors per element."""
    if elements < 1 or inputs < 0 or outputs < 1 or flops_per_element < 0:
        raise ValueError("need elements >= 1, inputs >= 0, outputs >= 1 and flops_per_element >= 0")
    return elements * flops_per_element, elements * (inputs + outputs) * _bytes_of(precision)


@dataclass(frozen=True)
class Roofs:
    """A device's two limits: peak TFLOP/s per precision and memory bandwidth in GB/s.

    Built from a datasheet (:meth:`from_datasheet`) or from measurements on this machine
    (the best rate a matrix product reached per precision, and a copy's bandwidth).
    """

    name: str
    peak_tflops: Mapping[str, float]
    bandwidth_gb_s: float
    source: str

    def __post_init__(self) -> None:
        if self.bandwidth_gb_s <= 0 or any(v <= 0 for v in self.peak_tflops.values()):
            raise ValueError("peaks and bandwidth must be positive")
        unknown = set(self.peak_tflops) - set(PRECISIONS)
        if unknown:
            raise ValueError(f"unknown precisions {sorted(unknown)}; accepted: {', '.join(PRECISIONS)}")

    @classmethod
    def from_datasheet(cls, sheet: Datasheet) -> Roofs:
        return cls(sheet.name, sheet.dense_tflops, sheet.bandwidth_gb_s, f"datasheet ({sheet.source})")

    def peak(self, precision: str) -> float:
        if precision not in self.peak_tflops:
            known = ", ".join(self.peak_tflops) or "none"
            raise KeyError(f"{self.name} has no peak for {precision!r}; it has: {known}")
        return self.peak_tflops[precision]

    def balance_point(self, precision: str) -> float:
        """FLOPs per byte above which an op in ``precision`` is compute-bound on this device."""
        return self.peak(precision) * 1e12 / (self.bandwidth_gb_s * 1e9)


def roofline_seconds(flops: float, nbytes: float, peak_tflops: float, bandwidth_gb_s: float) -> float:
    """The roofline's lower bound on the time of an op: ``max(flops / peak, bytes / bandwidth)``."""
    if peak_tflops <= 0 or bandwidth_gb_s <= 0:
        raise ValueError("peak and bandwidth must be positive")
    return max(flops / (peak_tflops * 1e12), nbytes / (bandwidth_gb_s * 1e9))


def attainable_tflops(intensity: float, peak_tflops: float, bandwidth_gb_s: float) -> float:
    """The roofline itself: ``min(peak, intensity * bandwidth)`` in TFLOP/s."""
    return min(peak_tflops, intensity * bandwidth_gb_s * 1e9 / 1e12)


def predicted_speedup(costs: Mapping[str, tuple[float, float]], roofs: Roofs, slow: str, fast: str) -> float:
    """How many times faster the roofline says an op runs in ``fast`` than in ``slow`` precision.

    ``costs`` maps each precision to the op's (FLOPs, bytes) in it, e.g. from :func:`matmul_cost`.
    """
    times = {p: roofline_seconds(*costs[p], roofs.peak(p), roofs.bandwidth_gb_s) for p in (slow, fast)}
    return times[slow] / times[fast]

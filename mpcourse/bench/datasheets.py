"""Vendor datasheet peaks of the GPUs learners meet, as data: what "% of peak" is measured against.

Every figure is the one printed in NVIDIA's datasheet of that GPU (the ``source`` key names it in
``book/references.bib``). Since Ampere, NVIDIA datasheets print tensor-core figures *with 2:4
structured sparsity* (marked with an asterisk; "specifications 1/2 lower without sparsity"), which
ordinary dense matrix products never use. This table keeps the printed figure and a flag saying
whether it is a sparse one, and :attr:`Datasheet.dense_tflops` halves those: dense peaks are what a
``torch.matmul`` can approach. The T4 (Turing) has no sparsity feature: its figures are dense as
printed.

A GPU missing from the table, or a variant with different clocks (the PCIe and NVL cards run
lower than the SXM modules listed here), gets no datasheet: :func:`lookup` returns None and the
benchmarks use the best rate measured on the device as the reference instead, and say so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..device import PRECISIONS, Capabilities

__all__ = ["DATASHEETS", "Datasheet", "for_device", "lookup", "table"]


@dataclass(frozen=True)
class Datasheet:
    """One GPU's datasheet peaks.

    ``printed_tflops`` maps a precision (``fp32``, ``tf32``, ``fp16``, ``bf16``, ``fp8``) to the
    TFLOP/s the datasheet prints; a precision the GPU has no units for is absent. ``sparse`` names
    the precisions whose printed figure assumes 2:4 sparsity. ``pattern`` is a regular expression
    matched against the name CUDA reports (``torch.cuda.get_device_name()``).
    """

    key: str
    name: str
    pattern: str
    printed_tflops: dict[str, float]
    sparse: frozenset[str]
    bandwidth_gb_s: float
    memory_gb: float
    source: str
    note: str = ""
    compute_capability: tuple[int, int] = (0, 0)
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        unknown = set(self.printed_tflops) - set(PRECISIONS)
        if unknown or not self.sparse <= set(self.printed_tflops):
            raise ValueError(f"{self.key}: precisions must be among {PRECISIONS}, got {sorted(unknown | self.sparse)}")
        object.__setattr__(self, "_regex", re.compile(self.pattern, re.IGNORECASE))

    @property
    def dense_tflops(self) -> dict[str, float]:
        """Dense peak TFLOP/s per precision: the printed figure, halved where it was a sparse one."""
        return {p: v / 2 if p in self.sparse else v for p, v in self.printed_tflops.items()}

    def peak_tflops(self, precision: str) -> float | None:
        """Dense peak for ``precision``, or None when this GPU has no units for it."""
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; accepted: {', '.join(PRECISIONS)}")
        return self.dense_tflops.get(precision)

    @property
    def balance_point(self) -> dict[str, float]:
        """FLOPs per byte of memory traffic at which each precision's peak is reached (peak / bandwidth)."""
        return {p: v * 1e12 / (self.bandwidth_gb_s * 1e9) for p, v in self.dense_tflops.items()}

    def matches(self, device_name: str) -> bool:
        return bool(self._regex.search(device_name))


_TENSOR = frozenset({"tf32", "fp16", "bf16", "fp8"})

#: The GPUs of Colab (T4, L4, A100) and of datacenters (H100, H200), SXM modules where there are variants.
DATASHEETS: dict[str, Datasheet] = {
    d.key: d
    for d in (
        Datasheet(
            key="t4",
            name="NVIDIA T4",
            pattern=r"\bT4\b",
            printed_tflops={"fp32": 8.1, "fp16": 65.0},
            sparse=frozenset(),
            bandwidth_gb_s=320.0,
            memory_gb=16.0,
            source="nvidia-t4-datasheet",
            note="Turing: fp16 tensor cores ('mixed precision', fp16 inputs with fp32 accumulation); "
            "no TF32, bf16 or fp8 units; no sparsity feature, so the figures are dense",
            compute_capability=(7, 5),
        ),
        Datasheet(
            key="l4",
            name="NVIDIA L4",
            pattern=r"\bL4\b",
            printed_tflops={"fp32": 30.3, "tf32": 120.0, "fp16": 242.0, "bf16": 242.0, "fp8": 485.0},
            sparse=_TENSOR,
            bandwidth_gb_s=300.0,
            memory_gb=24.0,
            source="nvidia-l4-datasheet",
            note="the datasheet marks every tensor-core figure 'with sparsity', as the H100's does; "
            "halved here (checked against copies of the datasheet, not a measurement on an L4)",
            compute_capability=(8, 9),
        ),
        Datasheet(
            key="a100-sxm-80gb",
            name="NVIDIA A100 SXM 80GB",
            pattern=r"A100.*SXM.*80\s*GB",
            printed_tflops={"fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0},
            sparse=frozenset(),
            bandwidth_gb_s=2039.0,
            memory_gb=80.0,
            source="nvidia-a100-datasheet",
            note="the A100 datasheet prints dense and sparse figures side by side; these are the dense ones",
            compute_capability=(8, 0),
        ),
        Datasheet(
            key="a100-sxm-40gb",
            name="NVIDIA A100 SXM 40GB",
            pattern=r"A100.*SXM.*40\s*GB",
            printed_tflops={"fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0},
            sparse=frozenset(),
            bandwidth_gb_s=1555.0,
            memory_gb=40.0,
            source="nvidia-a100-datasheet",
            note="Colab's A100; same compute as the 80 GB module, slower HBM2",
            compute_capability=(8, 0),
        ),
        Datasheet(
            key="h100-sxm",
            name="NVIDIA H100 SXM",
            pattern=r"H100(?!.*(PCIe|NVL)).*(SXM|HBM3)",
            printed_tflops={"fp32": 67.0, "tf32": 989.0, "fp16": 1979.0, "bf16": 1979.0, "fp8": 3958.0},
            sparse=_TENSOR,
            bandwidth_gb_s=3350.0,
            memory_gb=80.0,
            source="nvidia-h100-datasheet",
            note="tensor-core figures printed with sparsity ('1/2 lower without'); the PCIe and NVL "
            "cards have lower clocks and are not this entry",
            compute_capability=(9, 0),
        ),
        Datasheet(
            key="h200-sxm",
            name="NVIDIA H200 SXM",
            pattern=r"(?<!G)H200(?!.*NVL)",
            printed_tflops={"fp32": 67.0, "tf32": 989.0, "fp16": 1979.0, "bf16": 1979.0, "fp8": 3958.0},
            sparse=_TENSOR,
            bandwidth_gb_s=4800.0,
            memory_gb=141.0,
            source="nvidia-h200-datasheet",
            note="the H100's compute with more and faster memory (HBM3e); tensor-core figures printed with sparsity",
            compute_capability=(9, 0),
        ),
    )
}


def lookup(device_name: str) -> Datasheet | None:
    """The datasheet whose pattern matches a CUDA device name, or None for a GPU not in the table."""
    if not isinstance(device_name, str):
        raise TypeError(f"device_name must be a string such as 'NVIDIA H100 80GB HBM3', got {type(device_name).__name__}")
    found = [d for d in DATASHEETS.values() if d.matches(device_name)]
    if len(found) > 1:
        raise RuntimeError(f"{device_name!r} matches several datasheets: {[d.key for d in found]}")
    return found[0] if found else None


def for_device(caps: Capabilities) -> Datasheet | None:
    """The datasheet of a CUDA device (None for CPUs, Apple GPUs and GPUs not in the table)."""
    return lookup(caps.name) if caps.kind == "cuda" and not caps.is_rocm else None


def table() -> list[dict[str, object]]:
    """Rows for a printed table: dense peak per precision, bandwidth, balance points, source."""
    rows = []
    for d in DATASHEETS.values():
        dense = d.dense_tflops
        rows.append(
            {
                "gpu": d.name,
                **{f"{p} TFLOP/s": dense.get(p) for p in PRECISIONS},
                "bandwidth GB/s": d.bandwidth_gb_s,
                "bf16 balance FLOP/B": round(d.balance_point["bf16"]) if "bf16" in dense else None,
                "sparse figures halved": ", ".join(p for p in PRECISIONS if p in d.sparse) or "none",
                "source": d.source,
            }
        )
    return rows

"""Vendor datasheet peaks of the GPUs learners meet: what "% of peak" is measured against.

The figures live in :data:`mpcourse.gpus.GPUS`, the course's one table of GPUs (it also defines
the device presets): each row keeps the figure its datasheet prints (the ``source`` key names the
datasheet in ``book/references.bib``) and says which printed figures assume 2:4 structured
sparsity, which :attr:`~mpcourse.gpus.GPU.dense_tflops` halves. This module is the benchmarks'
view of that table: :data:`DATASHEETS` by datasheet key, and :func:`lookup` from the name CUDA
reports.

A GPU missing from the table, or a variant with different clocks (the PCIe and NVL cards run
lower than the SXM modules listed), gets no datasheet: :func:`lookup` returns None and the
benchmarks use the best rate measured on the device as the reference instead, and say so.
"""

from __future__ import annotations

from ..device import Capabilities
from ..gpus import GPU, GPUS, PRECISIONS

__all__ = ["DATASHEETS", "Datasheet", "for_device", "lookup", "table"]

#: One GPU's datasheet: a row of :data:`mpcourse.gpus.GPUS`.
Datasheet = GPU

#: The GPUs of :data:`mpcourse.gpus.GPUS` by datasheet key (``"h100-sxm"``, ``"a100-sxm-80gb"``, ...).
DATASHEETS: dict[str, Datasheet] = {gpu.key: gpu for gpu in GPUS}


def lookup(device_name: str) -> Datasheet | None:
    """The datasheet whose pattern matches a CUDA device name, or None for a GPU not in the table."""
    if not isinstance(device_name, str):
        raise TypeError(
            f"device_name must be a string such as 'NVIDIA H100 80GB HBM3', got {type(device_name).__name__}"
        )
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

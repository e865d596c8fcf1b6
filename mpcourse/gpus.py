"""The GPUs the course knows, as data: one row per GPU, read by :mod:`mpcourse.device` and :mod:`mpcourse.bench`.

Every chapter that says what a T4, an A100 or an H100 would do reads it from :data:`GPUS`: the
device presets (:data:`mpcourse.device.PRESETS`, "pretend to be an H100") and the datasheet peaks
that benchmarks measure "% of peak" against (:data:`mpcourse.bench.datasheets.DATASHEETS`) are two
views of these rows, so the two cannot disagree.

Where each column comes from:

- ``compute_capability``: NVIDIA's list of CUDA GPUs (``nvidia-cuda-gpus`` in ``book/references.bib``);
- ``memory_gb``, ``bandwidth_gb_s`` and ``printed_tflops``: the GPU's datasheet (its ``source`` key);
- ``cuda_name``: what ``torch.cuda.get_device_name()`` reports on that GPU; ``pattern`` is the
  regular expression that recognises it (and not its PCIe or NVL variants, which run lower clocks).

Since Ampere, NVIDIA datasheets print tensor-core figures *with 2:4 structured sparsity* (marked
with an asterisk; "specifications 1/2 lower without sparsity"), which ordinary dense matrix
products never use. A row keeps the printed figure and names the precisions whose figure is a
sparse one in ``sparse``; :attr:`GPU.dense_tflops` halves those, since dense peaks are what a
``torch.matmul`` can approach. The T4 (Turing) has no sparsity feature: its figures are dense as
printed. The A100 datasheet prints dense and sparse figures side by side; the rows keep the dense.

A precision has a printed figure exactly where the GPU has units for it (the *native* precisions),
and which units an NVIDIA GPU has follows from its compute capability (:func:`native_precisions`);
every row is checked against that rule when this module is imported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "ARCHITECTURES",
    "COMPUTE_CAPABILITY_SOURCE",
    "GPU",
    "GPUS",
    "PRECISIONS",
    "native_precisions",
    "one_per_generation",
]

#: Precisions the course reports on, in the order they are shown.
PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "fp16", "bf16", "fp8")

#: The bibliography key of the compute capabilities.
COMPUTE_CAPABILITY_SOURCE = "nvidia-cuda-gpus"

#: Architecture names by compute capability, from NVIDIA's list of CUDA GPUs (``nvidia-cuda-gpus``).
ARCHITECTURES: dict[tuple[int, int], str] = {
    (7, 0): "Volta",
    (7, 5): "Turing",
    (8, 0): "Ampere",
    (8, 9): "Ada",
    (9, 0): "Hopper",
    (10, 0): "Blackwell",
}

#: The architecture that added each precision's units: fp16 tensor cores with Volta (sm_70), TF32 and
#: bf16 with Ampere (sm_80), fp8 with Ada (sm_89). fp32 runs on the CUDA cores of every GPU.
_ADDED_IN: dict[str, tuple[int, int]] = {
    "fp32": (0, 0),
    "fp16": (7, 0),
    "tf32": (8, 0),
    "bf16": (8, 0),
    "fp8": (8, 9),
}


def native_precisions(compute_capability: tuple[int, int]) -> frozenset[str]:
    """The precisions an NVIDIA GPU of this compute capability has units for (fp32 always)."""
    return frozenset(p for p in PRECISIONS if compute_capability >= _ADDED_IN[p])


@dataclass(frozen=True)
class GPU:
    """One GPU: what CUDA calls it, its compute capability, memory, and its datasheet's peaks.

    ``key`` names the datasheet entry (``"h100-sxm"``), ``preset`` the device preset
    (``mpcourse.device.capabilities(preset="h100")``). ``printed_tflops`` maps a precision to the
    TFLOP/s the datasheet prints; a precision the GPU has no units for is absent. ``sparse`` names
    the precisions whose printed figure assumes 2:4 sparsity.
    """

    key: str
    preset: str
    name: str
    cuda_name: str
    pattern: str
    compute_capability: tuple[int, int]
    memory_gb: float
    bandwidth_gb_s: float
    printed_tflops: Mapping[str, float]
    sparse: frozenset[str]
    source: str
    note: str = ""
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        unknown = set(self.printed_tflops) - set(PRECISIONS)
        if unknown or not self.sparse <= set(self.printed_tflops):
            raise ValueError(
                f"{self.key}: precisions must be among {PRECISIONS} (and sparse ones among those printed); "
                f"got {sorted(unknown | self.sparse)}"
            )
        # Read-only, like the rest of the row (two rows may share one table of peaks).
        object.__setattr__(self, "printed_tflops", MappingProxyType(dict(self.printed_tflops)))
        object.__setattr__(self, "_regex", re.compile(self.pattern, re.IGNORECASE))

    @property
    def sm(self) -> str:
        """The compute capability as NVIDIA's ``sm_XY`` architecture name."""
        return "sm_{}{}".format(*self.compute_capability)

    @property
    def architecture(self) -> str:
        """The architecture's name (``"Hopper"``), from :data:`ARCHITECTURES`; ``sm_XY`` if not listed."""
        return ARCHITECTURES.get(self.compute_capability, self.sm)

    @property
    def native(self) -> frozenset[str]:
        """The precisions this GPU has units for: those with a datasheet figure."""
        return frozenset(self.printed_tflops)

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
        """Whether a name CUDA reports (``torch.cuda.get_device_name()``) is this GPU."""
        return bool(self._regex.search(device_name))


_TENSOR = frozenset({"tf32", "fp16", "bf16", "fp8"})
#: Printed peaks shared by two modules: the A100's (dense as printed) and Hopper's (H100 and H200 SXM,
#: tensor cores printed with sparsity). The modules differ in memory only.
_A100_TFLOPS = {"fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0}
_HOPPER_TFLOPS = {"fp32": 67.0, "tf32": 989.0, "fp16": 1979.0, "bf16": 1979.0, "fp8": 3958.0}

#: The GPUs of Colab (T4, L4, A100) and of datacenters (V100, H100, H200, B200), SXM modules where there are variants.
#: Positional columns: datasheet key, preset, datasheet name, CUDA name, name pattern, compute capability.
GPUS: tuple[GPU, ...] = (
    GPU(
        "v100-sxm2-32gb",
        "v100",
        "NVIDIA V100 SXM2 32GB",
        "Tesla V100-SXM2-32GB",
        r"V100.*SXM2.*32\s*GB",
        (7, 0),
        memory_gb=32.0,
        bandwidth_gb_s=900.0,
        printed_tflops={"fp32": 15.7, "fp16": 125.0},
        sparse=frozenset(),
        source="nvidia-v100-datasheet",
        note="Volta: the first tensor cores, fp16 inputs with fp32 accumulation; no TF32, bf16 or fp8 units; "
        "no sparsity feature, so the figures are dense",
    ),
    GPU(
        "t4",
        "t4",
        "NVIDIA T4",
        "Tesla T4",
        r"\bT4\b",
        (7, 5),
        memory_gb=16.0,
        bandwidth_gb_s=320.0,
        printed_tflops={"fp32": 8.1, "fp16": 65.0},
        sparse=frozenset(),
        source="nvidia-t4-datasheet",
        note="Turing: fp16 tensor cores ('mixed precision', fp16 inputs with fp32 accumulation); "
        "no TF32, bf16 or fp8 units; no sparsity feature, so the figures are dense",
    ),
    GPU(
        "l4",
        "l4",
        "NVIDIA L4",
        "NVIDIA L4",
        r"\bL4\b",
        (8, 9),
        memory_gb=24.0,
        bandwidth_gb_s=300.0,
        printed_tflops={"fp32": 30.3, "tf32": 120.0, "fp16": 242.0, "bf16": 242.0, "fp8": 485.0},
        sparse=_TENSOR,
        source="nvidia-l4-datasheet",
        note="the datasheet marks every tensor-core figure 'with sparsity', as the H100's does; "
        "halved here (checked against copies of the datasheet, not a measurement on an L4)",
    ),
    GPU(
        "a100-sxm-80gb",
        "a100",
        "NVIDIA A100 SXM 80GB",
        "NVIDIA A100-SXM4-80GB",
        r"A100.*SXM.*80\s*GB",
        (8, 0),
        memory_gb=80.0,
        bandwidth_gb_s=2039.0,
        printed_tflops=_A100_TFLOPS,
        sparse=frozenset(),
        source="nvidia-a100-datasheet",
        note="the A100 datasheet prints dense and sparse figures side by side; these are the dense ones",
    ),
    GPU(
        "a100-sxm-40gb",
        "a100_40gb",
        "NVIDIA A100 SXM 40GB",
        "NVIDIA A100-SXM4-40GB",
        r"A100.*SXM.*40\s*GB",
        (8, 0),
        memory_gb=40.0,
        bandwidth_gb_s=1555.0,
        printed_tflops=_A100_TFLOPS,
        sparse=frozenset(),
        source="nvidia-a100-datasheet",
        note="Colab's A100; same compute as the 80 GB module, slower HBM2",
    ),
    GPU(
        "h100-sxm",
        "h100",
        "NVIDIA H100 SXM",
        "NVIDIA H100 80GB HBM3",
        r"H100(?!.*(PCIe|NVL)).*(SXM|HBM3)",
        (9, 0),
        memory_gb=80.0,
        bandwidth_gb_s=3350.0,
        printed_tflops=_HOPPER_TFLOPS,
        sparse=_TENSOR,
        source="nvidia-h100-datasheet",
        note="tensor-core figures printed with sparsity ('1/2 lower without'); the PCIe and NVL "
        "cards have lower clocks and are not this entry",
    ),
    GPU(
        "h200-sxm",
        "h200",
        "NVIDIA H200 SXM",
        "NVIDIA H200",
        r"(?<!G)H200(?!.*NVL)",
        (9, 0),
        memory_gb=141.0,
        bandwidth_gb_s=4800.0,
        printed_tflops=_HOPPER_TFLOPS,
        sparse=_TENSOR,
        source="nvidia-h200-datasheet",
        note="the H100's compute with more and faster memory (HBM3e); tensor-core figures printed with sparsity",
    ),
    GPU(
        "b200-hgx",
        "b200",
        "NVIDIA B200 (HGX)",
        "NVIDIA B200",
        r"(?<![A-Z])B200\b",
        (10, 0),
        memory_gb=180.0,
        bandwidth_gb_s=7700.0,
        printed_tflops={"fp32": 75.0, "tf32": 2200.0, "fp16": 4500.0, "bf16": 4500.0, "fp8": 9000.0},
        sparse=_TENSOR,
        source="nvidia-hgx-b200",
        note="Blackwell, as one GPU of an HGX B200 (up to 1,000 W); tensor-core figures printed with sparsity; "
        "it also computes in FP6 and FP4 (18 PFLOPS printed, with sparsity), which this table has no column for; "
        "a GB200's GPUs run at other clocks and are not this entry",
    ),
)


def _check(rows: tuple[GPU, ...]) -> None:
    """Each row's datasheet figures cover exactly its architecture's units; keys, presets and names are unique."""
    for g in rows:
        expected = native_precisions(g.compute_capability)
        if g.native != expected:
            raise ValueError(
                f"{g.key}: the datasheet figures cover {sorted(g.native)}, but an {g.sm} GPU has units for "
                f"{sorted(expected)}"
            )
        if not g.matches(g.cuda_name):
            raise ValueError(f"{g.key}: pattern {g.pattern!r} does not match its CUDA name {g.cuda_name!r}")
    for column in ("key", "preset", "cuda_name"):
        values = [getattr(g, column) for g in rows]
        if len(set(values)) != len(values):
            raise ValueError(f"two GPUs share a {column}: {values}")


_check(GPUS)


def one_per_generation() -> list[GPU]:
    """One GPU for each distinct compute capability and set of peaks, oldest first: the rows a
    comparison across generations needs (the H200, which has the H100's compute, is left out)."""
    shown: dict[tuple[tuple[int, int], tuple[tuple[str, float], ...]], GPU] = {}
    for gpu in sorted(GPUS, key=lambda g: g.compute_capability):
        shown.setdefault((gpu.compute_capability, tuple(sorted(gpu.dense_tflops.items()))), gpu)
    return list(shown.values())

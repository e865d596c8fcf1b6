"""What the current machine can do for mixed precision, and what it would do elsewhere.

Every chapter adapts to the hardware it finds: a T4 has fp16 tensor cores but only emulates
bf16, an A100 adds bf16 and TF32 but has no fp8 units, an L4 or H100 runs fp8 natively, and a
laptop CPU may have none of these. :func:`capabilities` reads that from the machine (or from a
named *preset*, so a test or a "what would happen on an H100?" cell can pretend), and
:func:`precision_support` turns it into a verdict per precision: ``native``, ``emulated`` or
``unavailable``, each with the reason.

The T4 trap: ``torch.cuda.is_bf16_supported()`` returns True on a T4 because bf16 arithmetic is
emulated there; only ``is_bf16_supported(including_emulation=False)`` (or the compute
capability, >= 8.0) says whether bf16 tensor cores exist. This module relies on the compute
capability.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch

from . import gpus
from .gpus import PRECISIONS

__all__ = [
    "CPU_FLAGS_OF_INTEREST",
    "PRECISIONS",
    "PRESETS",
    "Capabilities",
    "Kind",
    "Status",
    "Support",
    "capabilities",
    "cpu_threads",
    "precision_support",
]

Kind = Literal["cpu", "cuda", "mps"]
Status = Literal["native", "emulated", "unavailable"]

#: CPU instruction-set flags (as Linux spells them in /proc/cpuinfo) that matter for low precision.
CPU_FLAGS_OF_INTEREST: tuple[str, ...] = (
    "avx2",
    "avx512f",
    "avx512_bf16",
    "avx512_fp16",
    "amx_bf16",
    "amx_fp16",
)


@dataclass(frozen=True)
class Capabilities:
    """A snapshot of one compute device, real or pretended.

    ``compute_capability`` is the CUDA (major, minor) pair, None elsewhere. The ``*_native``
    fields say whether the hardware has units that run that precision fast (tensor cores on
    GPUs, AVX512-BF16/AMX on CPUs); a precision without them may still run, emulated and slower.
    """

    kind: Kind
    name: str
    compute_capability: tuple[int, int] | None = None
    memory_bytes: int | None = None
    fp16_native: bool = False
    bf16_native: bool = False
    tf32: bool = False
    fp8_native: bool = False
    cpu_flags: frozenset[str] = field(default_factory=frozenset)
    is_rocm: bool = False
    preset: str | None = None

    @property
    def sm(self) -> str | None:
        """The compute capability as NVIDIA's ``sm_XY`` architecture name (None off CUDA)."""
        if self.compute_capability is None:
            return None
        major, minor = self.compute_capability
        return f"sm_{major}{minor}"

    def describe(self) -> str:
        """One line naming the device, e.g. ``cuda: NVIDIA L4 (sm_89, 24.0 GB)``."""
        details = [d for d in (self.sm, _format_bytes(self.memory_bytes)) if d]
        if self.kind == "cpu":
            flags = sorted(f for f in self.cpu_flags if f != "avx2") or (
                ["avx2"] if "avx2" in self.cpu_flags else []
            )
            details.append("flags: " + (", ".join(flags) if flags else "none of interest"))
        text = f"{self.kind}: {self.name}"
        if details:
            text += f" ({'; '.join(details)})"
        if self.preset:
            text += f" [preset '{self.preset}', not this machine]"
        return text


@dataclass(frozen=True)
class Support:
    """How one precision runs on a device, and why."""

    status: Status
    reason: str


def _format_bytes(n: int | None) -> str | None:
    return None if n is None else f"{n / 1e9:.1f} GB"


def _gpu_preset(gpu: gpus.GPU) -> Capabilities:
    """The capabilities of one row of :data:`mpcourse.gpus.GPUS`, named as CUDA names that GPU."""
    return Capabilities(
        kind="cuda",
        name=gpu.cuda_name,
        compute_capability=gpu.compute_capability,
        memory_bytes=int(gpu.memory_gb * 1e9),
        fp16_native="fp16" in gpu.native,
        bf16_native="bf16" in gpu.native,
        tf32="tf32" in gpu.native,
        fp8_native="fp8" in gpu.native,
        preset=gpu.preset,
    )


#: Devices a chapter can pretend to be: two CPUs, and every GPU of :data:`mpcourse.gpus.GPUS`
#: (compute capabilities from NVIDIA's CUDA GPU list, memory from the datasheets).
PRESETS: dict[str, Capabilities] = {
    "cpu": Capabilities(kind="cpu", name="x86-64 CPU with AVX2", cpu_flags=frozenset({"avx2"}), preset="cpu"),
    "cpu_amx": Capabilities(
        kind="cpu",
        name="x86-64 CPU with AMX (e.g. Intel Sapphire Rapids)",
        cpu_flags=frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16"}),
        bf16_native=True,
        fp16_native=True,
        preset="cpu_amx",
    ),
    **{gpu.preset: _gpu_preset(gpu) for gpu in gpus.GPUS},
}


def _read_cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU flags of interest, read from /proc/cpuinfo on Linux (empty elsewhere)."""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return frozenset(flag for flag in CPU_FLAGS_OF_INTEREST if flag in present)
    except OSError:
        pass
    return frozenset()


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def _detect(kind: str | None) -> Capabilities:
    want = kind or ("cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu")
    if want == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("kind='cuda' was asked for, but torch sees no CUDA device on this machine")
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        cc = (props.major, props.minor)
        rocm = torch.version.hip is not None
        arch = getattr(props, "gcnArchName", "") if rocm else ""
        units = gpus.native_precisions(cc)
        return Capabilities(
            kind="cuda",
            name=props.name,
            compute_capability=None if rocm else cc,
            memory_bytes=int(props.total_memory),
            fp16_native=True if rocm else "fp16" in units,
            # torch's answer without emulation; on NVIDIA it is the compute-capability rule (sm_80+).
            bf16_native=torch.cuda.is_bf16_supported(including_emulation=False) if not rocm else True,
            tf32=False if rocm else "tf32" in units,
            # MI300 (gfx942) and MI350 (gfx950) have fp8 matrix units; NVIDIA from Ada (sm_89) on.
            fp8_native=arch.startswith(("gfx942", "gfx950")) if rocm else "fp8" in units,
            is_rocm=rocm,
        )
    if want == "mps":
        if not _mps_available():
            raise RuntimeError(
                "kind='mps' was asked for, but torch sees no Apple-silicon GPU on this machine"
            )
        return Capabilities(kind="mps", name="Apple GPU (MPS)", fp16_native=True)
    if want == "cpu":
        flags = _read_cpu_flags()
        return Capabilities(
            kind="cpu",
            name=_cpu_name(),
            cpu_flags=flags,
            bf16_native=bool(flags & {"avx512_bf16", "amx_bf16"}),
            fp16_native=bool(flags & {"avx512_fp16", "amx_fp16"}),
        )
    raise ValueError(f"unknown device kind {kind!r}; accepted: 'cpu', 'cuda', 'mps' (or None to detect)")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def capabilities(preset: str | None = None, *, kind: str | None = None) -> Capabilities:
    """Describe this machine's best device, or pretend to be a known one.

    Args:
        preset: one of :data:`PRESETS` (``"cpu"``, ``"cpu_amx"``, ``"v100"``, ``"t4"``, ``"l4"``, ``"a100"``,
            ``"a100_40gb"``, ``"h100"``, ``"h200"``, ``"b200"``) to describe that device instead of this
            machine. The environment variable ``MPCOURSE_DEVICE_PRESET`` sets a default.
        kind: detect a specific device kind on this machine (``"cpu"``, ``"cuda"``, ``"mps"``)
            instead of the best available one.

    Raises:
        ValueError: for an unknown preset or kind, listing the accepted names.
    """
    preset = preset if preset is not None else os.environ.get("MPCOURSE_DEVICE_PRESET") or None
    if preset is not None:
        key = preset.lower()
        if key not in PRESETS:
            raise ValueError(f"unknown device preset {preset!r}; accepted: {', '.join(sorted(PRESETS))}")
        return PRESETS[key]
    return _detect(kind)


def precision_support(caps: Capabilities | None = None) -> dict[str, Support]:
    """For each precision in :data:`PRECISIONS`, whether it runs natively, emulated, or not at all."""
    caps = caps or capabilities()
    if caps.kind == "cuda":
        return _cuda_support(caps)
    if caps.kind == "mps":
        return {
            "fp32": Support("native", "the GPU's default precision"),
            "tf32": Support("unavailable", "TF32 is an NVIDIA tensor-core mode (Ampere, sm_80, and later)"),
            "fp16": Support("native", "Apple GPUs compute in fp16 at full speed"),
            "bf16": Support("emulated", "PyTorch accepts bf16 on MPS, but the speed depends on the chip"),
            "fp8": Support("emulated", "no fp8 on MPS: the course quantises in fp8 and computes in fp32"),
        }
    return _cpu_support(caps)


def _cuda_support(caps: Capabilities) -> dict[str, Support]:
    sm = caps.sm or "ROCm"
    out = {"fp32": Support("native", "CUDA cores")}
    out["tf32"] = (
        Support("native", f"tensor cores run TF32 on {sm} (Ampere and later)")
        if caps.tf32
        else Support(
            "unavailable", f"TF32 needs Ampere (sm_80) or later; this is {sm}: fp32 matmuls stay fp32"
        )
    )
    out["fp16"] = (
        Support("native", f"fp16 tensor cores on {sm}")
        if caps.fp16_native
        else Support("emulated", f"{sm} has no tensor cores: fp16 runs, without the tensor-core speed-up")
    )
    out["bf16"] = (
        Support("native", f"bf16 tensor cores on {sm} (Ampere and later)")
        if caps.bf16_native
        else Support(
            "emulated",
            f"{sm} has no bf16 tensor cores: bf16 runs emulated and slowly, even though "
            "torch.cuda.is_bf16_supported() returns True; use fp16 with a loss scaler here",
        )
    )
    out["fp8"] = (
        Support("native", f"fp8 tensor cores on {sm} (Ada sm_89, Hopper sm_90 and later)")
        if caps.fp8_native
        else Support(
            "emulated",
            f"fp8 matmuls need Ada (sm_89) or Hopper (sm_90); on {sm} the course quantises to fp8 "
            "and multiplies in higher precision",
        )
    )
    return out


def _cpu_support(caps: Capabilities) -> dict[str, Support]:
    flags = caps.cpu_flags
    bf16_units = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    fp16_units = [f for f in ("amx_fp16", "avx512_fp16") if f in flags]
    return {
        "fp32": Support("native", "the CPU's vector units"),
        "tf32": Support("unavailable", "TF32 is an NVIDIA tensor-core mode; CPU fp32 matmuls stay fp32"),
        "fp16": (
            Support("native", f"the CPU has {' and '.join(fp16_units)}")
            if caps.fp16_native
            else Support(
                "emulated", "no fp16 arithmetic units: autocast works, but converts to fp32 to compute"
            )
        ),
        "bf16": (
            Support("native", f"the CPU has {' and '.join(bf16_units)}")
            if caps.bf16_native
            else Support("emulated", "no AVX512-BF16 or AMX: bf16 works, but converts to fp32 to compute")
        ),
        "fp8": Support(
            "emulated",
            "PyTorch's CPU kernels do not compute in fp8 (a few new Arm and Intel CPUs have fp8"
            " instructions): the course quantises in fp8 and computes in fp32",
        ),
    }


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` (None: unchanged), then restore the setting.

    On tensors as small as the course's toy models, coordinating CPU threads costs more than it
    saves (on a busy machine, much more); results do not depend on the thread count.
    """
    if n is None:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)

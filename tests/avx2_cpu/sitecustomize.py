"""Make this Python see a CPU without bf16 or fp16 units (used by tests/test_emulated_cpu.py).

Python imports ``sitecustomize`` at start-up from the path, so putting this folder on PYTHONPATH
reaches the Jupyter kernels that run the chapters. It hides the AVX-512 and AMX flags from
mpcourse's detection; the environment variable ONEDNN_MAX_CPU_ISA=AVX2 does the same for oneDNN,
whose bf16 kernels then give way to PyTorch's generic (slow) ones, as on an AVX2-only CPU.
"""

import mpcourse.device as _device

_read_cpu_flags = _device._read_cpu_flags


def _without_bf16_units(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    return frozenset(flag for flag in _read_cpu_flags(cpuinfo) if not flag.startswith(("avx512", "amx")))


_device._read_cpu_flags = _without_bf16_units

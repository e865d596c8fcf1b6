"""How fast is :mod:`mpcourse.formats`? ``mpcourse bench formats`` times its decoders and encoders.

The formats module computes every rounding exactly with numpy (and torch where torch has the
dtype), so the chapters can show any format bit by bit on any machine. This benchmark says what
that costs here: decoding every fp16 and bf16 pattern, and encoding 10^6 fp32 values to each
narrow format. ``--save`` stores the medians in the course's one result format (topic ``formats``).
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import torch

from .. import formats
from . import results, timing


def benchmark(save: Path | None = None, quick: bool = False, force: bool = False) -> int:
    """Time decoding every fp16 pattern and encoding 10^6 values; print medians; optionally save them.

    Each figure is the median of ``repeats`` timed blocks of :func:`mpcourse.bench.timing.benchmark`
    (the course's one timing entry point; it warms up first, which also builds the decode tables).
    Run it with ``mpcourse bench formats``.
    """
    repeats, n_values = (5, 100_000) if quick else (25, 1_000_000)
    rng = np.random.default_rng(0)
    values = (rng.standard_normal(n_values) * np.exp(rng.uniform(-12, 12, n_values))).astype(np.float32)
    patterns = np.arange(1 << 16, dtype=np.uint16)
    tensor = torch.from_numpy(values)
    cases = {
        "decode all 65,536 float16 patterns": lambda: formats.FP16.decode(patterns),
        "decode all 65,536 bfloat16 patterns": lambda: formats.BF16.decode(patterns),
        **{
            f"encode {n_values:,} float32 values to {f.name}": (lambda f=f: f.encode(values))
            for f in (formats.FP16, formats.BF16, formats.E4M3, formats.E5M2, formats.E2M1)
        },
        f"round {n_values:,} float32 values to float8_e4m3fn": lambda: formats.E4M3.round(values),
        f"round_tensor {n_values:,} float32 values (CPU tensor) to float8_e4m3fn": lambda: (
            formats.round_tensor(tensor, formats.E4M3)
        ),
    }
    rows = []
    print(
        f"mpcourse.formats: median of {repeats} runs (numpy {np.__version__}, {platform.processor() or platform.machine()})"
    )
    for name, fn in cases.items():
        measured = timing.benchmark(fn, min_run_time=0.05 * repeats, min_blocks=repeats, max_blocks=repeats)
        median = measured.median
        rows.append(
            {
                "case": name,
                "median_s": median,
                "min_s": min(measured.samples),
                "repeats": len(measured.samples),
            }
        )
        print(f"  {name:<68} {median * 1e3:9.2f} ms")
    if save is not None:
        command = "mpcourse bench formats" + " --quick" * quick
        results.save(results.make_record("formats", {"cases": rows}, command=command), save, overwrite=force)
        print(f"saved to {save}")
    return 0

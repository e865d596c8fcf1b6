"""What arithmetic and data movement cost in energy: Horowitz's table, as data.

Mark Horowitz's ISSCC 2014 plenary, "Computing's energy problem (and what we can do about it)"
(``horowitz2014energy`` in ``book/references.bib``), tabulated the energy of operations and memory
accesses in a 45 nm process. The absolute figures are a decade old; the ratios (a DRAM access
costs hundreds of multiply-adds, a 16-bit multiply a fraction of a 32-bit one) are what carry over,
and what the why_mixed_precision chapter and its energy exercise compute with.
"""

from __future__ import annotations

from types import MappingProxyType

#: Energy in picojoules per operation, or per 64-bit access, at 45 nm (Horowitz, ISSCC 2014).
HOROWITZ_45NM_PJ = MappingProxyType(
    {
        "fp16 add": 0.4,
        "fp16 multiply": 1.1,
        "fp32 add": 0.9,
        "fp32 multiply": 3.7,
        "8 kB cache, 64-bit read": 10.0,
        "DRAM, 64-bit read (low)": 1300.0,
        "DRAM, 64-bit read (high)": 2600.0,
    }
)

__all__ = ["HOROWITZ_45NM_PJ"]

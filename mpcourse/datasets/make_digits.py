"""Write ``digits.npz`` from scikit-learn's copy of the UCI digits (run once; needs scikit-learn).

    python -m mpcourse.datasets.make_digits

scikit-learn returns the pixels as float64 and the labels as int64; every value is an integer
(pixels 0..16, labels 0..9), so uint8 holds them exactly, and the compressed file is a few tens
of kilobytes. ``tests/test_data.py`` checks the stored arrays against ``load_digits()`` wherever
scikit-learn is installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from . import DIGITS


def write(path: Path = DIGITS) -> Path:
    """Store scikit-learn's digits at ``path`` as uint8 ``images`` (N, 8, 8) and ``labels`` (N,)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise SystemExit("writing digits.npz needs scikit-learn (pip install scikit-learn)") from exc
    raw = load_digits()
    images, labels = raw.images.astype(np.uint8), raw.target.astype(np.uint8)
    if not (np.array_equal(images, raw.images) and np.array_equal(labels, raw.target)):
        raise ValueError("scikit-learn's digits are not all integers in 0..255; uint8 would change them")
    np.savez_compressed(path, images=images, labels=labels)
    return path


if __name__ == "__main__":
    out = write(Path(sys.argv[1]) if len(sys.argv) > 1 else DIGITS)
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")

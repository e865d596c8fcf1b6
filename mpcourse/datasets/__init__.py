"""Small datasets shipped inside the package, so that a chapter trains on real data with no network.

``digits.npz``: the 1,797 8x8 handwritten digits of the UCI "Optical Recognition of Handwritten
Digits" test set (Alpaydin and Kaynak, 1998), the copy scikit-learn ships as ``load_digits()``;
README.md beside it gives the source and the licence, and :mod:`mpcourse.datasets.make_digits`
is the one-off script that wrote it. :func:`mpcourse.data.load_images` reads it.
"""

from __future__ import annotations

from pathlib import Path

#: The folder of the shipped data files.
ROOT = Path(__file__).resolve().parent

#: The digits: arrays ``images`` (1797, 8, 8) and ``labels`` (1797,), both uint8.
DIGITS = ROOT / "digits.npz"

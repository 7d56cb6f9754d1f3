"""Embedded 8x8 handwritten digits (UCI "Optical Recognition of Handwritten Digits", CC BY 4.0).

Source: E. Alpaydin, C. Kaynak, UCI Machine Learning Repository, 1998, DOI 10.24432/C50P49;
license CC BY 4.0 (see DIGITS_ATTRIBUTION.md). 1797 images, 10 classes, each pixel the count of
"on" pixels in a 4x4 block of a 32x32 bitmap (0..16).
digits.npz was written once with
np.savez_compressed(images=d.images.astype(np.uint8), labels=d.target.astype(np.uint8)) for
d = sklearn.datasets.load_digits() (scikit-learn 1.9.1), so nothing is downloaded at run time.
"""

from importlib.resources import files

import numpy as np

NUM_CLASSES = 10
IMAGE_SHAPE = (1, 8, 8)
LEVELS = 17  # raw pixels are integers 0..16: 17 grey levels (bits/dim discretizes with this)

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _check_dtype(dtype):
    """Raise ValueError unless dtype is float32 or float64; None (float64 to NumPy) is refused."""
    try:
        ok = dtype is not None and np.dtype(dtype) in _DTYPES
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"dtype must be np.float32 or np.float64, got {dtype!r}")


def load_digits(dtype=np.float32):
    """Load the 1797 embedded 8x8 digits, scaled to [-1, 1], with their labels.

    Math: x = counts / 16 * 2 - 1, counts in {0, ..., 16}      (so 0 -> -1 and 16 -> +1 exactly)

    dtype: np.float32 (default) or np.float64.
    Returns x: (N, 1, 8, 8) NumPy array of `dtype` in [-1, 1]; y: (N,) int64 labels in [0, 10);
    N = 1797.
    """
    _check_dtype(dtype)
    resource = files("refdiff.data") / "digits.npz"
    with resource.open("rb") as f, np.load(f, allow_pickle=False) as npz:
        counts = npz["images"]  # (N, 8, 8) uint8 in 0..16
        labels = npz["labels"]  # (N,) uint8 in 0..9
    # k / 16 * 2 - 1 is exact in binary floating point for k in 0..16: 0 -> -1 and 16 -> +1 exactly
    x = counts.astype(np.dtype(dtype)) / (LEVELS - 1) * 2 - 1
    x = x.reshape(counts.shape[0], *IMAGE_SHAPE)  # (N, 1, 8, 8)
    return x, labels.astype(np.int64)

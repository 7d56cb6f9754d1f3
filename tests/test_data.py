"""Tests for refdiff.data: the embedded 8x8 digits."""

import numpy as np
import pytest

from refdiff.data import IMAGE_SHAPE, NUM_CLASSES, load_digits
from refdiff.data.digits import LEVELS

N_DIGITS = 1797
# Images per class 0..9, read once from sklearn.datasets.load_digits() (scikit-learn 1.9.1) with
# np.bincount(load_digits().target): e.g. class 0 has 178 images, class 8 has 174.
CLASS_COUNTS = (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)


@pytest.fixture(scope="module")
def digits64():
    return load_digits(np.float64)


def test_load_digits_shapes_dtypes_and_range(digits64):
    """x: (1797, 1, 8, 8) of the requested dtype in [-1, 1], both ends attained; y: (1797,) int64."""
    for dtype in (np.float32, np.float64):
        x, y = load_digits(dtype)
        assert isinstance(x, np.ndarray) and isinstance(y, np.ndarray)
        assert x.shape == (N_DIGITS, *IMAGE_SHAPE) and x.dtype == dtype
        assert y.shape == (N_DIGITS,) and y.dtype == np.int64
        assert x.min() == -1 and x.max() == 1
    assert load_digits()[0].dtype == np.float32  # the default


def test_labels_cover_every_class_with_known_counts(digits64):
    """bincount(y) == CLASS_COUNTS (every class 0..9 present), and the counts sum to 1797."""
    _, y = digits64
    assert y.min() == 0 and y.max() == NUM_CLASSES - 1
    counts = np.bincount(y, minlength=NUM_CLASSES)
    assert tuple(counts.tolist()) == CLASS_COUNTS
    assert sum(CLASS_COUNTS) == N_DIGITS


def test_scaling_maps_counts_to_exact_levels(digits64):
    """k = (x + 1) / 2 * 16 is an integer in 0..16 for every pixel: 0 -> -1 and 16 -> +1 exactly."""
    x, _ = digits64
    k = (x + 1) / 2 * (LEVELS - 1)
    assert np.array_equal(k, np.round(k))
    assert k.min() == 0 and k.max() == LEVELS - 1
    assert LEVELS == 17 and np.unique(k).size == LEVELS  # all 17 grey levels occur


def test_float32_and_float64_agree(digits64):
    """load_digits(float32) == float32(load_digits(float64)) exactly (all values are dyadic)."""
    x64, y64 = digits64
    x32, y32 = load_digits(np.float32)
    assert np.array_equal(x32, x64.astype(np.float32))
    assert np.array_equal(y32, y64)


@pytest.mark.parametrize("bad", [np.float16, np.int64, np.uint8, "complex128", None, "not-a-dtype"])
def test_invalid_dtype_raises_value_error_naming_dtype(bad):
    """Any dtype other than float32 / float64 raises ValueError whose message names `dtype`."""
    with pytest.raises(ValueError, match="dtype"):
        load_digits(bad)


def test_float_dtype_spellings_are_accepted():
    """The strings and np.dtype objects for float32 / float64 are accepted like the scalar types."""
    assert load_digits("float32")[0].dtype == np.float32
    assert load_digits(np.dtype("float64"))[0].dtype == np.float64


def test_two_loads_are_equal(digits64):
    """load_digits is deterministic: two calls return equal arrays (same order, same values)."""
    x1, y1 = digits64
    x2, y2 = load_digits(np.float64)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert x1 is not x2  # a fresh array per call, so callers may modify theirs

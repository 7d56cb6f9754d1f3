"""Specification of refdiff.data.shapes: procedural shape images.

Oracles: the closed-form area of each shape (rendered pixel mass), the fill ratio of each shape in its
bounding box, exact class balance from the documented label draw.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdiff.data import SHAPES, load_shapes
from refdiff.data.shapes import AREA, SIZE_RANGE, shape_coverage

seeds = st.integers(0, 2**16)
class_sets = st.lists(st.sampled_from(SHAPES), min_size=1, max_size=len(SHAPES), unique=True).map(tuple)
# Area / bounding-box area of each shape (bounding boxes: triangle sqrt(3) s x 3/2 s, others 2s x 2s).
FILL = {name: AREA[name] / (1.5 * math.sqrt(3) if name == "triangle" else 4.0) for name in SHAPES}


@given(seed=seeds, resolution=st.integers(8, 40), colors=st.sampled_from([1, 3]), classes=class_sets,
       n=st.integers(1, 20), dtype=st.sampled_from([np.float32, np.float64]))
def test_shapes_dtype_and_range(seed, resolution, colors, classes, n, dtype):
    """x: (n, colors, R, R) of dtype in [-1, 1]; y: (n,) int64 in [0, K)."""
    x, y = load_shapes(n, resolution, colors, classes, seed, dtype)
    assert isinstance(x, np.ndarray) and x.shape == (n, colors, resolution, resolution) and x.dtype == dtype
    assert y.shape == (n,) and y.dtype == np.int64
    assert x.min() >= -1 and x.max() <= 1
    assert y.min() >= 0 and y.max() < len(classes)


@given(seed=seeds, colors=st.sampled_from([1, 3]))
def test_same_seed_same_images_and_float32_is_cast_float64(seed, colors):
    """load_shapes(seed) == load_shapes(seed) exactly, and float32 output == float32(float64 output)."""
    x1, y1 = load_shapes(12, 16, colors, seed=seed)
    x2, y2 = load_shapes(12, 16, colors, seed=seed)
    x64, y64 = load_shapes(12, 16, colors, seed=seed, dtype=np.float64)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert np.array_equal(x1, x64.astype(np.float32)) and np.array_equal(y1, y64)


@given(seed=seeds)
def test_different_seeds_give_different_images(seed):
    """load_shapes(seed) != load_shapes(seed + 1): positions, sizes and colours are redrawn."""
    assert not np.array_equal(load_shapes(8, 16, seed=seed)[0], load_shapes(8, 16, seed=seed + 1)[0])


@given(n=st.integers(1, 200), classes=class_sets, seed=seeds)
def test_every_class_present_and_balanced(n, classes, seed):
    """bincount(y) is n // K or n // K + 1 for every class (every class present once n >= K)."""
    _, y = load_shapes(n, 8, 1, classes, seed)
    counts = np.bincount(y, minlength=len(classes))
    assert counts.max() - counts.min() <= 1 and counts.sum() == n


@given(classes=class_sets)
def test_int_classes_mean_the_first_k_shapes(classes):
    """classes=K gives the same images as classes=SHAPES[:K]."""
    k = len(classes)
    assert np.array_equal(load_shapes(10, 12, classes=k)[0], load_shapes(10, 12, classes=SHAPES[:k])[0])


@pytest.mark.parametrize("name", SHAPES)
@given(s=st.floats(4, 12), dx=st.floats(0, 1), dy=st.floats(0, 1))
def test_rendered_mass_equals_shape_area(name, s, dx, dy):
    """|sum(coverage) - AREA[name] * s^2| < 5 pixels (at most 1/6 of the area, 1.5% at s = 12), for a shape
    inside the frame at any sub-pixel offset: the coverage ramp is exact on average along straight edges,
    and corners and the sampling of slanted edges leave a few pixels at most."""
    a = shape_coverage(name, [16 + dx], [16 + dy], [s], 34)
    assert a.min() >= 0 and a.max() <= 1
    assert a[0, 0].sum() == a[0, -1].sum() == a[0, :, 0].sum() == a[0, :, -1].sum() == 0  # inside the frame
    assert abs(a.sum() - AREA[name] * s * s) < 5


def test_circle_and_square_differ_in_mass_at_fixed_size():
    """At equal size s, mass(square) / mass(circle) == 4 / pi (their areas 4 s^2 and pi s^2), to 1%."""
    circle, square = (shape_coverage(name, [16], [16], [10], 32).sum() for name in ("circle", "square"))
    assert abs(square / circle - 4 / math.pi) < 0.01 * 4 / math.pi


def test_classes_recognisable_by_fill_ratio():
    """Per class, the median of mass / bounding-box area of generated images is FILL[name] +- 0.06,
    and every circle fills its box less than every square (the labels name what is drawn)."""
    x, y = load_shapes(600, 32, colors=1, seed=3)
    a = (x[:, 0] + 1) / 2
    a = a / a.max(axis=(1, 2), keepdims=True)  # coverage: divide out the grey level
    inside = a > 0.5
    box = inside.any(axis=2).sum(1) * inside.any(axis=1).sum(1)  # rows x columns touched
    fill = a.sum(axis=(1, 2)) / box
    for k, name in enumerate(SHAPES):
        assert abs(np.median(fill[y == k]) - FILL[name]) < 0.06, name
    assert fill[y == SHAPES.index("circle")].max() < fill[y == SHAPES.index("square")].min()


def test_sizes_positions_and_colours_span_their_documented_ranges():
    """For squares (mass 4 s^2 c): the brightest channel c lies in [0.6, 1], the side 2 s in
    2 * SIZE_RANGE * (R / 2 - 1), and each spreads over much of its range; the centres move."""
    x, _ = load_shapes(300, 32, colors=3, classes=("square",), seed=1)
    v = (x + 1) / 2  # (N, 3, H, W) pixel values in [0, 1]: colour c times coverage
    brightest = v.max(axis=(1, 2, 3))  # fully covered pixels carry c
    assert brightest.min() >= 0.6 - 1e-6 and brightest.max() <= 1 + 1e-6 and brightest.std() > 0.05
    side = np.sqrt(v.sum(axis=(2, 3)).max(axis=1) / brightest)  # sqrt(4 s^2) = 2 s
    low, high = 2 * np.array(SIZE_RANGE) * (32 / 2 - 1)
    assert side.min() >= low - 0.5 and side.max() <= high + 0.5 and side.max() - side.min() > 0.5 * (high - low)
    column_mass = v.sum(axis=(1, 2))  # (N, W)
    centre_col = (column_mass * np.arange(32)).sum(1) / column_mass.sum(1)
    assert centre_col.std() > 2  # positions vary


@pytest.mark.parametrize(
    "kwargs, word",
    [({"n": 0}, "n"), ({"resolution": 7}, "resolution"), ({"colors": 2}, "colors"),
     ({"classes": ("hexagon",)}, "classes"),
     ({"classes": ()}, "classes"), ({"classes": ("circle", "circle")}, "classes"), ({"classes": 7}, "classes"),
     ({"seed": -1}, "seed"), ({"dtype": np.int32}, "dtype"), ({"n": 2.5}, "n")],
)
def test_invalid_arguments_raise_value_error_naming_them(kwargs, word):
    """Each invalid argument raises ValueError whose message names it."""
    args = {"n": 4, **kwargs}
    with pytest.raises(ValueError, match=word):
        load_shapes(**args)

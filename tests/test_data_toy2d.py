"""Specification of refdiff.data.toy2d: the 2-D toy distributions.

Oracles: the closed-form curve or cell of each set at noise 0 (every point must lie on it), and the
Gaussian moments of each 8gaussians cluster (support.assert_moments_match).
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdiff.data import TOY2D, load_toy2d
from refdiff.data.toy2d import CHECKER_CELLS, DEFAULT_NOISE, GAUSSIAN_CENTRES, RING_RADII, SWISS_ROLL_SCALE
from support import assert_moments_match

seeds = st.integers(0, 2**16)
names = st.sampled_from(TOY2D)
EXACT = 1e-12  # float64 points on their curve up to a few roundings


@given(name=names, n=st.integers(1, 300), seed=seeds, dtype=st.sampled_from([np.float32, np.float64]))
def test_each_set_has_shape_n_by_2_and_labels_per_documentation(name, n, seed, dtype):
    """x: (n, 2) finite of dtype; y: (n,) int64 with counts differing by at most 1, or None for swiss_roll."""
    x, y = load_toy2d(name, n, seed, dtype=dtype)
    assert isinstance(x, np.ndarray) and x.shape == (n, 2) and x.dtype == dtype and np.isfinite(x).all()
    if name == "swiss_roll":
        assert y is None
    else:
        assert y.shape == (n,) and y.dtype == np.int64 and y.min() >= 0
        counts = np.bincount(y)
        assert counts.max() - counts.min() <= 1  # labels 0..min(n, K) - 1 all used


@given(name=names, seed=seeds)
def test_same_seed_same_points_and_other_seed_other_points(name, seed):
    """load_toy2d(seed) == load_toy2d(seed) exactly; load_toy2d(seed + 1) differs; float32 == float32(float64)."""
    x1, y1 = load_toy2d(name, 50, seed)
    x2, y2 = load_toy2d(name, 50, seed)
    x64, _ = load_toy2d(name, 50, seed, dtype=np.float64)
    assert np.array_equal(x1, x2) and (y1 is None or np.array_equal(y1, y2))
    assert np.array_equal(x1, x64.astype(np.float32))
    assert not np.array_equal(x1, load_toy2d(name, 50, seed + 1)[0])


@given(name=names, seed=seeds, noise=st.floats(0.01, 0.5))
def test_noise_is_added_to_the_same_clean_points(name, seed, noise):
    """x(noise) - x(0) == noise * eps with eps independent of noise: the difference scales linearly."""
    clean, y0 = load_toy2d(name, 40, seed, noise=0.0, dtype=np.float64)
    noisy, y1 = load_toy2d(name, 40, seed, noise=noise, dtype=np.float64)
    unit, _ = load_toy2d(name, 40, seed, noise=1.0, dtype=np.float64)
    assert y0 is None or np.array_equal(y0, y1)
    np.testing.assert_allclose(noisy - clean, noise * (unit - clean), rtol=1e-9, atol=1e-12)


@given(seed=seeds)
def test_swiss_roll_points_lie_on_the_spiral(seed):
    """At noise 0, t = 7 |x| lies in [3pi/2, 9pi/2] and x == (t cos t, t sin t) / 7."""
    x, _ = load_toy2d("swiss_roll", 200, seed, noise=0.0, dtype=np.float64)
    t = SWISS_ROLL_SCALE * np.hypot(x[:, 0], x[:, 1])
    assert t.min() >= 1.5 * math.pi - EXACT and t.max() <= 4.5 * math.pi + EXACT
    np.testing.assert_allclose(x, np.stack([t * np.cos(t), t * np.sin(t)], 1) / SWISS_ROLL_SCALE, atol=1e-9)


@given(seed=seeds)
def test_two_moons_labelled_halves_lie_on_their_half_circles(seed):
    """At noise 0, moon 0 is {|x - (-1/2, -1/4)| = 1, x2 >= -1/4} and moon 1 is its reflection -moon 0."""
    x, y = load_toy2d("two_moons", 200, seed, noise=0.0, dtype=np.float64)
    upper = np.where(y[:, None] == 0, x, -x)  # reflect moon 1 onto moon 0
    centre = np.array([-0.5, -0.25])
    np.testing.assert_allclose(np.hypot(*(upper - centre).T), 1.0, atol=EXACT)
    assert (upper[:, 1] >= -0.25 - EXACT).all()
    assert set(np.unique(y)) == {0, 1}


def test_8gaussians_clusters_sit_at_the_documented_centres():
    """Points of label k have mean sqrt(2) (cos k pi/4, sin k pi/4) and std noise (diagonal Gaussian)."""
    noise = DEFAULT_NOISE["8gaussians"]
    x, y = load_toy2d("8gaussians", 8000, seed=5, dtype=np.float64)
    assert np.allclose(np.hypot(*GAUSSIAN_CENTRES.T), math.sqrt(2))
    for k in range(8):
        assert_moments_match(x[y == k], GAUSSIAN_CENTRES[k], [noise, noise])
    nearest = np.argmin(((x[:, None] - GAUSSIAN_CENTRES[None]) ** 2).sum(-1), axis=1)
    assert np.mean(nearest == y) > 0.99  # eight separated clusters: 0.1 std vs 1.08 between centres


@given(seed=seeds)
def test_checkerboard_points_fill_only_black_cells(seed):
    """At noise 0, x in [-2, 2]^2, floor(x1) + floor(x2) is even, and floor(x) is the cell of label y."""
    x, y = load_toy2d("checkerboard", 400, seed, dtype=np.float64)
    assert DEFAULT_NOISE["checkerboard"] == 0
    assert x.min() >= -2 and x.max() <= 2
    cell = np.floor(x)
    assert ((cell.sum(1) % 2) == 0).all()
    assert np.array_equal(cell, CHECKER_CELLS[y])
    assert np.unique(y).size == 8


def test_checkerboard_is_uniform_on_the_black_cells():
    """Per coordinate: mean 0 and std 2/sqrt(3) (uniform on [-2, 2]), within 5 standard errors."""
    x, _ = load_toy2d("checkerboard", 20000, seed=2, dtype=np.float64)
    std = 2 / math.sqrt(3)
    assert np.all(np.abs(x.mean(0)) < 5 * std / math.sqrt(len(x)))
    assert np.all(np.abs(x.std(0) - std) < 0.02)


@given(seed=seeds)
def test_rings_radii_are_the_documented_radii(seed):
    """At noise 0, |x| == RING_RADII[y]; with the default noise, |x| - RING_RADII[y] has std ~ noise."""
    x, y = load_toy2d("rings", 400, seed, noise=0.0, dtype=np.float64)
    np.testing.assert_allclose(np.hypot(*x.T), np.asarray(RING_RADII)[y], atol=EXACT)
    x, y = load_toy2d("rings", 400, seed, dtype=np.float64)
    gap = np.hypot(*x.T) - np.asarray(RING_RADII)[y]
    assert np.abs(gap).max() < 6 * DEFAULT_NOISE["rings"]  # each point stays with its own ring


@pytest.mark.parametrize("name", TOY2D)
def test_each_set_has_roughly_unit_scale(name):
    """Per-coordinate rms of every set (default noise) lies in [0.4, 1.3]: roughly unit scale."""
    x, _ = load_toy2d(name, 5000, seed=0, dtype=np.float64)
    rms = np.sqrt((x**2).mean(0))
    assert (rms > 0.4).all() and (rms < 1.3).all(), rms


def test_unknown_name_lists_the_names():
    """An unknown name raises ValueError whose message lists every known name."""
    with pytest.raises(ValueError) as err:
        load_toy2d("spirals", 10)
    assert all(name in str(err.value) for name in TOY2D)


@pytest.mark.parametrize(
    "kwargs, word",
    [({"n": 0}, "n"), ({"seed": -1}, "seed"), ({"noise": -0.1}, "noise"), ({"noise": math.nan}, "noise"),
     ({"dtype": np.float16}, "dtype")],
)
def test_invalid_arguments_raise_value_error_naming_them(kwargs, word):
    """Each invalid argument raises ValueError whose message names it."""
    with pytest.raises(ValueError, match=word):
        load_toy2d("rings", **{"n": 10, **kwargs})

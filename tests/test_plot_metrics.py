"""Specification of refdiff.metrics (sliced Wasserstein-2, unbiased MMD^2) by exact identities, and of
refdiff.plot (each figure is a valid PNG; bad inputs raise)."""

import math
import struct

import matplotlib.image
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdiff.metrics import mmd_rbf, projection_directions, sliced_wasserstein, wasserstein_1d
from refdiff.plot import _mosaic, curves, image_grid, image_grids, scatter_2d, trajectories_2d
from support import host_data

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RTOL = 1e-10  # float64 sums of a few thousand terms

sizes = st.integers(2, 60)
dims = st.integers(1, 5)
seeds = st.integers(0, 2**16)


# ---------------------------------------------------------------------------------------------------------
# Sliced Wasserstein-2


@given(n=sizes, d=dims, seed=seeds)
def test_sliced_wasserstein_of_a_sample_to_itself_is_zero(n, d, seed):
    """SW2(x, x) == 0 exactly: every projection sorts to the same values."""
    x = host_data(seed, (n, d))
    assert sliced_wasserstein(x, x) == 0.0


@given(n=sizes, m=sizes, d=dims, seed=seeds)
def test_sliced_wasserstein_is_symmetric(n, m, d, seed):
    """SW2(x, y) == SW2(y, x), for equal and unequal sample sizes."""
    x, y = host_data(seed, (n, d)), host_data(seed + 1, (m, d), scale=2.0)
    assert math.isclose(sliced_wasserstein(x, y), sliced_wasserstein(y, x), rel_tol=RTOL)


@given(n=sizes, seed=seeds, c=st.floats(-10, 10))
def test_sliced_wasserstein_in_one_dimension_of_a_shift_is_the_shift(n, seed, c):
    """In 1-D every direction is +-1 and W2(x, x + c) == |c|, so SW2(x, x + c) == |c|."""
    x = host_data(seed, (n, 1))
    assert math.isclose(sliced_wasserstein(x, x + c), abs(c), rel_tol=1e-9, abs_tol=1e-12)


@given(n=sizes, d=st.integers(2, 5), seed=seeds, projections=st.integers(1, 64))
def test_sliced_wasserstein_of_a_shift_is_the_rms_projected_shift(n, d, seed, projections):
    """For y = x + c: SW2(x, y) == sqrt(mean_j (theta_j . c)^2) over the estimator's directions theta_j, so it grows
    linearly with the shift: SW2(x, x + s c) == |s| SW2(x, x + c)."""
    x, c = host_data(seed, (n, d)), host_data(seed + 1, (d,))
    theta = projection_directions(d, projections, seed=0)
    expected = math.sqrt(np.mean((theta @ c) ** 2))
    assert math.isclose(sliced_wasserstein(x, x + c, projections), expected, rel_tol=1e-9)
    for s in (0.5, 2.0, -3.0):
        assert math.isclose(sliced_wasserstein(x, x + s * c, projections), abs(s) * expected, rel_tol=1e-9)


@given(n=sizes, m=sizes, d=dims, seed=seeds, s=st.floats(-5, 5).filter(lambda v: abs(v) > 1e-3))
def test_sliced_wasserstein_scales_with_the_data(n, m, d, seed, s):
    """SW2(s x, s y) == |s| SW2(x, y): projections and 1-D quantiles are linear in the data."""
    x, y = host_data(seed, (n, d)), host_data(seed + 1, (m, d))
    assert math.isclose(sliced_wasserstein(s * x, s * y), abs(s) * sliced_wasserstein(x, y), rel_tol=1e-9)


@given(n=sizes, d=dims, seed=seeds, copies=st.integers(2, 4))
def test_sliced_wasserstein_ignores_duplicating_a_sample(n, d, seed, copies):
    """x repeated k times has the same empirical distribution as x: SW2(x, [x; ...; x]) == 0 (unequal sizes)."""
    x = host_data(seed, (n, d))
    assert sliced_wasserstein(x, np.concatenate([x] * copies)) < 1e-12


@given(n=sizes, m=sizes, seed=seeds)
def test_wasserstein_1d_of_unequal_sizes_equals_the_equal_size_formula_on_repeated_samples(n, m, seed):
    """W2 between empirical distributions of sizes N and M equals the sorted-difference formula on the samples
    repeated to L = lcm(N, M) points each (each u_i L / N times, each v_j L / M times): the same distributions."""
    u, v = host_data(seed, (1, n)), host_data(seed + 1, (1, m), scale=3.0)
    L = math.lcm(n, m)
    expected = math.sqrt(np.mean((np.repeat(np.sort(u), L // n) - np.repeat(np.sort(v), L // m)) ** 2))
    assert math.isclose(float(wasserstein_1d(u, v)[0]), expected, rel_tol=1e-9)


def test_projection_directions_are_unit_vectors_fixed_by_the_seed():
    """Directions have norm 1 and the same seed gives the same directions (values compare across calls)."""
    theta = projection_directions(3, 50, seed=4)
    np.testing.assert_allclose(np.linalg.norm(theta, axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(theta, projection_directions(3, 50, seed=4))


# ---------------------------------------------------------------------------------------------------------
# MMD


def _kernel(d2, h):
    return np.exp(-d2 / (2 * h * h))


@given(n=sizes, d=dims, seed=seeds, h=st.floats(0.1, 10))
def test_mmd_of_a_sample_to_itself_is_minus_twice_one_minus_the_mean_kernel_over_n(n, d, seed, h):
    """The unbiased MMD_u^2(x, x) == -2 (1 - mean_{i != i'} k(x_i, x_i')) / N exactly (not 0: the U-statistic
    leaves out the diagonal within x but not across), so it is <= 0 and vanishes like 1 / N."""
    x = host_data(seed, (n, d))
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
    mean_offdiag = (_kernel(d2, h).sum() - n) / (n * (n - 1))
    assert math.isclose(mmd_rbf(x, x, h), -2 * (1 - mean_offdiag) / n, rel_tol=1e-9, abs_tol=1e-14)


def test_mmd_of_two_point_samples_matches_the_closed_form():
    """x = {0, a}, y = {c, c + a} in 1-D: MMD_u^2 = 2 k(a) - (2 k(c) + k(c + a) + k(c - a)) / 2."""
    a, c, h = 0.7, 1.3, 0.9
    k = lambda r: math.exp(-r * r / (2 * h * h))  # noqa: E731
    expected = 2 * k(a) - (2 * k(c) + k(c + a) + k(c - a)) / 2
    got = mmd_rbf(np.array([[0.0], [a]]), np.array([[c], [c + a]]), bandwidth=h)
    assert math.isclose(got, expected, rel_tol=1e-12)


@given(n=sizes, m=sizes, d=dims, seed=seeds)
def test_mmd_is_symmetric(n, m, d, seed):
    """MMD_u^2(x, y) == MMD_u^2(y, x), with the median heuristic on the pooled sample."""
    x, y = host_data(seed, (n, d)), host_data(seed + 1, (m, d), scale=2.0)
    assert math.isclose(mmd_rbf(x, y), mmd_rbf(y, x), rel_tol=1e-9, abs_tol=1e-14)


def test_mmd_grows_with_the_shift_and_tends_to_twice_the_mean_kernel():
    """For y = x + c e with a fixed bandwidth, MMD_u^2 = 2 kbar - 2 mean_{i,j} k(x_i - x_j - c e) grows with c
    (for this Gaussian sample) and equals 2 kbar, kbar = mean_{i != i'} k(x_i, x_i'), once the cross term underflows."""
    x, h, e = host_data(3, (200, 2)), 1.0, np.array([0.6, 0.8])
    values = [mmd_rbf(x, x + c * e, h) for c in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)]
    assert all(b > a for a, b in zip(values, values[1:])), values
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
    kbar = (_kernel(d2, h).sum() - 200) / (200 * 199)
    assert math.isclose(mmd_rbf(x, x + 1e3 * e, h), 2 * kbar, rel_tol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# Bad inputs


def test_metrics_reject_bad_inputs():
    """Non-host arrays raise TypeError; wrong shapes, mismatched D, non-finite values, too few points, bad
    projection counts and bandwidths raise ValueError naming the argument."""
    strict = pytest.importorskip("array_api_strict")
    x = host_data(0, (10, 2))
    with pytest.raises(TypeError, match="x must be a host NumPy array"):
        sliced_wasserstein(strict.asarray(x), x)
    cases = [
        (lambda: sliced_wasserstein(x[:, 0], x), "x must be an \\(N, D\\) array"),
        (lambda: sliced_wasserstein(x, host_data(1, (10, 3))), "same dimension D"),
        (lambda: sliced_wasserstein(x, np.where(x > 1, np.nan, x)), "y must be finite"),
        (lambda: sliced_wasserstein(x, x, projections=0), "projections must be an integer >= 1"),
        (lambda: mmd_rbf(x[:1], x), "at least 2 points"),
        (lambda: mmd_rbf(x, x, bandwidth=0.0), "bandwidth must be a finite number > 0"),
        (lambda: mmd_rbf(np.zeros((3, 2)), np.zeros((3, 2))), "median heuristic needs distinct points"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


# ---------------------------------------------------------------------------------------------------------
# Figures


def _png_size(path) -> tuple[int, int]:
    """(width, height) of a PNG, after checking its signature and that its first chunk is IHDR."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_each_figure_is_a_valid_png_at_the_path_it_returns(tmp_path):
    """image_grid, image_grids, scatter_2d, trajectories_2d and curves write a PNG (signature, IHDR, a figure-sized image that
    is not blank: its pixels vary) to the path given, creating missing folders, and return that path."""
    rng = np.random.default_rng(0)
    images = np.tanh(rng.standard_normal((6, 1, 8, 8)))
    chain = [rng.standard_normal((30, 2)) * (1 - s / 10) for s in range(10)]
    written = [
        image_grid(images, 3, tmp_path / "grid.png", title="grid", row_labels=["a", "b"]),
        image_grid(np.repeat(images, 3, axis=1), 4, tmp_path / "rgb.png"),
        image_grids({"a": images, "b": -images[:5]}, 3, tmp_path / "grids.png", title="side by side"),
        image_grids({"rgb": np.repeat(images, 3, axis=1)}, 2, tmp_path / "grids_rgb.png"),
        scatter_2d({"one": chain[-1], "two": chain[0]}, tmp_path / "sub" / "scatter.png", reference=chain[3]),
        trajectories_2d(chain, tmp_path / "paths.png", title="paths", reference=chain[-1], max_paths=10),
        curves({"a": ([5, 10, 20], [1.0, 0.5, 0.2])}, tmp_path / "curves.png", "steps", "error", logx=True,
               logy=True, hlines={"floor": 0.1}, hbands={"range": (0.08, 0.12)}),
    ]
    for path in written:
        width, height = _png_size(path)
        assert width >= 200 and height >= 150, (path, width, height)
        pixels = matplotlib.image.imread(path)                      # (height, width, 3 or 4) in [0, 1]
        assert pixels.shape[:2] == (height, width)
        assert pixels[..., :3].std() > 0.05, f"{path} is blank"


@given(n=st.integers(1, 12), nrow=st.integers(1, 5), c=st.sampled_from([1, 3]), seed=seeds)
def test_mosaic_puts_image_i_at_row_i_div_nrow_and_column_i_mod_nrow(n, nrow, c, seed):
    """_mosaic(x, nrow)[r (H + 1) : r (H + 1) + H, q (W + 1) : q (W + 1) + W] is image i = r nrow + q (channels
    last), the lines between images and the empty cells are 0, and the shape is (rows (H + 1) - 1, cols (W + 1) - 1,
    C)."""
    H, W = 3, 4
    x = host_data(seed, (n, c, H, W)) + 5.0                          # away from 0: a misplaced line shows
    m = _mosaic(x, nrow)
    rows, cols = math.ceil(n / nrow), min(nrow, n)
    assert m.shape == (rows * (H + 1) - 1, cols * (W + 1) - 1, c)
    filled = np.zeros(m.shape[:2], bool)
    for i in range(n):
        r, q = divmod(i, nrow)
        cell = (slice(r * (H + 1), r * (H + 1) + H), slice(q * (W + 1), q * (W + 1) + W))
        assert np.array_equal(m[cell], x[i].transpose(1, 2, 0))
        filled[cell] = True
    assert np.all(m[~filled] == 0)


def test_figures_reject_bad_inputs(tmp_path):
    """Wrong shapes, counts, labels, non-finite or non-host arrays, empty inputs and non-.png paths raise."""
    strict = pytest.importorskip("array_api_strict")
    images, points = np.zeros((4, 1, 8, 8)), np.zeros((5, 2))
    png = tmp_path / "f.png"
    with pytest.raises(TypeError, match="host NumPy array"):
        image_grid(strict.asarray(images), 2, png)
    cases = [
        (lambda: image_grid(images[0], 2, png), "images must have 4 axes"),
        (lambda: image_grid(np.zeros((4, 2, 8, 8)), 2, png), "C in \\(1, 3\\)"),
        (lambda: image_grid(images, 0, png), "nrow"),
        (lambda: image_grid(images, 2, png, row_labels=["one"]), "one label per row \\(2 rows\\)"),
        (lambda: image_grid(images, 2, tmp_path / "f.jpg"), "path must end in .png"),
        (lambda: image_grid(images * np.nan, 2, png), "images must be finite"),
        (lambda: image_grids({}, 2, png), "non-empty dict"),
        (lambda: image_grids({"a": images, "b": np.zeros((4, 1, 4, 4))}, 2, png), "one shape"),
        (lambda: image_grids({"a": images}, 0, png), "nrow"),
        (lambda: scatter_2d({}, png), "non-empty dict"),
        (lambda: scatter_2d({"a": np.zeros((5, 3))}, png), "\\(N, 2\\) array"),
        (lambda: scatter_2d({"a": points}, png, ncols=0), "ncols"),
        (lambda: trajectories_2d([points], png), "at least 2"),
        (lambda: trajectories_2d([points, points[:3]], png), "same shape"),
        (lambda: curves({"a": ([1, 2], [1.0])}, png, "x", "y"), "same length"),
        (lambda: curves({"a": ([0, 2], [1.0, 2.0])}, png, "x", "y", logx=True), "> 0 on a log axis"),
        (lambda: curves({"a": [1, 2, 3]}, png, "x", "y"), "pair \\(xs, ys\\)"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    assert not png.exists()

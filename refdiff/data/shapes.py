"""Procedural shape images: K classes of filled shapes at any resolution, grey or RGB, no files.

Each image is one shape of one colour on a black background, at a random position and size, fully
inside the frame. Edges are anti-aliased by pixel coverage read off a signed distance d (in pixels,
negative inside): a = clip(1/2 - d, 0, 1), which is the exact box-filtered coverage of a pixel whose
centre lies at distance d from a straight edge.

Classes (``SHAPES``), for centre c and size s (pixels), with (u, v) = pixel centre - c, v pointing up:

    circle    disc of radius s                           d = |(u, v)| - s                  area pi s^2
    square    axis-aligned, half-side s                  d = max(|u|, |v|) - s             area 4 s^2
    triangle  equilateral, point up, circumradius s      d = max(-v, +-sqrt(3)/2 u + v/2) - s/2
                                                                                           area 3 sqrt(3)/4 s^2
    diamond   square turned 45 degrees, vertices at s    d = (|u| + |v| - s) / sqrt(2)     area 2 s^2
    cross     plus sign, arms half-length s, half-width w = s/3
              d = min(max(|u| - s, |v| - w), max(|u| - w, |v| - s))                     area 20/9 s^2
    ring      annulus, outer radius s, inner radius s/2  d = ||(u, v)| - 3s/4| - s/4      area 3 pi/4 s^2

(The square, triangle and cross distances are exact inside and on the edges and slightly short of the
Euclidean distance outside corners, which only widens the anti-aliased rim there by a fraction of a
pixel.) Labels index the ``classes`` argument, so ``classes=("square", "circle")`` labels squares 0.
"""

import math
from numbers import Integral

import numpy as np

from refdiff.data.digits import _check_dtype

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
# Area of each shape in units of s^2 (the table above); the tests check the rendered pixel mass.
AREA = {
    "circle": math.pi,
    "square": 4.0,
    "triangle": 3 * math.sqrt(3) / 4,
    "diamond": 2.0,
    "cross": 20 / 9,
    "ring": 3 * math.pi / 4,
}
# s = U(SIZE_RANGE) * (resolution / 2 - 1): the largest s leaves a one-pixel margin for the rim.
SIZE_RANGE = (0.45, 0.9)
MIN_RESOLUTION = 8
_CHUNK = 2048  # images rendered at once: bounds the (chunk, H, W) float64 temporaries


def _signed_distance(name, u, v, s):
    """Signed distance (pixels, < 0 inside) of the shape `name` at offsets (u, v) for half-size s.

    u, v: (N, H, W) pixel centre minus shape centre (v up); s: (N, 1, 1). Returns (N, H, W).
    """
    au, av = np.abs(u), np.abs(v)
    if name == "circle":
        return np.hypot(u, v) - s
    if name == "square":
        return np.maximum(au, av) - s
    if name == "triangle":
        half_plane = np.maximum(-v, math.sqrt(3) / 2 * au + v / 2)  # bottom edge; the two slanted edges
        return half_plane - s / 2  # inradius = circumradius / 2
    if name == "diamond":
        return (au + av - s) / math.sqrt(2)
    if name == "cross":
        w = s / 3
        return np.minimum(np.maximum(au - s, av - w), np.maximum(au - w, av - s))
    if name == "ring":
        return np.abs(np.hypot(u, v) - 0.75 * s) - 0.25 * s
    raise ValueError(f"shape must be one of {SHAPES}, got {name!r}")


def shape_coverage(name, cx, cy, s, resolution):
    """Anti-aliased coverage in [0, 1] of one shape class, for a batch of centres and sizes.

    Math: a = clip(1/2 - d, 0, 1), d the signed distance of the module docstring.

    name: one of SHAPES; cx, cy: (N,) centre column and row in pixels (pixel i covers [i, i + 1));
    s: (N,) sizes in pixels; resolution: H = W. Returns (N, H, W) float64.
    """
    cx, cy, s = (np.asarray(a, dtype=np.float64).reshape(-1, 1, 1) for a in (cx, cy, s))  # (N, 1, 1)
    centres = np.arange(resolution, dtype=np.float64) + 0.5
    u = centres[None, None, :] - cx  # (N, 1, W)
    v = cy - centres[None, :, None]  # (N, H, 1): rows grow downward, v grows upward
    u, v = np.broadcast_arrays(u, v)  # (N, H, W)
    return np.clip(0.5 - _signed_distance(name, u, v, s), 0.0, 1.0)


def _check_classes(classes):
    """The class names as a tuple: an int K means SHAPES[:K]; names must be known and distinct."""
    if isinstance(classes, Integral) and not isinstance(classes, bool):
        if not 1 <= classes <= len(SHAPES):
            raise ValueError(f"classes must be an int in [1, {len(SHAPES)}] or names from {SHAPES}, got {classes}")
        return SHAPES[:classes]
    names = (classes,) if isinstance(classes, str) else tuple(classes)
    unknown = [c for c in names if c not in SHAPES]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(f"classes must be distinct names from {SHAPES} (at least one), got {classes!r}")
    return names


def _check_args(n, resolution, colors, seed):
    """Raise ValueError naming the argument unless n, resolution, colors and seed are valid."""
    for name, value, low in (("n", n, 1), ("resolution", resolution, MIN_RESOLUTION), ("seed", seed, 0)):
        if not isinstance(value, Integral) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if colors not in (1, 3):
        raise ValueError(f"colors must be 1 (grey) or 3 (RGB), got {colors!r}")


def load_shapes(n, resolution=32, colors=3, classes=SHAPES, seed=0, dtype=np.float32):
    """Generate n images of shapes on black, with balanced class labels.

    Math: x = 2 * colour * a - 1, a the coverage of the shape (shape_coverage); background -1.
    Per image, from np.random.default_rng(seed): the class (a shuffled arange(n) % K, so class
    counts differ by at most one), the size s = U(0.45, 0.9) * (resolution / 2 - 1), the centre
    uniform over positions that keep the shape and a one-pixel rim inside the frame, and the colour:
    grey level U(0.5, 1), or an RGB vector U(0, 1)^3 rescaled so its largest channel is U(0.6, 1).

    n: number of images >= 1; resolution: H = W >= 8; colors: channels, 1 (grey) or 3 (RGB);
    classes: names from SHAPES (label k is classes[k]) or an int K for SHAPES[:K]; seed: int >= 0;
    dtype: np.float32 or np.float64 (rendered in float64, then cast: both dtypes agree).
    Returns x: (n, colors, resolution, resolution) in [-1, 1]; y: (n,) int64 in [0, K).
    """
    _check_dtype(dtype)
    _check_args(n, resolution, colors, seed)
    names = _check_classes(classes)
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % len(names)).astype(np.int64)  # balanced, shuffled
    s = rng.uniform(*SIZE_RANGE, size=n) * (resolution / 2 - 1)  # (n,) size in pixels
    # centre in [s + 1, resolution - s - 1]: every shape reaches at most s from its centre
    cx = s + 1 + rng.uniform(size=n) * (resolution - 2 * s - 2)
    cy = s + 1 + rng.uniform(size=n) * (resolution - 2 * s - 2)
    if colors == 1:
        colour = rng.uniform(0.5, 1.0, size=(n, 1))
    else:
        colour = rng.uniform(size=(n, 3))
        colour *= rng.uniform(0.6, 1.0, size=(n, 1)) / np.maximum(colour.max(axis=1, keepdims=True), 1e-12)
    x = np.empty((n, colors, resolution, resolution), dtype=np.dtype(dtype))
    for start in range(0, n, _CHUNK):  # a loop over chunks of images, each chunk vectorised
        idx = np.arange(start, min(start + _CHUNK, n))
        a = np.empty((idx.size, resolution, resolution))  # (chunk, H, W) coverage
        for k, name in enumerate(names):
            mine = y[idx] == k
            a[mine] = shape_coverage(name, cx[idx][mine], cy[idx][mine], s[idx][mine], resolution)
        x[idx] = 2 * colour[idx, :, None, None] * a[:, None] - 1  # (chunk, C, H, W)
    return x, y

"""Finite-difference gradient checks: the oracle for every hand-derived backward pass.

A backward pass is checked through the "fake loss" L = sum(forward(inputs) * dy) for a random dy
(the dout-projected check of cs231n / llm.c): dL/d(input) must equal backward(dy) for every input
and parameter. Everything runs in float64.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from refdiff.backend import to_numpy

# Centered differences have error O(h^2 f''') + O(eps / h); h = 1e-5 balances them in float64.
STEP = 1e-5
# Relative error allowed between the analytic and the numerical gradient (docs/design.md: below 1e-6).
RTOL = 1e-6
# Tensors up to this many elements are probed element by element; larger ones along DIRECTIONS random
# unit directions (a wrong entry of the gradient shows in every direction with a nonzero component on
# it). At most 2 x 8 forward calls per tensor: the per-parameter model checks probe ~130 tensors.
FULL_PROBE = 8
DIRECTIONS = 8


def numerical_gradient(loss: Callable[[dict], float], arrays: dict[str, np.ndarray], name: str,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Centered differences of ``loss`` with respect to ``arrays[name]``.

    Returns (directions, derivatives): for small tensors the unit vectors and the partial
    derivatives, for large ones DIRECTIONS random unit directions v and the directional derivatives
    (L(a + h v) - L(a - h v)) / 2h, to be compared with <grad, v>.
    """
    base = arrays[name]
    if base.size <= FULL_PROBE:
        directions = np.eye(base.size).reshape((base.size,) + base.shape)
    else:
        rng = np.random.default_rng(seed)
        directions = rng.standard_normal((DIRECTIONS,) + base.shape)
        directions /= np.sqrt(np.sum(directions**2, axis=tuple(range(1, directions.ndim)), keepdims=True))
    derivatives = np.empty(directions.shape[0])
    for i, v in enumerate(directions):
        plus = dict(arrays, **{name: base + STEP * v})
        minus = dict(arrays, **{name: base - STEP * v})
        derivatives[i] = (loss(plus) - loss(minus)) / (2 * STEP)
    return directions, derivatives


def relative_error(analytic: np.ndarray, numerical: np.ndarray) -> float:
    """max |a - n| / max(max |a|, max |n|): a scale-free error that ignores tiny entries' noise."""
    scale = max(np.max(np.abs(analytic)), np.max(np.abs(numerical)), 1e-12)
    return float(np.max(np.abs(analytic - numerical)) / scale)


def assert_gradients_match(loss: Callable[[dict], float], arrays: dict[str, np.ndarray],
                           grads: dict[str, np.ndarray], rtol: float = RTOL) -> None:
    """Every analytic gradient in ``grads`` matches finite differences of ``loss`` at ``arrays``.

    loss: maps a dict of float64 host arrays (same keys as ``arrays``) to the scalar fake loss;
    grads: analytic gradients (host arrays) for some or all keys of ``arrays``.
    """
    assert grads, "no gradients to check"
    for name, grad in grads.items():
        assert grad.shape == arrays[name].shape, f"{name}: gradient shape {grad.shape} != {arrays[name].shape}"
        directions, numerical = numerical_gradient(loss, arrays, name)
        analytic = np.tensordot(directions, grad, axes=grad.ndim)  # <grad, v> for every direction
        error = relative_error(analytic, numerical)
        assert error < rtol, f"{name}: relative error {error:.2e} >= {rtol:.0e}"


def fake_loss(backend, forward, dy):
    """L(arrays) = sum(forward(**arrays) * dy) on ``backend``, from float64 host arrays to a float."""
    def loss(arrays):
        y = forward(**{k: backend.asarray(v) for k, v in arrays.items()})
        return float(to_numpy(backend.xp.sum(y * backend.asarray(dy))))
    return loss

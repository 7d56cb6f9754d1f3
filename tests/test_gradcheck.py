"""The finite-difference oracle itself: it accepts a right gradient and rejects a wrong one."""

import numpy as np
import pytest

from gradcheck import assert_gradients_match


@pytest.mark.parametrize("size", [5, 300])  # element-wise probes, then random directions
def test_gradcheck_accepts_the_true_gradient_and_rejects_a_wrong_one(size):
    """For L(a, b) = sum(sin(a) * b): dL/da = cos(a) * b passes, and cos(a) * b * (1 + 1e-4) fails."""
    rng = np.random.default_rng(0)
    arrays = {"a": rng.standard_normal(size), "b": rng.standard_normal(size)}

    def loss(d):
        return float(np.sum(np.sin(d["a"]) * d["b"]))

    right = {"a": np.cos(arrays["a"]) * arrays["b"], "b": np.sin(arrays["a"])}
    assert_gradients_match(loss, arrays, right)
    with pytest.raises(AssertionError, match="a: relative error"):
        assert_gradients_match(loss, arrays, {"a": right["a"] * (1 + 1e-4)})

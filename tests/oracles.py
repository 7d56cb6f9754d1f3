"""Oracles for the tests: models whose answers are known in closed form, and diffusers' test fixtures.

GaussianMixtureDenoiser, the exact optimal denoiser of a diagonal Gaussian mixture (see its module for the
closed form), lives in the library as refdiff.models.gaussian_mixture and is re-exported here, so the sampler
and likelihood tests keep importing it from ``oracles``. A label y = k < K conditions on component k
(class-conditional data); y = K is the null label (the unconditional mixture), as in classifier-free guidance.
"""

from __future__ import annotations

import numpy as np

from refdiff.backend import namespace
from refdiff.models.gaussian_mixture import GaussianMixtureDenoiser

__all__ = ["GAUSSIAN", "MIXTURE", "GaussianMixtureDenoiser", "diffusers_dummy_model", "diffusers_dummy_sample"]


# Data used across the sampler tests: one 2-D Gaussian, and two well-separated 2-D components.
GAUSSIAN = dict(weights=[1.0], means=[[0.5, -0.3]], stds=[[0.3, 0.8]])
MIXTURE = dict(weights=[0.3, 0.7], means=[[-2.0, 0.0], [2.0, 1.0]], stds=[[0.3, 0.5], [0.4, 0.3]])


def diffusers_dummy_model(x, t, y=None):
    """diffusers' scheduler-test model: model(x, t) = x * t / (t + 1), t broadcast over x."""
    xp = namespace(x)
    t = xp.reshape(xp.astype(t, x.dtype), (-1,) + (1,) * (x.ndim - 1))
    return x * t / (t + 1)


def diffusers_dummy_sample(backend, dtype):
    """diffusers' deterministic sample: arange(768) as (3, 8, 8, 4) / 768, axes (3, 0, 1, 2) -> (4, 3, 8, 8)."""
    host = (np.arange(768).reshape(3, 8, 8, 4) / 768).transpose(3, 0, 1, 2)
    return backend.asarray(host, dtype=backend.dtype(dtype))

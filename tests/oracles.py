"""Exact optimal denoisers: models whose answers are known in closed form, to test samplers without training.

For data x0 ~ sum_k w_k N(mu_k, diag(s_k^2)) and x_t = a x0 + b eps (a = sqrt(alpha_bar),
b = sqrt(1 - alpha_bar)), the marginal is p(x_t) = sum_k w_k N(a mu_k, diag(a^2 s_k^2 + b^2)) and

    E[x0 | x_t] = sum_k r_k(x_t) (mu_k + a s_k^2 / (a^2 s_k^2 + b^2) (x_t - a mu_k)),
    r_k(x_t) = w_k N(x_t; a mu_k, a^2 s_k^2 + b^2) / p(x_t),

so the MSE-optimal eps, x0 and v predictions are exact. A label y = k < K conditions on component k
(class-conditional data); y = K is the null label (the unconditional mixture), as in classifier-free
guidance. One Gaussian is the case K = 1.
"""

from __future__ import annotations

import math

import numpy as np

from refdiff.backend import asarray, device, gather, namespace
from refdiff.schedules import Schedule


# Data used across the sampler tests: one 2-D Gaussian, and two well-separated 2-D components.
GAUSSIAN = dict(weights=[1.0], means=[[0.5, -0.3]], stds=[[0.3, 0.8]])
MIXTURE = dict(weights=[0.3, 0.7], means=[[-2.0, 0.0], [2.0, 1.0]], stds=[[0.3, 0.5], [0.4, 0.3]])


class GaussianMixtureDenoiser:
    """The optimal denoiser of a diagonal Gaussian mixture in D dimensions; a refdiff model callable.

    weights: (K,); means, stds: (K, D); data and samples are (N, D) arrays.
    """

    def __init__(self, schedule: Schedule, weights, means, stds, prediction: str = "eps"):
        self.schedule = schedule
        self.weights = np.asarray(weights, dtype=np.float64)
        self.means = np.asarray(means, dtype=np.float64)
        self.stds = np.asarray(stds, dtype=np.float64)
        self.prediction = prediction
        self.K, self.D = self.means.shape

    def _log_weights(self, y, xt):
        """(N, K) log mixture weights, restricted to component y where y < K (null label K: all)."""
        xp = namespace(xt)
        log_w = asarray(np.log(self.weights), like=xt, dtype=xt.dtype)[None, :]  # (1, K)
        if y is None:
            return log_w
        k = xp.arange(self.K, device=device(xt))[None, :]
        conditioned = (y[:, None] < self.K) & (k != y[:, None])  # (N, K): components a label excludes
        return xp.where(conditioned, xp.asarray(-math.inf, dtype=xt.dtype, device=device(xt)), log_w)

    def _components(self, xt, alpha_bar):
        """Per-component marginal variance (N, K, D) and log-density terms at x_t (N, K)."""
        xp = namespace(xt)
        a = xp.sqrt(alpha_bar)[:, :, None]                          # (N, 1, 1)
        mu = asarray(self.means, like=xt, dtype=xt.dtype)[None, ...]     # (1, K, D)
        s2 = asarray(self.stds**2, like=xt, dtype=xt.dtype)[None, ...]   # (1, K, D)
        var = a * a * s2 + (1.0 - alpha_bar)[:, :, None]            # (N, K, D)
        diff = xt[:, None, :] - a * mu                              # (N, K, D)
        log_density = -0.5 * xp.sum(xp.log(2 * math.pi * var) + diff * diff / var, axis=2)  # (N, K)
        return a, mu, s2, var, diff, log_density

    def responsibilities(self, xt, alpha_bar, y=None):
        """(N, K) posterior component probabilities r_k(x_t)."""
        xp = namespace(xt)
        *_, log_density = self._components(xt, alpha_bar)
        logits = self._log_weights(y, xt) + log_density
        logits = logits - xp.max(logits, axis=1, keepdims=True)
        r = xp.exp(logits)
        return r / xp.sum(r, axis=1, keepdims=True)

    def x0_mean(self, xt, alpha_bar, y=None):
        """E[x0 | x_t] (N, D) at noise level alpha_bar (N, 1)."""
        xp = namespace(xt)
        a, mu, s2, var, diff, _ = self._components(xt, alpha_bar)
        per_component = mu + a * s2 / var * diff                    # (N, K, D)
        r = self.responsibilities(xt, alpha_bar, y)[:, :, None]     # (N, K, 1)
        return xp.sum(r * per_component, axis=1)

    def score(self, xt, alpha_bar, y=None):
        """grad_x log p(x_t | y) (N, D): sum_k r_k * (-(x_t - a mu_k) / var_k)."""
        xp = namespace(xt)
        _, _, _, var, diff, _ = self._components(xt, alpha_bar)
        r = self.responsibilities(xt, alpha_bar, y)[:, :, None]
        return xp.sum(r * (-diff / var), axis=1)

    def __call__(self, xt, t, y=None):
        """The optimal model output (eps, x0 or v) at (x_t, t) for integer steps t."""
        alpha_bar = gather(self.schedule.alpha_bar, t, xt)         # (N, 1)
        x0 = self.x0_mean(xt, alpha_bar, y)
        a, b = gather(self.schedule.sqrt_alpha_bar, t, xt), gather(self.schedule.sqrt_one_minus_alpha_bar, t, xt)
        eps = (xt - a * x0) / b
        return {"eps": eps, "x0": x0, "v": a * eps - b * x0}[self.prediction]

    def sample(self, n: int, seed: int, y=None) -> np.ndarray:
        """n host float64 draws of x0 (from component y when given)."""
        rng = np.random.default_rng(seed)
        k = rng.choice(self.K, size=n, p=self.weights) if y is None else np.full(n, y)
        return self.means[k] + self.stds[k] * rng.standard_normal((n, self.D))

    def log_prob(self, x0: np.ndarray) -> np.ndarray:
        """(N,) exact log density of host data x0 (N, D), in nats."""
        var = self.stds**2                                           # (K, D)
        diff = x0[:, None, :] - self.means[None]                     # (N, K, D)
        log_k = np.log(self.weights) - 0.5 * np.sum(np.log(2 * math.pi * var) + diff**2 / var, axis=2)
        top = log_k.max(axis=1, keepdims=True)
        return (top + np.log(np.exp(log_k - top).sum(axis=1, keepdims=True)))[:, 0]

    def classifier_grad(self, xt, t, y):
        """The exact classifier gradient grad_x log p(y | x_t) (N, D) at integer steps t (N,).

        Math: p(y | x_t) = p(x_t | y) p(y) / p(x_t), so grad_x log p(y | x_t) = score(x_t | y) - score(x_t),
        with score(x_t) the unconditional mixture's (the null label K). Labels y must be components (< K).
        """
        alpha_bar = gather(self.schedule.alpha_bar, t, xt)         # (N, 1)
        return self.score(xt, alpha_bar, y) - self.score(xt, alpha_bar, None)

    # Fractional steps and noise levels, for the sigma-space samplers of refdiff.samplers.karras (additions:
    # __call__ above is unchanged and still takes integer t only).

    def alpha_bar_at(self, t, xt):
        """(N, 1) alpha_bar at steps t (N,): gathered for integer t; for float t, 1 / (1 + sigma^2) with log sigma
        interpolated linearly between the two neighbouring steps, the inverse of karras.sigma_to_t, so a
        sampler's off-grid sigma is met exactly."""
        xp = namespace(xt)
        if xp.isdtype(t.dtype, "integral"):
            return gather(self.schedule.alpha_bar, t, xt)
        T = self.schedule.T
        t = xp.clip(t, 0.0, float(T - 1))
        lo = xp.astype(xp.clip(xp.floor(t), 0.0, float(max(T - 2, 0))), xp.int64)   # (N,)
        hi = xp.clip(lo + 1, 0, T - 1)
        w = xp.reshape(t - xp.astype(lo, t.dtype), (-1,) + (1,) * (xt.ndim - 1))    # (N, 1)
        log_sigma = np.log(self.schedule.sigmas)
        log_s = (1.0 - w) * gather(log_sigma, lo, xt) + w * gather(log_sigma, hi, xt)
        return 1.0 / (1.0 + xp.exp(2.0 * log_s))

    def continuous_t(self, xt, t, y=None):
        """The optimal model output (eps, x0 or v) at (x_t, t) for integer or float (fractional) steps t."""
        xp = namespace(xt)
        alpha_bar = self.alpha_bar_at(t, xt)
        x0 = self.x0_mean(xt, alpha_bar, y)
        a, b = xp.sqrt(alpha_bar), xp.sqrt(1.0 - alpha_bar)
        eps = (xt - a * x0) / b
        return {"eps": eps, "x0": x0, "v": a * eps - b * x0}[self.prediction]

    def denoise(self, x, sigma, t=None, y=None):
        """The exact denoiser D(x; sigma) = E[x0 | x0 + sigma eps = x] for x (N, D) in the sigma scale, with the
        signature of a karras step's denoiser (t is not needed: sigma says everything)."""
        xp = namespace(x)
        alpha_bar = 1.0 / (1.0 + float(sigma) ** 2)
        ab = xp.full((x.shape[0], 1), alpha_bar, dtype=x.dtype, device=device(x))
        return self.x0_mean(x * math.sqrt(alpha_bar), ab, y)


def diffusers_dummy_model(x, t, y=None):
    """diffusers' scheduler-test model: model(x, t) = x * t / (t + 1), t broadcast over x."""
    xp = namespace(x)
    t = xp.reshape(xp.astype(t, x.dtype), (-1,) + (1,) * (x.ndim - 1))
    return x * t / (t + 1)


def diffusers_dummy_sample(backend, dtype):
    """diffusers' deterministic sample: arange(768) as (3, 8, 8, 4) / 768, axes (3, 0, 1, 2) -> (4, 3, 8, 8)."""
    host = (np.arange(768).reshape(3, 8, 8, 4) / 768).transpose(3, 0, 1, 2)
    return backend.asarray(host, dtype=backend.dtype(dtype))

"""The exact optimal denoiser of a diagonal Gaussian mixture: a model whose outputs are known in closed form.

Math. Data x0 ~ sum_k w_k N(mu_k, diag(s_k^2)), noised as x_t = a x0 + b eps (a = sqrt(alpha_bar_t),
b = sqrt(1 - alpha_bar_t); Ho et al. 2020, eq. 4). Within component k, (x0, x_t) is jointly Gaussian, so

    p(x_t) = sum_k w_k N(x_t; a mu_k, diag(v_k)),  v_k = a^2 s_k^2 + b^2         (a mu_k + a s_k z + b eps)
    E[x0 | x_t] = sum_k r_k(x_t) (mu_k + a s_k^2 / v_k (x_t - a mu_k)),  r_k = w_k N(x_t; a mu_k, v_k) / p(x_t)

(Bayes' rule picks the component; within it, E[x0 | x_t] = mu_k + Cov(x0, x_t) Var(x_t)^-1 (x_t - a mu_k)).
The MSE-optimal outputs follow exactly: x0* = E[x0 | x_t], eps* = (x_t - a x0*) / b, v* = a eps* - b x0*, and
the score is grad log p(x_t) = -eps* / b = sum_k r_k (a mu_k - x_t) / v_k.

With it every sampler, guidance mode and likelihood loop can be checked against exact answers, and examples can
sample without training. ``from_data`` builds the denoiser of an EMPIRICAL distribution blurred by a small std
(one component per data point): the denoiser a network trained to convergence on that data set approaches,
which memorizes it; its samples are data points plus N(0, std^2) noise.

Labels: y = k < K conditions on component k (class-conditional data); y = K is the null label (the whole
mixture), as in classifier-free guidance. One Gaussian is the case K = 1.
"""

from __future__ import annotations

import math

import numpy as np

from refdiff.backend import asarray, device, gather, namespace, to_numpy
from refdiff.diffusion import PREDICTIONS
from refdiff.schedules import Schedule


def _check_mixture(weights, means, stds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(K,) weights, (K, D) means and stds as float64, after checking shapes and ranges."""
    w, mu, s = (np.asarray(a, dtype=np.float64) for a in (weights, means, stds))
    if mu.ndim != 2 or mu.shape[0] < 1 or mu.shape[1] < 1:
        raise ValueError(f"means must be a (K, D) array with K, D >= 1, got shape {mu.shape}")
    if w.shape != (mu.shape[0],) or s.shape != mu.shape:
        raise ValueError(f"weights must have shape ({mu.shape[0]},) and stds {mu.shape} to match means, "
                         f"got {w.shape} and {s.shape}")
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(s)) and np.all(s > 0)):
        raise ValueError("means must be finite and stds finite and > 0")
    if not (np.all(np.isfinite(w)) and np.all(w >= 0) and abs(w.sum() - 1.0) < 1e-9):
        raise ValueError(f"weights must be >= 0 and sum to 1, got sum {w.sum()!r}")
    return w, mu, s


class GaussianMixtureDenoiser:
    """The optimal denoiser of a diagonal Gaussian mixture in D dimensions; a refdiff model callable.

    schedule: the (full, not respaced) schedule whose integer steps t the model is fed; weights: (K,) summing
    to 1; means, stds: (K, D); prediction: "eps", "x0" or "v"; event_shape: the shape of one sample, with
    prod(event_shape) = D (default (D,)). Inputs x_t are (N, *event_shape) on any backend (flattened to (N, D)
    inside); ``sample`` returns host (n, *event_shape) arrays.
    """

    def __init__(self, schedule: Schedule, weights, means, stds, prediction: str = "eps",
                 event_shape: tuple[int, ...] | None = None):
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a refdiff.schedules.Schedule, got {type(schedule).__name__}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
        self.schedule = schedule
        self.weights, self.means, self.stds = _check_mixture(weights, means, stds)
        self.prediction = prediction
        self.K, self.D = self.means.shape
        self.event_shape = (self.D,) if event_shape is None else tuple(int(n) for n in event_shape)
        if math.prod(self.event_shape) != self.D:
            raise ValueError(f"event_shape must hold D = {self.D} values, got {self.event_shape}")
        # One std shared by every component and dimension (``from_data``): the matrix-product path below.
        self.isotropic = bool(np.all(self.stds == self.stds.flat[0]))
        self._mu_sq = np.sum(self.means**2, axis=1)                  # (K,) |mu_k|^2

    @classmethod
    def from_data(cls, x0, std: float, schedule: Schedule, prediction: str = "eps") -> "GaussianMixtureDenoiser":
        """The optimal denoiser of the empirical distribution of x0 blurred by ``std``.

        Math: p(x0) = (1 / M) sum_i N(x0; x_i, std^2 I), one equal-weight component per data point (a
              Gaussian kernel density estimate); as std -> 0 its denoiser tends to the one of the data
              points themselves, which every sampler maps onto a training point (memorization).

        x0: (M, ...) data (any backend; copied to the host); std > 0 in data units. The model takes and
        returns (N, ...) arrays shaped like one data point, so it denoises images (N, C, H, W) directly.
        """
        host = np.asarray(to_numpy(x0), dtype=np.float64)
        if host.ndim < 2 or host.shape[0] < 1 or not np.all(np.isfinite(host)):
            raise ValueError(f"x0 must be a finite (M, ...) array with M >= 1, got shape {host.shape}")
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not 0 < std < math.inf:
            raise ValueError(f"std must be a finite number > 0, got {std!r}")
        M = host.shape[0]
        means = host.reshape(M, -1)                                  # (M, D)
        return cls(schedule, np.full(M, 1.0 / M), means, np.full(means.shape, float(std)), prediction,
                   event_shape=host.shape[1:])

    # ---------------------------------------------------------------------------------------------------
    # The closed form on flat (N, D) inputs, alpha_bar (N, 1)

    def _flat(self, x):
        """x (N, *event_shape) or (N, D) as (N, D)."""
        if x.ndim < 2 or math.prod(x.shape[1:]) != self.D:
            raise ValueError(f"x must have shape (N, {', '.join(map(str, self.event_shape))}) or (N, {self.D}), "
                             f"got {tuple(x.shape)}")
        return namespace(x).reshape(x, (x.shape[0], self.D))

    def _table(self, table: np.ndarray, xf):
        """A float64 host table in xf's library, device and dtype."""
        return asarray(table, like=xf, dtype=xf.dtype)

    def _log_weights(self, y, xf):
        """(N, K) log mixture weights, restricted to component y where y < K (null label K: all)."""
        xp = namespace(xf)
        log_w = self._table(np.log(self.weights), xf)[None, :]      # (1, K)
        if y is None:
            return log_w
        k = xp.arange(self.K, device=device(xf))[None, :]
        excluded = (y[:, None] < self.K) & (k != y[:, None])          # (N, K): components a label excludes
        return xp.where(excluded, xp.asarray(-math.inf, dtype=xf.dtype, device=device(xf)), log_w)

    def _components(self, xf, alpha_bar):
        """Per-component a (N, 1, 1), mu (1, K, D), s^2 (1, K, D), v_k (N, K, D), x_t - a mu_k and log N_k (N, K)."""
        xp = namespace(xf)
        a = xp.sqrt(alpha_bar)[:, :, None]                          # (N, 1, 1)
        mu = self._table(self.means, xf)[None, ...]                  # (1, K, D)
        s2 = self._table(self.stds**2, xf)[None, ...]                # (1, K, D)
        var = a * a * s2 + (1.0 - alpha_bar)[:, :, None]             # (N, K, D)
        diff = xf[:, None, :] - a * mu                              # (N, K, D)
        log_density = -0.5 * xp.sum(xp.log(2 * math.pi * var) + diff * diff / var, axis=2)  # (N, K)
        return a, mu, s2, var, diff, log_density

    def _iso_logits(self, xf, alpha_bar):
        """(N, K) log N(x_t; a mu_k, v I) up to terms constant in k, for one shared std s (v = a^2 s^2 + b^2).

        Math: -|x_t - a mu_k|^2 / (2 v) = (a x_t . mu_k - a^2 |mu_k|^2 / 2) / v - |x_t|^2 / (2 v), and the last term
        and the normalizer -D/2 log(2 pi v) are the same for every k: a matrix product instead of (N, K, D) arrays.
        """
        xp = namespace(xf)
        a, s2 = xp.sqrt(alpha_bar), float(self.stds.flat[0]) ** 2    # (N, 1), scalar
        var = alpha_bar * s2 + (1.0 - alpha_bar)                     # (N, 1)
        cross = xp.matmul(xf, xp.permute_dims(self._table(self.means, xf), (1, 0)))   # (N, K) x_t . mu_k
        return (a * cross - 0.5 * alpha_bar * self._table(self._mu_sq, xf)[None, :]) / var

    def _responsibilities(self, xf, alpha_bar, y):
        xp = namespace(xf)
        log_density = self._iso_logits(xf, alpha_bar) if self.isotropic else self._components(xf, alpha_bar)[-1]
        logits = self._log_weights(y, xf) + log_density
        logits = logits - xp.max(logits, axis=1, keepdims=True)     # softmax without overflow
        r = xp.exp(logits)
        return r / xp.sum(r, axis=1, keepdims=True)

    def _x0_mean(self, xf, alpha_bar, y):
        xp = namespace(xf)
        r = self._responsibilities(xf, alpha_bar, y)                 # (N, K)
        if self.isotropic:
            # sum_k r_k (mu_k + a s^2 / v (x - a mu_k)) = (b^2 / v) sum_k r_k mu_k + (a s^2 / v) x
            s2 = float(self.stds.flat[0]) ** 2
            var = alpha_bar * s2 + (1.0 - alpha_bar)                 # (N, 1)
            r_mu = xp.matmul(r, self._table(self.means, xf))        # (N, D)
            return (1.0 - alpha_bar) / var * r_mu + xp.sqrt(alpha_bar) * s2 / var * xf
        a, mu, s2, var, diff, _ = self._components(xf, alpha_bar)
        return xp.sum(r[:, :, None] * (mu + a * s2 / var * diff), axis=1)

    def _score(self, xf, alpha_bar, y):
        xp = namespace(xf)
        r = self._responsibilities(xf, alpha_bar, y)                 # (N, K)
        if self.isotropic:
            var = alpha_bar * float(self.stds.flat[0]) ** 2 + (1.0 - alpha_bar)
            r_mu = xp.matmul(r, self._table(self.means, xf))        # (N, D)
            return (xp.sqrt(alpha_bar) * r_mu - xf) / var
        _, _, _, var, diff, _ = self._components(xf, alpha_bar)
        return xp.sum(r[:, :, None] * (-diff / var), axis=1)

    def _output(self, xt, alpha_bar, y):
        """The model output (eps, x0 or v) at x_t (N, *event) with alpha_bar (N, 1), shaped like x_t."""
        xp = namespace(xt)
        xf = self._flat(xt)
        x0 = self._x0_mean(xf, alpha_bar, y)
        a, b = xp.sqrt(alpha_bar), xp.sqrt(1.0 - alpha_bar)
        eps = (xf - a * x0) / b
        out = {"eps": eps, "x0": x0, "v": a * eps - b * x0}[self.prediction]
        return xp.reshape(out, xt.shape)

    # ---------------------------------------------------------------------------------------------------
    # Public quantities at a noise level alpha_bar (N, 1); x_t (N, *event_shape) or (N, D)

    def responsibilities(self, xt, alpha_bar, y=None):
        """(N, K) posterior component probabilities r_k(x_t)."""
        return self._responsibilities(self._flat(xt), alpha_bar, y)

    def x0_mean(self, xt, alpha_bar, y=None):
        """E[x0 | x_t] at noise level alpha_bar (N, 1), shaped like x_t."""
        return namespace(xt).reshape(self._x0_mean(self._flat(xt), alpha_bar, y), xt.shape)

    def score(self, xt, alpha_bar, y=None):
        """grad_x log p(x_t | y) = sum_k r_k (a mu_k - x_t) / v_k, shaped like x_t."""
        return namespace(xt).reshape(self._score(self._flat(xt), alpha_bar, y), xt.shape)

    # ---------------------------------------------------------------------------------------------------
    # The model protocol: integer steps, fractional steps, noise levels sigma

    def __call__(self, xt, t, y=None):
        """The optimal model output (eps, x0 or v) at (x_t, t) for integer steps t (N,)."""
        return self._output(xt, gather(self.schedule.alpha_bar, t, self._flat(xt)), y)

    def alpha_bar_at(self, t, xt):
        """(N, 1) alpha_bar at steps t (N,): gathered for integer t; for float t, 1 / (1 + sigma^2) with log sigma
        interpolated linearly between the two neighbouring steps, the inverse of karras.sigma_to_t, so a
        sampler's off-grid sigma is met exactly."""
        xp = namespace(xt)
        xf = self._flat(xt)
        if xp.isdtype(t.dtype, "integral"):
            return gather(self.schedule.alpha_bar, t, xf)
        T = self.schedule.T
        t = xp.clip(t, 0.0, float(T - 1))
        lo = xp.astype(xp.clip(xp.floor(t), 0.0, float(max(T - 2, 0))), xp.int64)   # (N,)
        hi = xp.clip(lo + 1, 0, T - 1)
        w = xp.reshape(t - xp.astype(lo, t.dtype), (-1, 1))                          # (N, 1)
        log_sigma = np.log(self.schedule.sigmas)
        log_s = (1.0 - w) * gather(log_sigma, lo, xf) + w * gather(log_sigma, hi, xf)
        return 1.0 / (1.0 + xp.exp(2.0 * log_s))

    def continuous_t(self, xt, t, y=None):
        """The optimal model output (eps, x0 or v) at (x_t, t) for integer or float (fractional) steps t."""
        return self._output(xt, self.alpha_bar_at(t, xt), y)

    def denoise(self, x, sigma, t=None, y=None):
        """The exact denoiser D(x; sigma) = E[x0 | x0 + sigma eps = x] for x (N, *event) in the sigma scale, with
        the signature of a karras step's denoiser (t is not needed: sigma says everything)."""
        xp = namespace(x)
        alpha_bar = 1.0 / (1.0 + float(sigma) ** 2)
        ab = xp.full((x.shape[0], 1), alpha_bar, dtype=x.dtype, device=device(x))
        return self.x0_mean(x * math.sqrt(alpha_bar), ab, y)

    def classifier_grad(self, xt, t, y):
        """The exact classifier gradient grad_x log p(y | x_t) at integer steps t (N,), shaped like x_t.

        Math: p(y | x_t) = p(x_t | y) p(y) / p(x_t), so grad_x log p(y | x_t) = score(x_t | y) - score(x_t),
        with score(x_t) the unconditional mixture's (the null label K). Labels y must be components (< K).
        """
        xf = self._flat(xt)
        alpha_bar = gather(self.schedule.alpha_bar, t, xf)          # (N, 1)
        grad = self._score(xf, alpha_bar, y) - self._score(xf, alpha_bar, None)
        return namespace(xt).reshape(grad, xt.shape)

    # ---------------------------------------------------------------------------------------------------
    # The data distribution itself (host NumPy, float64)

    def sample(self, n: int, seed: int, y=None) -> np.ndarray:
        """n host float64 draws of x0, (n, *event_shape) (from component y when given)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be an integer >= 0, got {n!r}")
        if y is not None and not 0 <= int(y) < self.K:
            raise ValueError(f"y must be a component in [0, {self.K}) or None, got {y!r}")
        rng = np.random.default_rng(seed)
        k = rng.choice(self.K, size=n, p=self.weights) if y is None else np.full(n, int(y))
        x0 = self.means[k] + self.stds[k] * rng.standard_normal((n, self.D))   # (n, D)
        return x0.reshape(n, *self.event_shape)

    def log_prob(self, x0: np.ndarray) -> np.ndarray:
        """(N,) exact log density of host data x0 (N, *event_shape) or (N, D), in nats."""
        x0 = np.asarray(x0, dtype=np.float64)
        x0 = x0.reshape(x0.shape[0], -1)                            # (N, D)
        var = self.stds**2                                           # (K, D)
        diff = x0[:, None, :] - self.means[None]                     # (N, K, D)
        log_k = np.log(self.weights) - 0.5 * np.sum(np.log(2 * math.pi * var) + diff**2 / var, axis=2)
        top = log_k.max(axis=1, keepdims=True)
        return (top + np.log(np.exp(log_k - top).sum(axis=1, keepdims=True)))[:, 0]

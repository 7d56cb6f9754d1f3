"""Drawing the training step t: uniformly, or by importance sampling on the loss's second moment.

Uniform t is Algorithm 1 of Ho et al. 2020; the importance sampler is improved DDPM's for the
pure-VLB loss (Nichol & Dhariwal 2021, Sec. 3.3). Both draw on the host from a refdiff generator, so
one seed gives the same steps on every backend (docs/design.md rule 4); the weights they return
keep the training loss an unbiased estimate of the uniform-t loss.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from refdiff.backend import asarray, device, namespace, to_numpy


class LossSecondMomentSampler:
    """Importance sampling of t by the loss's second moment (Nichol & Dhariwal 2021, Sec. 3.3).

    Math: p_t = (1 - u) sqrt(E[L_t^2]) / sum_s sqrt(E[L_s^2]) + u / T,  weight_t = 1 / (T p_t)
    E[L_t^2] is the mean of the last ``history`` losses seen at t; p is uniform until every t has
    ``history`` of them. u = ``uniform_prob`` (0.001 in improved DDPM's code) keeps every t drawn.
    The weights keep the loss unbiased: E_{t~p}[weight_t L_t] = (1/T) sum_t L_t.

    Lives on the host (NumPy float64). ``get_state`` / ``set_state`` round-trip it as two plain arrays
    for checkpoints: "history" (T, history) float64 and "counts" (T,) int64.
    """

    def __init__(self, T: int, history: int = 10, uniform_prob: float = 0.001):
        for name, value, low in (("T", T, 1), ("history", history, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not 0.0 <= uniform_prob <= 1.0:
            raise ValueError(f"uniform_prob must lie in [0, 1], got {uniform_prob!r}")
        self.T, self.history, self.uniform_prob = int(T), int(history), float(uniform_prob)
        self._losses = np.zeros((self.T, self.history), dtype=np.float64)  # (T, history), oldest first
        self._counts = np.zeros(self.T, dtype=np.int64)                     # (T,) losses seen, capped

    @property
    def warmed_up(self) -> bool:
        """True once every step t has ``history`` losses."""
        return bool(np.all(self._counts == self.history))

    def probabilities(self) -> np.ndarray:
        """(T,) float64 p_t: uniform before warm-up, then proportional to sqrt(E[L_t^2]) mixed with u."""
        if not self.warmed_up:
            return np.full(self.T, 1.0 / self.T)
        rms = np.sqrt(np.mean(self._losses**2, axis=1))                     # (T,) sqrt(E[L_t^2])
        return (1.0 - self.uniform_prob) * rms / np.sum(rms) + self.uniform_prob / self.T

    def sample(self, N: int, generator) -> tuple[np.ndarray, np.ndarray]:
        """N steps t ~ p by inverse CDF of one uniform draw each, and their weights 1 / (T p_t).

        Returns (t (N,) int64, weights (N,) float64), host NumPy.
        """
        p = self.probabilities()
        cdf = np.cumsum(p)
        u = generator.uniform((N,)) * cdf[-1]                               # cdf[-1] == 1 up to rounding
        t = np.minimum(np.searchsorted(cdf, u, side="right"), self.T - 1).astype(np.int64)
        return t, 1.0 / (self.T * p[t])

    def update(self, t: Any, losses: Any) -> None:
        """Record per-sample losses (N,) at steps t (N,) (any backend); each t keeps its last ``history``."""
        t, losses = to_numpy(t), to_numpy(losses).astype(np.float64)
        if t.ndim != 1 or losses.shape != t.shape:
            raise ValueError(f"t and losses must be (N,) arrays of one shape, got {t.shape}, {losses.shape}")
        if t.size and (t.min() < 0 or t.max() >= self.T):
            raise ValueError(f"t must lie in [0, {self.T}), got [{t.min()}, {t.max()}]")
        if not np.all(np.isfinite(losses)):
            raise ValueError("losses must be finite")
        for step, value in zip(t.tolist(), losses.tolist()):
            k = self._counts[step]
            if k == self.history:                                            # drop the oldest
                self._losses[step, :-1] = self._losses[step, 1:]
                k -= 1
            self._losses[step, k] = value
            self._counts[step] = k + 1

    def get_state(self) -> dict[str, np.ndarray]:
        """{"history": (T, history) float64 losses, oldest first; "counts": (T,) int64}, copies."""
        return {"history": self._losses.copy(), "counts": self._counts.copy()}

    def set_state(self, state: dict) -> None:
        """Restore a state saved by ``get_state``."""
        losses, counts = np.asarray(state["history"], np.float64), np.asarray(state["counts"], np.int64)
        if losses.shape != self._losses.shape or counts.shape != self._counts.shape:
            raise ValueError(f"state must hold history {self._losses.shape} and counts {self._counts.shape}, "
                             f"got {losses.shape} and {counts.shape}")
        if np.any((counts < 0) | (counts > self.history)):
            raise ValueError(f"state counts must lie in [0, {self.history}]")
        self._losses, self._counts = losses.copy(), counts.copy()


def sample_timesteps(T: int, N: int, generator, like: Any, method: Any = "uniform"):
    """N training steps t in [0, T) and their importance weights, on like's backend.

    method: "uniform" (t ~ U{0, ..., T-1}, weights 1) or a LossSecondMomentSampler (its p_t and
    weights 1 / (T p_t)). Drawn on the host by ``generator`` (a refdiff.backend.Generator), so one
    seed gives the same steps on every backend.
    like: a floating array. Returns (t (N,) int64, weights (N,) in like's dtype).
    """
    if isinstance(N, bool) or not isinstance(N, (int, np.integer)) or N < 1:
        raise ValueError(f"N must be an integer >= 1, got {N!r}")
    xp = namespace(like)
    if not xp.isdtype(like.dtype, "real floating"):
        raise TypeError(f"like must be a real floating array, got dtype {like.dtype}")
    if isinstance(method, LossSecondMomentSampler):
        if method.T != T:
            raise ValueError(f"the sampler has T={method.T}, but T={T!r} was asked for")
        t, w = method.sample(N, generator)
        return asarray(t, like=like), asarray(w, like=like, dtype=like.dtype)
    if method != "uniform":
        raise ValueError(f"method must be 'uniform' or a LossSecondMomentSampler, got {method!r}")
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"T must be an integer >= 1, got {T!r}")
    t = generator.integers(0, T, (N,), like=like)
    return t, xp.ones((N,), dtype=like.dtype, device=device(like))

"""Specification of refdiff.timesteps: uniform t and improved DDPM's importance sampler of t.

Oracles: host closed forms for the sampler's probabilities and weights, binomial standard errors for
its draws, and NumPy's draw for the same seed on every backend.
"""

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from refdiff.backend import Generator, get_backend, to_numpy
from refdiff.timesteps import LossSecondMomentSampler, sample_timesteps
from support import DTYPES, assert_close, assert_same_array_kind

seeds = st.integers(0, 2**16)


def filled_sampler(T, history=10, uniform_prob=0.001, seed=0, skip=None):
    """A sampler fed ``history`` losses (uniform in [0.1, 3] times (t + 1)) at every t except ``skip``."""
    sampler = LossSecondMomentSampler(T, history, uniform_prob)
    rng = np.random.default_rng(seed)
    for t in range(T):
        if t != skip:
            sampler.update(np.full(history, t), rng.uniform(0.1, 3.0, history) * (t + 1))
    return sampler


@given(T=st.integers(1, 12), seed=seeds, data=st.data())
def test_sampler_is_uniform_until_every_step_has_its_history(T, seed, data):
    """p_t == 1/T and every weight == 1 while any t has fewer than ``history`` losses."""
    sampler = filled_sampler(T, seed=seed, skip=data.draw(st.integers(0, T - 1)))
    assert not sampler.warmed_up
    np.testing.assert_array_equal(sampler.probabilities(), np.full(T, 1.0 / T))
    t, w = sampler.sample(64, Generator(seed))
    assert t.dtype == np.int64 and np.all((t >= 0) & (t < T))
    np.testing.assert_allclose(w, 1.0, rtol=1e-15)


@given(T=st.integers(1, 12), uniform_prob=st.sampled_from([0.0, 0.001, 0.5]), seed=seeds)
def test_sampler_follows_the_root_mean_square_loss_after_warm_up(T, uniform_prob, seed):
    """Once warm: p_t == (1 - u) sqrt(mean_k L_tk^2) / sum_s sqrt(mean_k L_sk^2) + u / T over the stored
    history L_tk, and a draw at t carries weight 1 / (T p_t)."""
    sampler = filled_sampler(T, uniform_prob=uniform_prob, seed=seed)
    assert sampler.warmed_up
    history = sampler.get_state()["history"]
    rms = np.sqrt(np.mean(history**2, axis=1))
    p = (1 - uniform_prob) * rms / rms.sum() + uniform_prob / T
    np.testing.assert_allclose(sampler.probabilities(), p, rtol=1e-13)
    t, w = sampler.sample(200, Generator(seed))
    np.testing.assert_allclose(w, 1.0 / (T * p[t]), rtol=1e-13)


@given(T=st.integers(1, 12), uniform_prob=st.sampled_from([0.0, 0.001, 0.5]), seed=seeds)
def test_importance_weights_keep_the_loss_unbiased(T, uniform_prob, seed):
    """E_{t ~ p}[w_t L_t] = sum_t p_t / (T p_t) L_t == (1/T) sum_t L_t, the uniform mean, for the
    sampler's own p and the weights its draws carry (exact up to rounding, on a fixed history)."""
    sampler = filled_sampler(T, uniform_prob=uniform_prob, seed=seed)
    p = sampler.probabilities()
    losses = np.random.default_rng(seed + 1).uniform(0.0, 5.0, T)
    t, w = sampler.sample(50 * T, Generator(seed))
    weight_of = dict(zip(t.tolist(), w.tolist()))
    assume(len(weight_of) == T)  # every t drawn at least once
    expectation = sum(p[s] * weight_of[s] * losses[s] for s in range(T))
    assert math.isclose(expectation, losses.mean(), rel_tol=1e-13)


def test_sampler_draws_follow_its_probabilities():
    """Over 40000 draws, each t's frequency is within 5 binomial standard errors of p_t."""
    sampler, n = filled_sampler(6, uniform_prob=0.05), 40000
    p = sampler.probabilities()
    t, _ = sampler.sample(n, Generator(7))
    freq = np.bincount(t, minlength=6) / n
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n)), (freq, p)


def test_sampler_keeps_the_last_history_losses_in_order():
    """After 15 updates at one t with history 10, that t holds the last 10 losses, oldest first."""
    sampler = LossSecondMomentSampler(3, history=10)
    for k in range(15):
        sampler.update(np.array([1]), np.array([float(k)]))
    state = sampler.get_state()
    np.testing.assert_array_equal(state["history"][1], np.arange(5.0, 15.0))
    np.testing.assert_array_equal(state["counts"], [0, 10, 0])


def test_sampler_state_round_trips_through_plain_arrays(backend):
    """A sampler restored from get_state() (plain float64 / int64 arrays) has the same p and, from the same
    generator state, draws the same steps; update accepts device arrays."""
    sampler = filled_sampler(5, seed=3)
    sampler.update(backend.asarray(np.array([0, 4])), backend.asarray(np.array([9.0, 0.5])))
    state = sampler.get_state()
    assert state["history"].dtype == np.float64 and state["counts"].dtype == np.int64
    restored = LossSecondMomentSampler(5)
    restored.set_state(state)
    np.testing.assert_array_equal(restored.probabilities(), sampler.probabilities())
    np.testing.assert_array_equal(restored.sample(20, Generator(1))[0], sampler.sample(20, Generator(1))[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_timesteps_gives_the_same_steps_on_every_backend(backend, dtype):
    """sample_timesteps returns (N,) int64 steps in [0, T) and (N,) weights in like's kind: all ones for
    "uniform", 1 / (T p_t) for a sampler; the steps equal NumPy's for the same seed."""
    like = backend.asarray(np.zeros((1, 1)), dtype=backend.dtype(dtype))
    host = get_backend("numpy").asarray(np.zeros((1, 1)))
    t, w = sample_timesteps(50, 16, Generator(11), like)
    assert t.dtype == backend.xp.int64 and t.shape == (16,) and t.device == like.device
    assert_same_array_kind(w, like)
    np.testing.assert_array_equal(to_numpy(w), 1.0)
    np.testing.assert_array_equal(to_numpy(t), to_numpy(sample_timesteps(50, 16, Generator(11), host)[0]))
    assert np.all((to_numpy(t) >= 0) & (to_numpy(t) < 50))
    sampler = filled_sampler(5, uniform_prob=0.2)
    t, w = sample_timesteps(5, 16, Generator(2), like, method=sampler)
    assert_same_array_kind(w, like)
    assert_close(w, 1.0 / (5 * sampler.probabilities()[to_numpy(t)]))


def test_timestep_sampling_rejects_bad_input(backend):
    """Bad T, N, history, uniform_prob, method, update arrays and saved states raise ValueError."""
    like, g = backend.asarray(np.zeros(1)), Generator(0)
    for kwargs, message in [(dict(T=0), "T must be an integer >= 1"), (dict(T=5, history=0), "history must be"),
                            (dict(T=5, uniform_prob=1.5), r"uniform_prob must lie in \[0, 1\]")]:
        with pytest.raises(ValueError, match=message):
            LossSecondMomentSampler(**kwargs)
    sampler = LossSecondMomentSampler(5)
    for args, message in [((np.array([5]), np.array([1.0])), r"t must lie in \[0, 5\)"),
                          ((np.array([1, 2]), np.array([1.0])), "t and losses must be"),
                          ((np.array([1]), np.array([np.nan])), "losses must be finite")]:
        with pytest.raises(ValueError, match=message):
            sampler.update(*args)
    with pytest.raises(ValueError, match="state must hold history"):
        sampler.set_state({"history": np.zeros((4, 10)), "counts": np.zeros(4, np.int64)})
    for args, message in [((0, 4), "T must be an integer >= 1"), ((5, 0), "N must be an integer >= 1"),
                          ((5, 4, "importance"), "method must be 'uniform' or a LossSecondMomentSampler"),
                          ((6, 4, sampler), "the sampler has T=5")]:
        with pytest.raises(ValueError, match=message):
            sample_timesteps(args[0], args[1], g, like, *args[2:])

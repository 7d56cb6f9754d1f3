"""Specification of refdiff.optim: AdamW, EMA with warm-up, learning-rate schedules, gradient clipping.

Oracles: a host NumPy AdamW written here from the paper's algorithm, closed forms for the EMA, the
schedules and the clipped norm.
"""

import contextlib
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdiff import optim as O
from refdiff.backend import to_numpy
from support import DTYPES, assert_close, assert_same_array_kind, no_float64_intermediates

seeds = st.integers(0, 2**16)
dtypes = st.sampled_from(DTYPES)
SHAPES = {"down.0.conv.w": (2, 3), "down.0.conv.b": (3,), "out.norm.gamma": (1,)}


def float64_tripwire(backend):
    """no_float64_intermediates on array_api_strict (the only backend it can watch), else nothing."""
    return no_float64_intermediates() if backend.name == "array_api_strict" else contextlib.nullcontext()


def host_dict(seed, dtype="float64", scale=1.0, nonzero=False):
    """A params-like dict of SHAPES with reproducible normal entries (|x| >= 0.1 if nonzero)."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in SHAPES.items():
        x = scale * rng.standard_normal(shape)
        if nonzero:
            x = np.where(np.abs(x) < 0.1 * scale, 0.1 * scale, x)
        out[key] = x.astype(dtype)
    return out


def on(backend, d, dtype="float64"):
    """A host dict as arrays of ``backend`` in ``dtype``."""
    return {k: backend.asarray(v, dtype=backend.dtype(dtype)) for k, v in d.items()}


def host_adamw(p, m, v, g, k, lr, beta1, beta2, eps, wd):
    """AdamW step k (1-based) on the host in float64, as Loshchilov & Hutter 2019, Alg. 2 writes it."""
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g**2
    m_hat, v_hat = m / (1 - beta1**k), v / (1 - beta2**k)
    return p - lr * (m_hat / (np.sqrt(v_hat) + eps) + wd * p), m, v


# --- AdamW ------------------------------------------------------------------------------------


@given(seed=seeds, dtype=dtypes, lr=st.sampled_from([1e-4, 1e-3, 0.1]), beta1=st.sampled_from([0.0, 0.9, 0.5]),
       beta2=st.sampled_from([0.999, 0.9, 0.0]))
def test_adam_first_step_moves_every_parameter_by_lr_times_the_gradient_sign(backend, seed, dtype, lr, beta1, beta2):
    """With eps = 0 and no weight decay, step 1 gives m_hat = g and v_hat = g^2 (bias correction), so
    p_1 == p_0 - lr * sign(g) for every entry, whatever the gradient's scale."""
    params, grads = host_dict(seed, dtype), host_dict(seed + 1, dtype, scale=10.0 ** (seed % 7 - 3), nonzero=True)
    new, state = O.adamw_step(on(backend, params, dtype), on(backend, grads, dtype),
                              O.adamw_init(on(backend, params, dtype)), lr, beta1, beta2, eps=0.0)
    for key in params:
        assert_same_array_kind(new[key], on(backend, params, dtype)[key])
        assert_close(new[key], params[key].astype(np.float64) - lr * np.sign(grads[key]), scale=10.0)
    assert int(state["step"]) == 1


@given(seed=seeds, dtype=dtypes, steps=st.integers(1, 5), lr=st.floats(1e-4, 0.1), beta1=st.floats(0.0, 0.99),
       beta2=st.floats(0.0, 0.9999), eps=st.sampled_from([1e-8, 1e-3]), wd=st.sampled_from([0.0, 0.01, 0.5]))
def test_adamw_matches_the_host_reference_over_several_steps(backend, seed, dtype, steps, lr, beta1, beta2, eps, wd):
    """Params and moments after ``steps`` AdamW steps equal those of host_adamw (float64) to the dtype's
    tolerance (times 10 per step), and state["step"] counts the steps."""
    params = host_dict(seed, dtype)
    p, state = on(backend, params, dtype), O.adamw_init(on(backend, params, dtype))
    ref = {k: (v.astype(np.float64), np.zeros_like(v, np.float64), np.zeros_like(v, np.float64)) for k, v in params.items()}
    for k in range(1, steps + 1):
        grads = host_dict(seed + k, dtype)
        p, state = O.adamw_step(p, on(backend, grads, dtype), state, lr, beta1, beta2, eps, wd)
        ref = {key: host_adamw(*ref[key], grads[key].astype(np.float64), k, lr, beta1, beta2, eps, wd) for key in ref}
    assert int(state["step"]) == steps and state["step"].dtype == np.int64
    for key, (p_ref, m_ref, v_ref) in ref.items():
        assert_close(p[key], p_ref, scale=10.0 * steps)
        assert_close(state[f"m.{key}"], m_ref, scale=10.0 * steps)
        assert_close(state[f"v.{key}"], v_ref, scale=10.0 * steps)


@given(seed=seeds, dtype=dtypes, lr=st.floats(1e-4, 0.5), wd=st.floats(0.0, 1.0))
def test_weight_decay_is_decoupled(backend, seed, dtype, lr, wd):
    """With zero gradients the params shrink by exactly lr * wd: p_1 == p_0 (1 - lr wd), moments stay 0;
    with any gradient, AdamW's step == Adam's step (wd = 0) - lr wd p_0 (the decay is not rescaled by Adam)."""
    params = on(backend, host_dict(seed, dtype), dtype)
    zeros = {k: backend.xp.zeros_like(v) for k, v in params.items()}
    shrunk, state = O.adamw_step(params, zeros, O.adamw_init(params), lr, weight_decay=wd)
    grads = on(backend, host_dict(seed + 1, dtype), dtype)
    decayed, _ = O.adamw_step(params, grads, O.adamw_init(params), lr, weight_decay=wd)
    plain, _ = O.adamw_step(params, grads, O.adamw_init(params), lr)
    for key, p in params.items():
        p0 = to_numpy(p).astype(np.float64)
        assert_close(shrunk[key], p0 * (1 - lr * wd), scale=2.0)
        np.testing.assert_array_equal(to_numpy(state[f"m.{key}"]), 0.0)
        np.testing.assert_array_equal(to_numpy(state[f"v.{key}"]), 0.0)
        assert_close(decayed[key], to_numpy(plain[key]).astype(np.float64) - lr * wd * p0, scale=4.0)


@given(seed=seeds, dtype=dtypes, lr=st.floats(1e-4, 0.1), scale=st.sampled_from([0.0, 0.1, 3.0]),
       wd=st.sampled_from([0.0, 0.5]))
def test_a_learning_rate_per_key_is_the_step_of_each_key_alone(backend, seed, dtype, lr, scale, wd):
    """adamw_step with lr = {key: rate} (parameter groups) gives each key exactly what a step of one rate,
    that key's, gives it, weight decay included; the moments do not depend on the rates."""
    params, grads = on(backend, host_dict(seed, dtype), dtype), on(backend, host_dict(seed + 1, dtype), dtype)
    rates = {key: lr * scale if key.startswith("down.") else lr for key in params}
    grouped, state = O.adamw_step(params, grads, O.adamw_init(params), rates, weight_decay=wd)
    for key in params:
        alone, alone_state = O.adamw_step(params, grads, O.adamw_init(params), rates[key], weight_decay=wd)
        np.testing.assert_array_equal(to_numpy(grouped[key]), to_numpy(alone[key]))
        np.testing.assert_array_equal(to_numpy(state[f"v.{key}"]), to_numpy(alone_state[f"v.{key}"]))


def test_adamw_state_is_plain_arrays_and_inputs_are_untouched(backend):
    """adamw_init gives {"step": 0-d int64 host array, "m.<key>", "v.<key>": zeros like params[key]};
    adamw_step returns new dicts and leaves params, grads and state as they were."""
    params, grads = on(backend, host_dict(0)), on(backend, host_dict(1))
    state = O.adamw_init(params)
    assert set(state) == {"step"} | {f"{s}.{k}" for k in SHAPES for s in "mv"}
    assert isinstance(state["step"], np.ndarray) and state["step"].shape == () and state["step"].dtype == np.int64
    for key, p in params.items():
        assert_same_array_kind(state[f"m.{key}"], p)
        assert state[f"v.{key}"].shape == p.shape
    before = [{k: to_numpy(v).copy() for k, v in d.items()} for d in (params, grads, state)]
    new_params, new_state = O.adamw_step(params, grads, state, 1e-3)
    for saved, d in zip(before, (params, grads, state)):
        for k in saved:
            np.testing.assert_array_equal(to_numpy(d[k]), saved[k])
    assert int(new_state["step"]) == 1 and set(new_params) == set(params)


# --- EMA --------------------------------------------------------------------------------------


@given(c=st.floats(-1e3, 1e3), decay=st.floats(0.0, 1.0), step=st.integers(0, 10**6), warmup=st.booleans(),
       dtype=dtypes)
def test_ema_of_a_constant_is_the_constant(backend, c, decay, step, warmup, dtype):
    """ema_update(ema=c, params=c) == c exactly, for any decay, step and warm-up (p + d (ema - p) with ema == p)."""
    const = on(backend, {k: np.full(s, c) for k, s in SHAPES.items()}, dtype)
    out = O.ema_update(const, const, decay, step, warmup)
    for key, p in const.items():
        assert_same_array_kind(out[key], p)
        np.testing.assert_array_equal(to_numpy(out[key]), to_numpy(p))


@given(seed=seeds, decay=st.floats(0.0, 1.0), dtype=dtypes)
def test_ema_with_warmup_at_step_0_equals_the_params(backend, seed, decay, dtype):
    """With warm-up, update 0 has decay 0: the EMA becomes the params exactly, whatever it held before."""
    params, old = on(backend, host_dict(seed), dtype), on(backend, host_dict(seed + 1, scale=100.0), dtype)
    out = O.ema_update(old, params, decay, 0)
    for key, p in params.items():
        np.testing.assert_array_equal(to_numpy(out[key]), to_numpy(p))


@given(seed=seeds, decay=st.floats(0.0, 1.0), step=st.integers(0, 10**6), warmup=st.booleans(), dtype=dtypes)
def test_ema_update_is_the_warmed_up_convex_combination(backend, seed, decay, step, warmup, dtype):
    """ema' == d ema + (1 - d) p with d = 0 at step 0 and min(decay, (1 + step) / (10 + step)) after
    (warm-up), or d = decay (no warm-up)."""
    d = decay if not warmup else (0.0 if step == 0 else min(decay, (1 + step) / (10 + step)))
    assert O.ema_decay(step, decay, warmup) == d
    params, ema = host_dict(seed, dtype), host_dict(seed + 1, dtype)
    out = O.ema_update(on(backend, ema, dtype), on(backend, params, dtype), decay, step, warmup)
    for key in params:
        expected = d * ema[key].astype(np.float64) + (1 - d) * params[key].astype(np.float64)
        assert_close(out[key], expected, scale=4.0)


# --- gradient clipping ------------------------------------------------------------------------


@given(seed=seeds, dtype=dtypes, scale=st.floats(1e-3, 1e3), max_norm=st.floats(0.01, 10.0))
def test_clipping_keeps_the_direction_and_caps_the_global_norm(backend, seed, dtype, scale, max_norm):
    """The returned norm == sqrt(sum of all g^2); clipped g == g * min(1, max_norm / norm) (same direction),
    so the clipped global norm == min(norm, max_norm)."""
    grads = host_dict(seed, dtype, scale=scale)
    norm = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values()))
    clipped, got = O.clip_grad_norm(on(backend, grads, dtype), max_norm)
    assert got.shape == ()
    assert_close(got, norm, scale=float(norm) * 10)
    factor = min(1.0, max_norm / norm)
    for key, g in grads.items():
        assert_same_array_kind(clipped[key], on(backend, grads, dtype)[key])
        assert_close(clipped[key], g.astype(np.float64) * factor, scale=10.0 * max(scale, 1.0))
    assert_close(O.global_norm(clipped), min(norm, max_norm), scale=10.0 * max(norm, 1.0))


@given(seed=seeds, dtype=dtypes)
def test_clipping_leaves_small_gradients_unchanged(backend, seed, dtype):
    """With norm <= max_norm the factor is exactly 1: every gradient comes back bit for bit."""
    grads = on(backend, host_dict(seed, dtype), dtype)
    norm = float(to_numpy(O.global_norm(grads)))
    for max_norm in (norm, 2 * norm + 1e-3):
        clipped, _ = O.clip_grad_norm(grads, max_norm)
        for key, g in grads.items():
            np.testing.assert_array_equal(to_numpy(clipped[key]), to_numpy(g))


# --- learning-rate schedule -------------------------------------------------------------------


@given(base=st.floats(1e-5, 1.0), warmup=st.integers(0, 50), extra=st.integers(1, 200),
       decay=st.sampled_from(O.DECAYS), floor=st.floats(0.0, 1.0))
def test_learning_rate_warms_up_then_decays_between_its_endpoints(base, warmup, extra, decay, floor):
    """lr(0) == 0 if warmup > 0 (else base_lr); lr(warmup) == base_lr; lr(total) == min_lr for the
    decays (base_lr for constant) and stays there after; lr rises through the warm-up and never
    rises after it; the cosine's midpoint is (base_lr + min_lr) / 2."""
    total, min_lr = warmup + extra, floor * base
    lr = [O.learning_rate(s, base, warmup, total, decay, min_lr) for s in range(total + 5)]
    end = base if decay == "constant" else min_lr
    assert lr[0] == (0.0 if warmup else base)
    assert math.isclose(lr[warmup], base, rel_tol=1e-12)
    assert all(math.isclose(x, end, rel_tol=1e-12, abs_tol=1e-15) for x in lr[total:])
    assert all(a < b for a, b in zip(lr[:warmup], lr[1:warmup + 1]))
    assert all(b <= a + 1e-15 for a, b in zip(lr[warmup:], lr[warmup + 1:]))
    if decay == "cosine" and extra % 2 == 0:
        assert math.isclose(lr[warmup + extra // 2], (base + min_lr) / 2, rel_tol=1e-12)


# --- dtypes and bad input ---------------------------------------------------------------------


def test_float32_optimisation_stays_float32(backend):
    """adamw_step, ema_update and clip_grad_norm on float32 dicts return float32 arrays of the same
    backend and device, and create no float64 array on the way (array_api_strict)."""
    params, grads = on(backend, host_dict(0), "float32"), on(backend, host_dict(1), "float32")
    with float64_tripwire(backend):
        new, state = O.adamw_step(params, grads, O.adamw_init(params), 1e-3, weight_decay=0.1)
        ema = O.ema_update(params, new, 0.999, 5)
        clipped, norm = O.clip_grad_norm(grads, 0.5)
    for key, p in params.items():
        for out in (new[key], state[f"m.{key}"], state[f"v.{key}"], ema[key], clipped[key]):
            assert_same_array_kind(out, p)
    assert norm.dtype == backend.xp.float32


def test_bad_inputs_raise_naming_the_argument(backend):
    """Mismatched keys or shapes and out-of-range hyperparameters raise ValueError naming the argument."""
    params = on(backend, host_dict(0))
    state = O.adamw_init(params)
    short = dict(list(params.items())[1:])
    wrong_shape = dict(params, **{"out.norm.gamma": backend.asarray(np.zeros(2))})
    for call, message in [
        (lambda: O.adamw_step(params, short, state, 1e-3), "grads must have the keys of params"),
        (lambda: O.adamw_step(params, wrong_shape, state, 1e-3), r"grads\['out.norm.gamma'\] must have shape"),
        (lambda: O.adamw_step(params, params, {"step": state["step"]}, 1e-3), "state must have the keys"),
        (lambda: O.adamw_step(params, params, {}, 1e-3), "state must hold 'step'"),
        (lambda: O.adamw_step(params, params, state, -1.0), "lr must be a finite number >= 0"),
        (lambda: O.adamw_step(params, params, state, {"out.norm.gamma": 1e-3}), "lr must have the keys of params"),
        (lambda: O.adamw_step(params, params, state, dict.fromkeys(params, 1e-3) | {"down.0.conv.b": math.inf}),
         r"lr\['down.0.conv.b'\] must be a finite number >= 0, got inf"),
        (lambda: O.adamw_step(params, params, state, 1e-3, beta1=1.0), r"beta1 must lie in \[0, 1\)"),
        (lambda: O.adamw_step(params, params, state, 1e-3, beta2=-0.1), r"beta2 must lie in \[0, 1\)"),
        (lambda: O.adamw_step(params, params, state, 1e-3, eps=-1.0), "eps must be a finite number >= 0"),
        (lambda: O.adamw_step(params, params, state, 1e-3, weight_decay=math.nan), "weight_decay must be"),
        (lambda: O.ema_update(short, params, 0.99, 1), "ema must have the keys of params"),
        (lambda: O.ema_update(params, params, 1.5, 1), r"decay must lie in \[0, 1\]"),
        (lambda: O.ema_update(params, params, 0.9, -1), "step must be an integer >= 0"),
        (lambda: O.clip_grad_norm(params, 0.0), "max_norm must be a positive finite number"),
        (lambda: O.clip_grad_norm({}, 1.0), "grads must be a non-empty dict"),
        (lambda: O.learning_rate(-1, 1e-3, 0, 10), "step must be an integer >= 0"),
        (lambda: O.learning_rate(0, 1e-3, 10, 10), "warmup_steps must be < total_steps"),
        (lambda: O.learning_rate(0, 1e-3, 0, 10, "step"), "decay must be one of constant, cosine, linear"),
        (lambda: O.learning_rate(0, 1e-3, 0, 10, "cosine", min_lr=1.0), "need 0 <= min_lr <= base_lr"),
    ]:
        with pytest.raises(ValueError, match=message):
            call()

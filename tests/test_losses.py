"""Specification of refdiff.losses: training losses, their gradients, min-SNR weights, cross-entropy.

Oracles: finite differences of the loss itself (float64, tests/gradcheck.py) for every gradient,
with the hybrid loss's stop-gradient written out as a loss whose mean channels are frozen; host
closed forms for the min-SNR weights; refdiff.likelihood's forward VLB term for
the loss values (its own tests check it against SciPy).
"""

import contextlib
import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from gradcheck import assert_gradients_match
from refdiff import losses as L
from refdiff.backend import to_numpy
from refdiff.diffusion import Parameterization, p_mean_variance, predict_eps_from_x0, predict_v, q_sample
from refdiff.likelihood import CDFS, vlb_term_bpd
from refdiff.schedules import cosine
from support import DTYPES, assert_close, assert_same_array_kind, no_float64_intermediates, schedule_strategy

seeds = st.integers(0, 2**16)
predictions = st.sampled_from(["eps", "x0", "v"])


def float64_tripwire(backend):
    """no_float64_intermediates on array_api_strict (the only backend it can watch), else nothing."""
    return no_float64_intermediates() if backend.name == "array_api_strict" else contextlib.nullcontext()


@st.composite
def loss_cases(draw, loss=None, max_T=30):
    """A host float64 training batch: (schedule, model_output, x0, t, eps, options).

    x0 lies on the grid of ``levels`` values; the prediction channels are the exact target plus
    0.1 * noise (the regime training lives in); learned-range values lie in [-1, 1], learned
    log-variances near log beta~_t. t = 0 (the decoder) is drawn with probability about 1/2.
    """
    schedule = draw(schedule_strategy(max_T=max_T))
    loss = loss or draw(st.sampled_from(L.LOSSES))
    N, C, S = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.sampled_from([(), (2,)]))
    levels = draw(st.sampled_from([256, 17, 2] if loss == "mse" else [256, 17]))
    param = Parameterization(draw(predictions), draw(st.sampled_from(L.LEARNED_VARIANCES)),
                             draw(st.sampled_from(["openai", "diffusers"])))
    options = dict(param=param, loss=loss, levels=levels,
                   weighting="none" if loss == "kl" else draw(st.sampled_from(L.WEIGHTINGS)),
                   cdf=draw(st.sampled_from(["approx", "exact"])))
    rng = np.random.default_rng(draw(seeds))
    t = np.array([draw(st.one_of(st.just(0), st.integers(0, schedule.T - 1))) for _ in range(N)])
    x0 = -1.0 + 2.0 * rng.integers(0, levels, (N, C) + S) / (levels - 1)
    eps = rng.standard_normal(x0.shape)
    out = L.mse_target(schedule, param, x0, t, eps) + 0.1 * rng.standard_normal(x0.shape)
    if loss != "mse":
        if param.variance == "learned_range":
            var_out = rng.uniform(-1.0, 1.0, x0.shape)
        else:
            log_var = schedule.posterior_log_variance_clipped[t].reshape((N, 1) + (1,) * len(S))
            var_out = log_var + rng.uniform(-1.0, 1.0, x0.shape)
        out = np.concatenate([out, var_out], axis=1)
    weights = rng.uniform(0.5, 2.0, N) if draw(st.booleans()) else None
    return schedule, out, x0, t, eps, dict(options, weights=weights)


def run(backend, schedule, out, x0, t, eps, options, dtype="float64"):
    """training_loss on ``backend`` from host arrays (cast to ``dtype``)."""
    A = lambda a: None if a is None else backend.asarray(a, dtype=backend.dtype(dtype))
    opts = dict(options, weights=A(options.get("weights")))
    return L.training_loss(schedule, A(out), A(x0), backend.asarray(t), A(eps), **opts)


def well_conditioned(schedule, out, x0, t, eps, options) -> bool:
    """False for the draws where centered differences (step 1e-5) cannot resolve 1e-6 relative error.

    1. A learned-range slope S_t = d log_var / d var_out above 10: only the diffusers convention at
       t = 0, whose lower end is log 1e-20 = -46; the truncation error of the differences, which
       grows as h^2 S^3 times the third derivative in log_var, then exceeds the tolerance.
    2. A decoder bin probability P (t = 0) outside [1e-4, 1 - 1e-4]: P comes from CDF values
       rounded to ~1e-16 absolute, so log P carries 1e-16 / P of rounding, which the differences
       amplify; near P = 1, log P ~ -(1 - P) and its gradient shrink below that rounding noise.
    """
    if options["loss"] == "mse" or not np.any(t == 0):
        return True
    if options["param"].variance == "learned_range":
        if np.max(np.abs(L.learned_range_slope_table(schedule, options["param"])[t])) > 10:
            return False
    p = p_mean_variance(schedule, out, q_sample(schedule, x0, t, eps), t, options["param"])
    zero = t == 0
    x, mean, inv_s = x0[zero], p.mean[zero], np.exp(-0.5 * p.log_variance[zero])
    h = 1.0 / (options["levels"] - 1)
    Phi = CDFS[options["cdf"]]
    upper = np.where(x > 1 - h, 1.0, Phi(inv_s * (x - mean + h)))
    lower = np.where(x < -1 + h, 0.0, Phi(inv_s * (x - mean - h)))
    prob = upper - lower
    return bool(np.all((prob >= 1e-4) & (prob <= 1.0 - 1e-4)))


# --- gradients --------------------------------------------------------------------------------


@given(case=st.one_of(loss_cases("mse"), loss_cases("kl")))
def test_loss_gradient_matches_finite_differences(backend, case):
    """dout == d loss / d model_output for loss="mse" and loss="kl" (every target, weighting,
    learned variance, convention, CDF, with and without importance weights), by centered
    differences of the loss value itself, float64."""
    schedule, out, x0, t, eps, options = case
    assume(well_conditioned(schedule, out, x0, t, eps, options))
    _, dout, _ = run(backend, schedule, out, x0, t, eps, options)
    loss = lambda a: float(to_numpy(run(backend, schedule, a["out"], x0, t, eps, options)[0]))
    assert_gradients_match(loss, {"out": out}, {"out": to_numpy(dout)})


@given(case=loss_cases("hybrid"), vlb_weight=st.sampled_from([0.001, 0.5]))
def test_hybrid_gradient_is_that_of_the_loss_with_a_frozen_mean(backend, case, vlb_weight):
    """dout of loss="hybrid" == d/d(out) of L_mse(out[:, :C]) + vlb_weight * L_kl([sg(out[:, :C]), out[:, C:]]),
    where sg freezes the prediction channels at their current value (improved DDPM's frozen_out):
    the hybrid loss is L_simple plus lambda times the pure-VLB loss seen through a constant mean."""
    schedule, out, x0, t, eps, options = case
    assume(well_conditioned(schedule, out, x0, t, eps, options))
    C = x0.shape[1]
    _, dout, _ = run(backend, schedule, out, x0, t, eps, dict(options, vlb_weight=vlb_weight))
    kl_options = dict(options, loss="kl", weighting="none")

    def loss(a):
        mse = run(backend, schedule, a["out"][:, :C], x0, t, eps, dict(options, loss="mse"))[0]
        frozen = np.concatenate([out[:, :C], a["out"][:, C:]], axis=1)
        vlb = run(backend, schedule, frozen, x0, t, eps, kl_options)[0]
        return float(to_numpy(mse)) + vlb_weight * float(to_numpy(vlb))

    assert_gradients_match(loss, {"out": out}, {"out": to_numpy(dout)})


@given(case=loss_cases("hybrid"))
def test_hybrid_stop_gradient_is_exact(backend, case):
    """On the prediction channels, the hybrid gradient equals the pure-MSE gradient bit for bit (no VLB
    part reaches them), while the pure-VLB loss does send a gradient there; on the variance channels
    it equals vlb_weight times the pure-VLB loss's gradient, and vanishes with vlb_weight = 0."""
    schedule, out, x0, t, eps, options = case
    C = x0.shape[1]
    _, d_hybrid, _ = run(backend, schedule, out, x0, t, eps, options)
    _, d_mse, _ = run(backend, schedule, out[:, :C], x0, t, eps, dict(options, loss="mse"))
    _, d_kl, _ = run(backend, schedule, out, x0, t, eps, dict(options, loss="kl", weighting="none"))
    _, d_zero, _ = run(backend, schedule, out, x0, t, eps, dict(options, vlb_weight=0.0))
    np.testing.assert_array_equal(to_numpy(d_hybrid)[:, :C], to_numpy(d_mse))
    np.testing.assert_array_equal(to_numpy(d_zero)[:, :C], to_numpy(d_mse))
    np.testing.assert_array_equal(to_numpy(d_zero)[:, C:], 0.0)
    assert_close(d_hybrid[:, C:, ...], 0.001 * to_numpy(d_kl)[:, C:])
    has_kl_terms = np.any(t > 0)  # at t = 0 the decoder may be saturated: its mean gradient can be 0
    assert not has_kl_terms or np.any(to_numpy(d_kl)[:, :C] != 0)


# --- loss values ------------------------------------------------------------------------------


@given(case=loss_cases())
def test_losses_equal_their_definitions(backend, case):
    """Per sample n, with w_n the min-SNR weight (or 1), c_n the importance weight (or 1), L_t from
    likelihood.vlb_term_bpd at p_mean_variance's mean and log-variance, T = schedule.T:
      mse:    L_n = w_n mean((out - target)^2)
      hybrid: L_n = w_n mean((out - target)^2) + vlb_weight * T * L_t
      kl:     L_n = T * L_t
    loss = mean_n(c_n L_n); terms hold L_n, the unweighted mse and L_t (None for mse), float64.
    L_t is evaluated on the same backend (the composition is under test here, not the CDF)."""
    schedule, out, x0, t, eps, options = case
    loss, C = options["loss"], x0.shape[1]
    total, dout, terms = run(backend, schedule, out, x0, t, eps, options)
    mse = np.mean((out[:, :C] - L.mse_target(schedule, options["param"], x0, t, eps)) ** 2,
                  axis=tuple(range(1, x0.ndim)))
    w = L.min_snr_weight_table(schedule, options["param"])[t] if options["weighting"] == "min_snr" else 1.0
    per_sample = w * mse
    if loss == "mse":
        assert terms.vlb is None
    else:
        # on the backend itself: array_api_strict's CDF (backend.erf's series) differs from SciPy's by 1e-15
        A = backend.asarray
        xt = q_sample(schedule, A(x0), A(t), A(eps))
        p = p_mean_variance(schedule, A(out), xt, A(t), options["param"])
        vlb = to_numpy(vlb_term_bpd(schedule, A(x0), xt, A(t), p.mean, p.log_variance, options["levels"],
                                    options["cdf"]))
        per_sample = per_sample + 0.001 * schedule.T * vlb if loss == "hybrid" else schedule.T * vlb
        assert_close(terms.vlb, vlb)
    c = 1.0 if options["weights"] is None else options["weights"]
    assert_close(terms.mse, mse)
    assert_close(terms.loss, per_sample)
    assert total.shape == () and dout.shape == out.shape
    assert_close(total, np.mean(c * per_sample))


@given(case=loss_cases())
def test_float32_losses_stay_float32(backend, case):
    """From float32 inputs, loss, dout and terms are float32 arrays of the input's backend and device,
    no float64 array is created on the way (array_api_strict), and they agree with the float64 run to
    rtol 1e-3 of the largest entry (the float32 decoder takes the log of a difference of CDFs)."""
    schedule, out, x0, t, eps, options = case
    assume(well_conditioned(schedule, out, x0, t, eps, options))
    like = backend.asarray(x0, dtype=backend.xp.float32)
    with float64_tripwire(backend):
        total, dout, terms = run(backend, schedule, out, x0, t, eps, options, "float32")
    reference = run(backend, schedule, out, x0, t, eps, options)
    for got, want in zip((total, dout, *terms), (reference[0], reference[1], *reference[2])):
        if want is None:
            assert got is None
            continue
        assert_same_array_kind(got, like)
        want = to_numpy(want)
        np.testing.assert_allclose(to_numpy(got), want, rtol=0, atol=1e-3 * max(np.max(np.abs(want)), 1e-3))


# --- min-SNR weights --------------------------------------------------------------------------


@given(schedule=schedule_strategy(max_T=200, zero_terminal=True), prediction=predictions,
       gamma=st.sampled_from([5.0, 1.0, 0.5, 20.0]), dtype=st.sampled_from(DTYPES), data=st.data())
def test_min_snr_weights_equal_their_closed_forms(backend, schedule, prediction, gamma, dtype, data):
    """With SNR_t = alpha_bar_t / (1 - alpha_bar_t): eps weight min(SNR, gamma) / SNR (1 where SNR = 0),
    x0 weight min(SNR, gamma), v weight min(SNR, gamma) / (SNR + 1); the same at any t on any backend."""
    ab = schedule.alpha_bar
    snr = ab / (1.0 - ab)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = {"eps": np.where(snr == 0, 1.0, np.minimum(snr, gamma) / snr), "x0": np.minimum(snr, gamma),
                    "v": np.minimum(snr, gamma) / (snr + 1.0)}[prediction]
    param = Parameterization(prediction)
    np.testing.assert_allclose(L.min_snr_weight_table(schedule, param, gamma), expected, rtol=1e-14, atol=0)
    t = np.array(data.draw(st.lists(st.integers(0, schedule.T - 1), min_size=1, max_size=5)))
    like = backend.asarray(np.zeros((t.shape[0], 1)), dtype=backend.dtype(dtype))
    w = L.min_snr_weights(schedule, backend.asarray(t), like, param, gamma)
    assert_same_array_kind(w, like)
    assert_close(w, expected[t])


@given(schedule=schedule_strategy(max_T=200), gamma=st.sampled_from([5.0, 1.0, math.inf]), seed=seeds, data=st.data())
def test_min_snr_weighted_losses_agree_across_targets(backend, schedule, gamma, seed, data):
    """For eps, x0 and v predictions implying the same x0_hat at (x_t, t), the min-SNR-weighted per-sample
    losses are equal: w_eps |eps - eps_hat|^2 == w_x0 |x0 - x0_hat|^2 == w_v |v - v_hat|^2
    == min(SNR_t, gamma) |x0 - x0_hat|^2 (since |eps - eps_hat|^2 = SNR |x0 - x0_hat|^2 and
    |v - v_hat|^2 = (SNR + 1) |x0 - x0_hat|^2). With gamma = inf all three are the plain eps loss."""
    rng = np.random.default_rng(seed)
    t = np.array(data.draw(st.lists(st.integers(0, schedule.T - 1), min_size=1, max_size=4)))
    x0, eps = rng.uniform(-1, 1, (t.shape[0], 2, 3)), rng.standard_normal((t.shape[0], 2, 3))
    xt = q_sample(schedule, x0, t, eps)
    x0_hat = x0 + 0.3 * rng.standard_normal(x0.shape)
    eps_hat = predict_eps_from_x0(schedule, xt, t, x0_hat)
    outputs = {"x0": x0_hat, "eps": eps_hat, "v": predict_v(schedule, x0_hat, t, eps_hat)}
    per_sample = {}
    for prediction, out in outputs.items():
        options = dict(param=Parameterization(prediction), weighting="min_snr", snr_gamma=gamma)
        terms = run(backend, schedule, out, x0, t, eps, options)[2]
        per_sample[prediction] = to_numpy(terms.loss)
    snr = schedule.snr[t]
    expected = np.minimum(snr, gamma) * np.mean((x0 - x0_hat) ** 2, axis=(1, 2))
    scale = float(np.max(1.0 + snr))  # eps_hat and v_hat carry the rounding of x0_hat times sqrt(SNR + 1)
    for prediction in outputs:
        assert_close(backend.asarray(per_sample[prediction]), expected, scale=scale)
    if gamma == math.inf:
        assert_close(backend.asarray(per_sample["x0"]), np.mean((eps - eps_hat) ** 2, axis=(1, 2)), scale=scale)


@given(schedule=schedule_strategy(max_T=200))
def test_min_snr_with_infinite_gamma_converts_every_target_to_the_eps_loss(schedule):
    """gamma -> inf: the eps weight is 1 (plain L_simple), the x0 weight is SNR_t and the v weight is
    SNR_t / (SNR_t + 1) = alpha_bar_t: each turns its target's error into the eps error."""
    eps, x0, v = (Parameterization(prediction) for prediction in ("eps", "x0", "v"))
    np.testing.assert_array_equal(L.min_snr_weight_table(schedule, eps, math.inf), 1.0)
    np.testing.assert_array_equal(L.min_snr_weight_table(schedule, x0, math.inf), schedule.snr)
    np.testing.assert_allclose(L.min_snr_weight_table(schedule, v, math.inf), schedule.alpha_bar, rtol=1e-12)


# --- bad input --------------------------------------------------------------------------------


# "param" holds the Parameterization's fields: it is built inside pytest.raises, where a bad field raises.
BAD_OPTIONS = [
    (dict(param=dict(prediction="noise")), "prediction must be one of eps, x0, v"),
    (dict(loss="l1"), "loss must be one of mse, hybrid, kl"),
    (dict(weighting="snr"), "weighting must be one of none, min_snr"),
    (dict(loss="hybrid", param=dict(variance="fixed_small")), "variance must be one of learned_range, learned"),
    (dict(param=dict(convention="torch")), "convention must be one of openai, diffusers"),
    (dict(cdf="erf"), "cdf must be one of approx, exact"),
    (dict(loss="kl", weighting="min_snr"), "weighting='min_snr' reweights the MSE term"),
    (dict(vlb_weight=-1.0), "vlb_weight must be a finite number >= 0"),
    (dict(vlb_weight=math.inf), "vlb_weight must be a finite number >= 0"),
    (dict(snr_gamma=0.0), "snr_gamma must be > 0"),
    (dict(snr_gamma=math.nan), "snr_gamma must be > 0"),
    (dict(levels=1), "levels must be an integer >= 2"),
    (dict(loss="hybrid", param=dict(variance="learned_range")), r"model_output must have shape \(2, 4, 3\)"),
]


@pytest.mark.parametrize("options, message", BAD_OPTIONS)
def test_training_loss_rejects_bad_options(backend, options, message):
    """Each bad option raises ValueError naming the argument and what is allowed."""
    x0 = backend.asarray(np.zeros((2, 2, 3)))
    others = {name: value for name, value in options.items() if name != "param"}
    with pytest.raises(ValueError, match=message):
        param = Parameterization(**options.get("param", {}))
        L.training_loss(cosine(10), x0, x0, backend.asarray(np.array([0, 1])), x0, param, **others)


def test_training_loss_rejects_bad_arrays(backend):
    """Wrong shapes, dtypes and out-of-range t raise, naming the argument."""
    A, schedule = backend.asarray, cosine(10)
    x0, t = A(np.zeros((2, 2, 3))), A(np.array([0, 1]))
    cases = [
        (dict(model_output=A(np.zeros((2, 3, 3)))), "model_output must have shape"),
        (dict(model_output=A(np.zeros((2, 2, 3)), dtype=backend.xp.float32)), "model_output must have shape"),
        (dict(eps=A(np.zeros((2, 2, 2)))), "eps must match x0's shape"),
        (dict(x0=A(np.zeros(2)), model_output=A(np.zeros(2)), eps=A(np.zeros(2))), "x0 must be a real floating"),
        (dict(t=A(np.array([0, 10]))), r"t must lie in \[0, 10\)"),
        (dict(weights=A(np.ones(3))), r"weights must be None or \(2,\)"),
    ]
    for change, message in cases:
        args = dict(dict(model_output=x0, x0=x0, t=t, eps=x0), **change)
        with pytest.raises(ValueError, match=message):
            L.training_loss(schedule, args["model_output"], args["x0"], args["t"], args["eps"],
                            weights=args.get("weights"))


# (prediction, variance, convention, loss, weighting) -> (loss, sum of dout weighted by a fixed normal draw),
# recorded from the three-string API this value replaced (prediction, variance=, convention=), same inputs.
TRAINING_LOSS_RECORDED = {
    ("eps", "learned_range", "openai", "mse", "min_snr"): (1.0638477385794767, -0.11019075659832159),
    ("v", "learned_range", "diffusers", "hybrid", "none"): (2.282041541714751, -0.19221933234271732),
    ("x0", "learned", "openai", "kl", "none"): (264.2772785532485, -66.10613525066873),
    ("v", "learned", "openai", "hybrid", "min_snr"): (0.33820429770961824, -0.025944358149372702),
}


def test_training_loss_with_a_parameterization_equals_the_three_string_call():
    """training_loss(..., Parameterization(p, v, c), loss, weighting) gives the loss and gradient the call
    with prediction=p, variance=v, convention=c gave, on fixed inputs (cosine T = 50, t in {0, 1, 25, 49},
    float64), to rtol 1e-12."""
    schedule, rng = cosine(50), np.random.default_rng(1)
    x0 = rng.uniform(-1, 1, (4, 2, 3, 3))
    eps = rng.standard_normal(x0.shape)
    t = np.array([0, 1, 25, 49])
    for (p, v, c, loss, weighting), recorded in TRAINING_LOSS_RECORDED.items():
        out = rng.standard_normal(x0.shape if loss == "mse" else (4, 4, 3, 3))
        w = rng.standard_normal(out.shape)
        total, dout, _ = L.training_loss(schedule, out, x0, t, eps, Parameterization(p, v, c), loss, weighting)
        np.testing.assert_allclose([float(total), float(np.sum(dout * w))], recorded, rtol=1e-12, err_msg=loss)

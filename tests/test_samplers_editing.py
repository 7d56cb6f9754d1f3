"""Specification of inpainting (replacement and RePaint resampling) and SDEdit, with exact denoisers."""

import contextlib
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oracles import GaussianMixtureDenoiser
from refdiff import schedules as S
from refdiff.backend import Generator, to_numpy
from refdiff.diffusion import q_sample, q_step
from refdiff.samplers import ddim_loop, ddpm_loop, final
from refdiff.samplers.common import step_t
from refdiff.samplers.editing import inpaint_loop, repaint_moves, sdedit_loop, sdedit_start
from support import assert_same_array_kind, no_float64_intermediates
from oracles import GAUSSIAN, MIXTURE

# Which of the two dims is known, as a (1, 2) mask broadcast over the batch.
KNOWN_FIRST = np.array([[1.0, 0.0]])


def _noise_and_data(backend, model, n, seed=0, dtype="float64"):
    """x_T ~ N(0, I) and data x0 ~ model's mixture, both (n, 2) on the backend in ``dtype``."""
    like = backend.asarray(np.zeros(1), dtype=backend.dtype(dtype))
    x = Generator(seed).normal((n, 2), like=like)
    return x, backend.asarray(model.sample(n, seed=seed + 1), dtype=backend.dtype(dtype))


@settings(max_examples=10)
@given(T=st.integers(2, 30), jump_length=st.integers(1, 6), resample=st.integers(1, 3),
       mask_bits=st.lists(st.booleans(), min_size=2, max_size=2), seed=st.integers(0, 1000))
def test_inpainting_leaves_the_known_pixels_equal_to_the_data(backend, T, jump_length, resample, mask_bits, seed):
    """After the last step, x == known exactly where mask == 1 (the known region is replaced by the data
    itself at level -1), for any schedule length, jump length, resample count and mask."""
    schedule = S.cosine(T)
    model = GaussianMixtureDenoiser(schedule, **MIXTURE)
    x, known = _noise_and_data(backend, model, 16, seed)
    mask = np.array([mask_bits], dtype=np.float64)
    out = final(inpaint_loop(model, schedule, x, known, backend.asarray(mask), Generator(seed),
                             jump_length=jump_length, resample=resample))
    columns = np.flatnonzero(mask[0])
    np.testing.assert_array_equal(to_numpy(out)[:, columns], to_numpy(known)[:, columns])
    assert np.all(np.isfinite(to_numpy(out)))


def test_inpainting_unknown_dims_have_the_data_marginal_moments(backend):
    """With independent dims (diagonal Gaussian data), inpainting dim 1 given dim 0 samples dim 1's
    marginal N(mu_1, s_1^2), uncorrelated with dim 0 (DDPM, T = 1000 cosine; 5 standard errors, n = 3000)."""
    schedule = S.cosine(1000)
    model = GaussianMixtureDenoiser(schedule, **GAUSSIAN)
    x, known = _noise_and_data(backend, model, 3000)
    out = to_numpy(final(inpaint_loop(model, schedule, x, known, backend.asarray(KNOWN_FIRST), Generator(2))))
    unknown = out[:, 1]
    n, mean, std = unknown.size, GAUSSIAN["means"][0][1], GAUSSIAN["stds"][0][1]
    assert abs(unknown.mean() - mean) < 5 * std / math.sqrt(n), unknown.mean()
    assert abs(unknown.std(ddof=1) - std) < 5 * std / math.sqrt(2 * n), unknown.std(ddof=1)
    assert abs(np.corrcoef(out.T)[0, 1]) < 5 / math.sqrt(n)


def test_repaint_moves_for_a_small_case_match_the_papers_level_sequence():
    """T = 3, j = 1, r = 2 visits levels 2, 1, 2, 1, 0, 1, 0, -1 (RePaint's get_schedule_jump), and
    T = 6, j = 2, r = 2 goes 5 4 3 2 [up 3 4] 3 2 1 0 [up 1 2] 1 0 -1 (jumps at levels 2 and 0 only)."""
    def levels(moves):
        out = [moves[0][0]]
        for k, direction in moves:
            out.append(k - 1 if direction == "down" else k)
        return out

    assert levels(repaint_moves(3, 1, 2)) == [2, 1, 2, 1, 0, 1, 0, -1]
    assert levels(repaint_moves(6, 2, 2)) == [5, 4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0, -1]
    assert repaint_moves(4) == [(3, "down"), (2, "down"), (1, "down"), (0, "down")]


@given(T=st.integers(1, 200), jump_length=st.integers(1, 20), resample=st.integers(1, 5))
def test_repaint_moves_have_the_documented_length_and_end_at_level_minus_one(T, jump_length, resample):
    """The moves are a walk on levels [-1, T) from T - 1: a down move at k leaves level k, an up move at k
    reaches level k; it ends with (0, "down") at level -1; its length is T + 2 (r - 1) j * #jump levels
    (#jump levels = len(range(0, T - j, j))); every step index k in [0, T) is taken down
    1 + (r - 1) * (number of jump levels in [k - j, k - 1]) times."""
    moves = repaint_moves(T, jump_length, resample)
    jumps = range(0, T - jump_length, jump_length)
    assert len(moves) == T + 2 * (resample - 1) * jump_length * len(jumps)
    level = T - 1
    for k, direction in moves:
        assert 0 <= k < T
        if direction == "down":
            assert k == level
            level -= 1
        else:
            assert direction == "up" and k == level + 1
            level += 1
    assert level == -1 and moves[-1] == (0, "down")
    downs = [k for k, direction in moves if direction == "down"]
    for k in range(T):
        covering = sum(1 for j in jumps if k - jump_length <= j <= k - 1)
        assert downs.count(k) == 1 + (resample - 1) * covering


@settings(max_examples=10)
@given(T=st.integers(2, 12), jump_length=st.integers(1, 4), resample=st.integers(1, 3), seed=st.integers(0, 1000))
def test_inpainting_noises_the_known_region_to_level_k_minus_1_and_goes_up_by_q_step(backend, T, jump_length,
                                                                                     resample, seed):
    """Replaying the generator's draws (per down move k > 0: step noise, then known-region noise; per up
    move: forward noise): after a down move at k the known region is q_sample(known, k - 1, its noise)
    bit for bit, and after up moves the model is fed x_k = q_step(x_{k-1}, k, noise) of the previous x."""
    schedule = S.cosine(T)
    oracle = GaussianMixtureDenoiser(schedule, **MIXTURE)
    fed = []

    def model(xt, t, y=None):
        fed.append(xt)
        return oracle(xt, t, y)

    x, known = _noise_and_data(backend, oracle, 6, seed)
    steps = list(inpaint_loop(model, schedule, x, known, backend.asarray(KNOWN_FIRST), Generator(seed),
                              jump_length=jump_length, resample=resample))
    replay, current, down = Generator(seed), x, 0
    for k, direction in repaint_moves(T, jump_length, resample):
        if direction == "up":
            current = q_step(schedule, current, step_t(k, x), replay.normal(x.shape, like=x))
            continue
        np.testing.assert_array_equal(to_numpy(fed[down]), to_numpy(current))
        if k > 0:
            replay.normal(x.shape, like=x)  # the step's own noise
            expected = q_sample(schedule, known, step_t(k - 1, x), replay.normal(x.shape, like=x))
        else:
            expected = known
        current = steps[down].x
        np.testing.assert_array_equal(to_numpy(current)[:, 0], to_numpy(expected)[:, 0])
        down += 1
    assert down == len(steps) == len(fed)


def test_inpaint_loop_yields_one_step_per_down_move_in_repaint_order(backend):
    """inpaint_loop yields a SampleStep per down move, with k in the order of repaint_moves."""
    schedule = S.cosine(12)
    model = GaussianMixtureDenoiser(schedule, **MIXTURE)
    x, known = _noise_and_data(backend, model, 4)
    steps = list(inpaint_loop(model, schedule, x, known, backend.asarray(KNOWN_FIRST), Generator(0),
                              jump_length=3, resample=2))
    assert [s.k for s in steps] == [k for k, d in repaint_moves(12, 3, 2) if d == "down"]


def test_sdedit_with_strength_zero_returns_the_input_itself(backend):
    """strength 0 runs no step: final(sdedit_loop(...)) is x0, the same array object, unchanged."""
    schedule = S.cosine(50)
    model = GaussianMixtureDenoiser(schedule, **MIXTURE)
    _, x0 = _noise_and_data(backend, model, 8)
    before = to_numpy(x0).copy()
    for sampler in ("ddim", "ddpm"):
        out = final(sdedit_loop(model, schedule, x0, 0.0, Generator(0), sampler=sampler))
        assert out is x0
        np.testing.assert_array_equal(to_numpy(out), before)


@pytest.mark.parametrize("sampler, options", [("ddpm", {}), ("ddim", {"eta": 0.5})])
def test_sdedit_with_strength_one_is_a_full_run_from_q_sample_at_level_T_minus_1(backend, sampler, options):
    """strength 1 == the full loop from x_{T-1} = q_sample(x0, T - 1, eps), eps the generator's first draw
    and the loop's noise its next ones: bit-identical samples."""
    schedule = S.cosine(40)
    model = GaussianMixtureDenoiser(schedule, **MIXTURE)
    _, x0 = _noise_and_data(backend, model, 32)
    out = final(sdedit_loop(model, schedule, x0, 1.0, Generator(3), sampler=sampler, **options))
    generator = Generator(3)
    xT = q_sample(schedule, x0, step_t(schedule.T - 1, x0), generator.normal(x0.shape, like=x0))
    if sampler == "ddpm":
        expected = final(ddpm_loop(model, schedule, xT, generator))
    else:
        expected = final(ddim_loop(model, schedule, xT, generator=generator, **options))
    np.testing.assert_array_equal(to_numpy(out), to_numpy(expected))


@settings(max_examples=20)
@given(T=st.integers(1, 60), strength=st.floats(0.0, 1.0))
def test_sdedit_runs_round_strength_times_T_steps_from_level_k0(backend, T, strength):
    """SDEdit takes round(strength * T) (half up) steps, from k0 = sdedit_start(T, strength) down to 0."""
    schedule = S.cosine(T)
    model = GaussianMixtureDenoiser(schedule, **MIXTURE)
    _, x0 = _noise_and_data(backend, model, 2)
    k0 = sdedit_start(T, strength)
    assert k0 == math.floor(strength * T + 0.5) - 1
    ks = [s.k for s in sdedit_loop(model, schedule, x0, strength, Generator(0), sampler="ddim")]
    assert ks == (list(range(k0, -1, -1)) if k0 >= 0 else [-1])


def test_editing_outputs_keep_the_input_library_device_and_dtype(backend):
    """Inpainting (with resampling) and SDEdit (both samplers) return float32 samples of x's library and
    device from float32 inputs, with no float64 intermediate array on the strict backend."""
    schedule = S.cosine(20)
    model = GaussianMixtureDenoiser(schedule, **MIXTURE)
    x, known = _noise_and_data(backend, model, 8, dtype="float32")
    mask = backend.asarray(np.array([[True, False]]))
    guard = no_float64_intermediates() if backend.name == "array_api_strict" else contextlib.nullcontext()
    with guard:
        outs = [final(inpaint_loop(model, schedule, x, known, mask, Generator(0), jump_length=4, resample=2)),
                final(sdedit_loop(model, schedule, known, 0.6, Generator(0), sampler="ddpm")),
                final(sdedit_loop(model, schedule, known, 0.6, Generator(0), eta=1.0))]
    for out in outs:
        assert_same_array_kind(out, x)


def test_bad_arguments_raise_naming_the_argument(backend):
    """A mask that does not broadcast to x's shape (or would grow it), mask values outside {0, 1}, known of
    the wrong shape, jump_length or resample < 1, strength outside [0, 1] or non-finite, and an unknown
    SDEdit sampler are refused with the argument's name."""
    schedule = S.cosine(10)
    model = GaussianMixtureDenoiser(schedule, **MIXTURE)
    x, known = _noise_and_data(backend, model, 4)
    mask, wide, grown = (backend.asarray(m) for m in (KNOWN_FIRST, np.ones((4, 3)), np.ones((2, 4, 2))))
    g = Generator(0)
    cases = [
        (lambda: inpaint_loop(model, schedule, x, known, wide, g), "mask must have a shape that broadcasts"),
        (lambda: inpaint_loop(model, schedule, x, known, grown, g), "mask must have a shape that broadcasts"),
        (lambda: inpaint_loop(model, schedule, x, known, 0.5 * mask, g), r"mask must hold only 0 \(unknown\)"),
        (lambda: inpaint_loop(model, schedule, x, known[:2, ...], mask, g), "known must match x's shape"),
        (lambda: inpaint_loop(model, schedule, x, known, mask, g, jump_length=0), "jump_length must be an integer"),
        (lambda: inpaint_loop(model, schedule, x, known, mask, g, resample=0), "resample must be an integer >= 1"),
        (lambda: inpaint_loop(model, schedule, x, known, mask, g, resample=1.5), "resample must be an integer"),
        (lambda: sdedit_loop(model, schedule, known, -0.1, g), "strength must be a finite number >= 0"),
        (lambda: sdedit_loop(model, schedule, known, 1.1, g), r"strength must lie in \[0, 1\]"),
        (lambda: sdedit_loop(model, schedule, known, float("nan"), g), "strength must be a finite number"),
        (lambda: sdedit_loop(model, schedule, known, 0.5, g, sampler="euler"), "sampler must be one of ddim, ddpm"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            final(call())

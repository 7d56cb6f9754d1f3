"""Specification of refdiff.flow_train: training lowers the loss and is a function of its seed, held-out bits/dim of
the digits (dequantised) and of 2-D points (a density), samples on the data's grid, the time budget, and the checks
at the boundary."""

import numpy as np
import pytest

from refdiff.data import load_toy2d
from refdiff.digits_eval import digit_split
from refdiff.flow_train import FlowTrainConfig, flow_bits_per_dim, flow_samples, train_flow
from refdiff.models.flow import FlowConfig, MLPFlowConfig

SMALL = FlowConfig(in_channels=1, image_size=8, hidden=4, scales=2, couplings=1, levels=17)
QUICK = FlowTrainConfig(steps=40, batch_size=16, lr=2e-2)


@pytest.fixture(scope="module")
def trained():
    """(the small flow trained for 40 steps on the digits' training split, the split)."""
    split = digit_split()
    return train_flow(QUICK, SMALL, split[0]), split


def test_training_lowers_the_loss_and_is_a_function_of_the_seed(trained):
    """The loss (bits/dim) of the last 5 steps averages below that of the first 5; a second run with the same seed
    gives the same parameters bit for bit."""
    model, (x_train, _, _, _) = trained
    assert np.mean(model.losses[-5:]) < np.mean(model.losses[:5]) and model.info["steps_done"] == 40
    again = train_flow(QUICK, SMALL, x_train)
    assert all(np.array_equal(model.params[k], again.params[k]) for k in model.params)


def test_held_out_bits_per_dim_are_below_uniform_and_follow_the_seed(trained):
    """On the held-out digits the dequantised bound is positive and below log2(17) = 4.09 bits/dim (uniform over the
    17 levels) after training; the same seed gives the same number."""
    model, (_, x_test, _, _) = trained
    bpd = flow_bits_per_dim(model, x_test, draws=2)
    assert 0 < bpd["bits_per_dim"] < np.log2(17) and bpd["draws"] == 2
    assert flow_bits_per_dim(model, x_test, draws=2) == bpd


def test_samples_lie_on_the_data_grid_and_follow_the_seed(trained):
    """flow_samples gives (n, 1, 8, 8) images on the 17 grey levels of [-1, 1], the same for the same seed."""
    model, _ = trained
    a = flow_samples(model, 6, seed=1)
    assert a.shape == (6, 1, 8, 8)
    np.testing.assert_allclose((a + 1) * 8, np.round((a + 1) * 8), atol=1e-5)
    assert a.min() >= -1 and a.max() <= 1
    np.testing.assert_array_equal(a, flow_samples(model, 6, seed=1))
    assert not np.array_equal(a, flow_samples(model, 6, seed=2))


def test_a_conditional_flow_trains_measures_and_samples_with_labels(trained):
    """With num_classes = 10: training with labels lowers the loss, bits/dim are finite with the labels and without
    them (the null label), and flow_samples takes one label per sample; labels for an unconditional flow, or out of
    range, are refused naming the argument."""
    model, (x_train, x_test, y_train, y_test) = trained
    cfg = FlowConfig(in_channels=1, image_size=8, hidden=4, scales=2, couplings=1, num_classes=10)
    conditional = train_flow(QUICK, cfg, x_train, y_train)
    assert np.mean(conditional.losses[-5:]) < np.mean(conditional.losses[:5])
    for y in (y_test, None):
        assert 0 < flow_bits_per_dim(conditional, x_test, y, draws=1)["bits_per_dim"] < 5
    assert flow_samples(conditional, 10, np.arange(10)).shape == (10, 1, 8, 8)
    with pytest.raises(ValueError, match=r"labels must be None or \(10,\) integers in \[0, num_classes\)"):
        flow_samples(conditional, 10, np.arange(1, 11))
    with pytest.raises(ValueError, match="y must be None for an unconditional flow"):
        train_flow(QUICK, SMALL, x_train, y_train)
    with pytest.raises(ValueError, match=r"y must be an \(1617,\) integer array of labels in \[0, 10\)"):
        train_flow(QUICK, cfg, x_train, y_train[:-1])


def test_a_point_flow_learns_a_2d_toy_and_stops_at_its_time_budget():
    """On 8 Gaussians, 60 steps raise the held-out log-density (bits/dim fall below those of the initial standard
    normal flow); a 0.05 s budget stops a 10000-step run after a few steps."""
    x, _ = load_toy2d("8gaussians", 2000, seed=0)
    cfg = MLPFlowConfig(data_dim=2, hidden=16, couplings=4)
    start = train_flow(FlowTrainConfig(steps=1, lr=1e-12), cfg, x)
    model = train_flow(FlowTrainConfig(steps=60, batch_size=128, lr=1e-2), cfg, x)
    assert flow_bits_per_dim(model, x[:500])["bits_per_dim"] < flow_bits_per_dim(start, x[:500])["bits_per_dim"]
    assert flow_samples(model, 5).shape == (5, 2)
    budget = train_flow(FlowTrainConfig(steps=10_000, batch_size=8, max_seconds=0.05), cfg, x)
    assert 1 <= budget.info["steps_done"] < 10_000


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, "steps must be an integer >= 1, got 0"),
    ({"warmup_steps": 5, "steps": 5}, r"warmup_steps must be an integer in \[0, steps\) = \[0, 5\), got 5"),
    ({"lr": -1.0}, "lr must be a positive finite number, got -1.0"),
    ({"max_seconds": 0}, "max_seconds must be a positive finite number, got 0"),
    ({"lr_decay": "step"}, "lr_decay must be one of"),
    ({"label_dropout": 1.0}, r"label_dropout must be a probability in \[0, 1\), got 1.0"),
    ({"dtype": "float16"}, "dtype must be float32 or float64, got 'float16'"),
])
def test_train_config_bad_fields_raise(kwargs, message):
    """FlowTrainConfig names the bad field, the value and the allowed range."""
    with pytest.raises(ValueError, match=message):
        FlowTrainConfig(**kwargs)


def test_bad_data_and_arguments_raise(trained):
    """train_flow names images outside [-1, 1], of the wrong shape, with NaN, and a non-config; flow_samples names
    n and temperature; flow_bits_per_dim names draws."""
    model, _ = trained
    for x, message in ((np.full((4, 1, 8, 8), 2.0), r"x must lie in \[-1, 1\]"),
                       (np.zeros((4, 1, 4, 4)), r"x must be a floating \(N, 1, 8, 8\) host array"),
                       (np.full((4, 1, 8, 8), np.nan), "x must be finite, got 256 NaN or inf values")):
        with pytest.raises(ValueError, match=message):
            train_flow(QUICK, SMALL, x)
    with pytest.raises(ValueError, match="cfg must be a FlowConfig or an MLPFlowConfig, got dict"):
        train_flow(QUICK, {}, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="n must be an integer >= 1, got 0"):
        flow_samples(model, 0)
    with pytest.raises(ValueError, match="temperature must be a positive finite number, got -1"):
        flow_samples(model, 2, temperature=-1)
    with pytest.raises(ValueError, match="draws must be an integer >= 1, got 0"):
        flow_bits_per_dim(model, np.zeros((4, 1, 8, 8)), draws=0)

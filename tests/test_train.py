"""Specification of training: exact resume, non-finite losses, and atomic checkpoints."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from refdiff.checkpoint import CHECKPOINT_VERSION, load_checkpoint, save_checkpoint
from refdiff.models.mlp import MLPConfig
from refdiff.train import TrainConfig, TrainingError, train

REPO = Path(__file__).resolve().parents[1]


def _toy_data():
    """Two labelled 2-D clusters, host float64: x (400, 2), y (400,)."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal([-0.5, 0.0], 0.1, (200, 2)), rng.normal([0.5, 0.3], 0.1, (200, 2))])
    return x, np.repeat([0, 1], 200)


CONFIG = TrainConfig(steps=12, batch_size=16, lr=1e-3, warmup_steps=2, T=50, checkpoint_every=4)
MODEL = MLPConfig(hidden=32, depth=2, time_embed_dim=16, num_classes=2, dropout=0.1)


@pytest.mark.parametrize("stop", [4, 7])
def test_resume_repeats_an_uninterrupted_run_bit_for_bit(tmp_path, stop):
    """Training N steps, stopping, and resuming to the end gives the same parameters, EMA, optimizer
    state and loss log, bit for bit on NumPy, as one uninterrupted run (dropout and label dropout
    included: every draw comes from the checkpointed generator)."""
    x, y = _toy_data()
    full = train(CONFIG, MODEL, x, y, tmp_path / "full", progress=False)
    train(CONFIG, MODEL, x, y, tmp_path / "split", progress=False, stop_at=stop)
    resumed = train(CONFIG, MODEL, x, y, tmp_path / "split", progress=False, resume=True)
    assert resumed.step == full.step == CONFIG.steps
    assert resumed.losses == full.losses
    for group in ("params", "ema", "opt"):
        a, b = getattr(full, group), getattr(resumed, group)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=f"{group}/{key}")


def test_checkpoint_holds_the_documented_plain_arrays(tmp_path):
    """The checkpoint loads with np.load(allow_pickle=False) alone and holds version, config, step, rng,
    params/, ema/, opt/ and log/loss, with step equal to the steps taken."""
    x, y = _toy_data()
    train(CONFIG, MODEL, x, y, tmp_path, progress=False)
    with np.load(tmp_path / "checkpoint.npz", allow_pickle=False) as npz:
        names = set(npz.files)
        assert int(npz["version"]) == CHECKPOINT_VERSION and int(npz["step"]) == CONFIG.steps
        assert npz["rng"].dtype == np.uint64 and npz["log/loss"].shape == (CONFIG.steps,)
    for prefix in ("params/", "ema/", "opt/"):
        assert any(n.startswith(prefix) for n in names), prefix
    assert load_checkpoint(tmp_path / "checkpoint.npz")["config"]["train"]["steps"] == CONFIG.steps


def test_non_finite_loss_stops_training_naming_the_step_and_keeps_the_last_checkpoint(tmp_path):
    """A learning rate of 1e30 blows the parameters up; training stops with a TrainingError naming the
    step, and the last checkpoint written before it is intact and loadable."""
    x, y = _toy_data()
    cfg = TrainConfig(steps=50, batch_size=16, lr=1e30, warmup_steps=0, T=50, checkpoint_every=1, grad_clip=1e30)
    with pytest.raises(TrainingError, match=r"at step \d+.*last good checkpoint is .*checkpoint.npz"):
        train(cfg, MODEL, x, y, tmp_path, progress=False)
    ckpt = load_checkpoint(tmp_path / "checkpoint.npz")
    assert all(np.all(np.isfinite(v)) for v in ckpt["log"].values())


def test_killed_writer_leaves_the_previous_checkpoint_intact(tmp_path):
    """A process killed (SIGKILL) while it rewrites a large checkpoint leaves the previous one complete:
    the file on disk always loads and holds one whole version, never a mix or a truncation."""
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, {"v": 0}, 0, np.zeros(6, dtype=np.uint64), {"params": {"w": np.zeros(4_000_000)}})
    writer = textwrap.dedent(f"""
        import numpy as np
        from refdiff.checkpoint import save_checkpoint
        for step in range(1, 1000):
            save_checkpoint({str(path)!r}, {{"v": step}}, step, np.zeros(6, dtype=np.uint64),
                            {{"params": {{"w": np.full(4_000_000, float(step))}}}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer], env={"PYTHONPATH": str(REPO), "PATH": ""})
    try:
        while not path.with_name(path.name + ".tmp").exists() and proc.poll() is None:
            pass  # wait until a rewrite is under way
        proc.kill()
    finally:
        proc.wait()
    ckpt = load_checkpoint(path)
    assert np.all(ckpt["params"]["w"] == float(ckpt["step"])) and ckpt["config"]["v"] == ckpt["step"]


def test_load_checkpoint_refuses_missing_foreign_and_future_files(tmp_path):
    """A missing file, an .npz that is not a checkpoint, and a newer version are refused clearly."""
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "none.npz")
    np.savez(tmp_path / "foreign.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="not a refdiff checkpoint"):
        load_checkpoint(tmp_path / "foreign.npz")
    np.savez(tmp_path / "future.npz", version=np.array(CHECKPOINT_VERSION + 1), config=np.array("{}"),
             step=np.array(0), rng=np.zeros(6, dtype=np.uint64))
    with pytest.raises(ValueError, match="has version"):
        load_checkpoint(tmp_path / "future.npz")


def test_bad_train_config_raises_naming_the_argument():
    """Invalid settings are refused when the config is built."""
    for kwargs, match in [({"steps": 0}, "steps must be an integer >= 1"), ({"lr": -1.0}, "lr must be a positive"),
                          ({"label_dropout": 1.0}, r"label_dropout must lie in \[0, 1\)"),
                          ({"dtype": "float16"}, "dtype must be float32 or float64")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**kwargs)

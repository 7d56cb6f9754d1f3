"""Specification of training: exact resume, importance-sampled t, sample grids, non-finite losses,
and atomic checkpoints."""

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import refdiff.train as train_module
from refdiff.checkpoint import CHECKPOINT_VERSION, TMP_SUFFIX, load_checkpoint, save_checkpoint
from refdiff.cli import main
from refdiff.diffusion import Parameterization
from refdiff.generate import check_sampling, previewer
from refdiff.models.mlp import MLPConfig
from refdiff.models.unet import UNetConfig
from refdiff.train import TrainConfig, TrainingError, train, train_step
from refdiff.train_state import init_state, resume_state

REPO = Path(__file__).resolve().parents[1]


def _toy_data():
    """Two labelled 2-D clusters, host float64: x (400, 2), y (400,)."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal([-0.5, 0.0], 0.1, (200, 2)), rng.normal([0.5, 0.3], 0.1, (200, 2))])
    return x, np.repeat([0, 1], 200)


CONFIG = TrainConfig(steps=12, batch_size=16, lr=1e-3, warmup_steps=2, T=50, checkpoint_every=4)
MODEL = MLPConfig(hidden=32, depth=2, time_embed_dim=16, num_classes=2, dropout=0.1)
# T = 6 steps of 10 losses each: the importance sampler warms up after 6 of the 12 steps (60 of 192 draws).
IMPORTANCE = dataclasses.replace(CONFIG, T=6, timesteps="importance")
PNG = b"\x89PNG\r\n\x1a\n"


def _assert_same_state(a, b):
    """Two TrainStates hold the same step, losses, params, EMA and optimizer state, bit for bit."""
    assert a.step == b.step and a.losses == b.losses
    for group in ("params", "ema", "opt"):
        x, y = getattr(a, group), getattr(b, group)
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(np.asarray(x[key]), np.asarray(y[key]), err_msg=f"{group}/{key}")


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


def test_resume_with_importance_sampling_repeats_an_uninterrupted_run_bit_for_bit(tmp_path):
    """With t importance-sampled by the loss's second moment, stopping before the sampler has warmed up
    and resuming after the checkpoint gives the uninterrupted run bit for bit: the checkpoint holds the
    sampler's loss history (sampler/history, sampler/counts), which decides p_t after the warm-up."""
    x, y = _toy_data()
    full = train(IMPORTANCE, MODEL, x, y, tmp_path / "full", progress=False)
    train(IMPORTANCE, MODEL, x, y, tmp_path / "split", progress=False, stop_at=5)
    resumed = train(IMPORTANCE, MODEL, x, y, tmp_path / "split", progress=False, resume=True)
    _assert_same_state(full, resumed)
    assert full.sampler.warmed_up  # the resumed half ran on the restored history
    ckpt = load_checkpoint(tmp_path / "split" / "checkpoint.npz")
    np.testing.assert_array_equal(ckpt["sampler"]["history"], full.sampler.get_state()["history"])
    np.testing.assert_array_equal(ckpt["sampler"]["counts"], np.full(IMPORTANCE.T, 10))


def test_importance_weights_are_one_until_the_sampler_warms_up_then_one_over_T_p(monkeypatch):
    """Improved DDPM's rule: until every t has 10 losses, t is uniform and each sample's weight is 1;
    afterwards t ~ p_t (proportional to sqrt(E[L_t^2]), mixed with 0.001 uniform) and the loss weights
    are w = 1 / (T p_t), the p_t of the sampler before the step; the sampler records every step's losses."""
    x, y = _toy_data()
    seen = []
    real_loss = train_module.training_loss

    def spy(*args, weights=None, **kwargs):
        seen.append((np.asarray(args[3]), None if weights is None else np.asarray(weights)))
        return real_loss(*args, weights=weights, **kwargs)

    monkeypatch.setattr(train_module, "training_loss", spy)
    state, schedule = init_state(IMPORTANCE, MODEL), IMPORTANCE.schedule_obj()
    warm_steps = 0
    for _ in range(IMPORTANCE.steps):
        warm, p = state.sampler.warmed_up, state.sampler.probabilities()
        counts = state.sampler.get_state()["counts"]
        train_step(IMPORTANCE, MODEL, schedule, state, x, y)
        t, w = seen[-1]
        expected = np.minimum(counts + np.bincount(t, minlength=IMPORTANCE.T), 10)
        np.testing.assert_array_equal(state.sampler.get_state()["counts"], expected)
        if not warm:
            np.testing.assert_array_equal(w, np.ones_like(w))
            continue
        warm_steps += 1
        assert not np.allclose(p, 1.0 / IMPORTANCE.T)
        np.testing.assert_allclose(w, 1.0 / (IMPORTANCE.T * p[t]), rtol=1e-6)
    assert 0 < warm_steps < IMPORTANCE.steps


def test_sample_grids_and_loss_curve_do_not_disturb_training(tmp_path):
    """sample_every = 4 writes samples_step4.png, samples_step8.png, samples_step12.png (a scatter over
    the 2-D data) and loss_curve.png, and trains the same numbers bit for bit as sample_every = 0:
    the grids draw from their own generator, never the training stream."""
    x, y = _toy_data()
    plain = train(CONFIG, MODEL, x, y, tmp_path / "plain", progress=False)
    cfg = dataclasses.replace(CONFIG, sample_every=4)
    shown = train(cfg, MODEL, x, y, tmp_path / "shown", progress=False,
                  preview=previewer(cfg, MODEL, x, tmp_path / "shown"))
    _assert_same_state(plain, shown)
    for name in ("samples_step4.png", "samples_step8.png", "samples_step12.png", "loss_curve.png"):
        assert (tmp_path / "shown" / name).read_bytes()[:8] == PNG, name
    assert not list((tmp_path / "plain").glob("*.png"))


def test_sample_every_without_a_preview_hook_is_an_error_naming_both(tmp_path):
    """train(cfg with sample_every > 0) without preview= raises before any step, naming both."""
    x, y = _toy_data()
    with pytest.raises(ValueError, match="sample_every=4 needs preview="):
        train(dataclasses.replace(CONFIG, sample_every=4), MODEL, x, y, tmp_path, progress=False)
    assert not list(tmp_path.iterdir())


def test_sample_grid_of_a_class_conditional_unet_has_one_row_per_class(tmp_path):
    """A tiny class-conditional U-Net (3 classes) with sample_every = 2 writes samples_step2.png: a grid
    of 3 rows (one per class) of 8 images: about 2.4 times as wide as tall (1 row: 5.4; 4 rows: 1.9)."""
    from PIL import Image

    rng = np.random.default_rng(1)
    x, y = np.tanh(rng.normal(size=(30, 1, 8, 8))), np.arange(30) % 3
    model = UNetConfig(in_channels=1, out_channels=1, image_size=8, base_channels=8, channel_mult=(1,),
                       num_res_blocks=1, groups=4, num_classes=3, time_embed_dim=16)
    cfg = TrainConfig(steps=2, batch_size=4, warmup_steps=0, T=20, sample_every=2)
    train(cfg, model, x, y, tmp_path, progress=False, preview=previewer(cfg, model, x, tmp_path))
    width, height = Image.open(tmp_path / "samples_step2.png").size
    assert (tmp_path / "loss_curve.png").read_bytes()[:8] == PNG
    assert 2.1 < width / height < 2.8  # 8 columns by 3 labelled rows plus a title


def test_cli_train_takes_importance_sampling_and_sample_every(tmp_path):
    """`refdiff train --timesteps importance --sample-every 3` trains with the sampler (its history is in
    the checkpoint) and writes samples_step3.png and loss_curve.png."""
    out = tmp_path / "run"
    assert main(["train", "--data", "toy2d:two_moons", "--preset", "mlp", "--batch-size", "16", "--T", "20",
                 "--steps", "3", "--timesteps", "importance", "--sample-every", "3", "--out", str(out)]) == 0
    ckpt = load_checkpoint(out / "checkpoint.npz")
    assert ckpt["sampler"]["counts"].shape == (20,) and ckpt["config"]["train"]["timesteps"] == "importance"
    assert (out / "samples_step3.png").read_bytes()[:8] == PNG and (out / "loss_curve.png").exists()


def test_checkpoint_holds_the_documented_plain_arrays(tmp_path):
    """The checkpoint loads with np.load(allow_pickle=False) alone and holds version, config, step, rng,
    params/, ema/, opt/ and log/loss, with step equal to the steps taken; arrays=False reads the head only."""
    x, y = _toy_data()
    train(CONFIG, MODEL, x, y, tmp_path, progress=False)
    with np.load(tmp_path / "checkpoint.npz", allow_pickle=False) as npz:
        names = set(npz.files)
        assert int(npz["version"]) == CHECKPOINT_VERSION and int(npz["step"]) == CONFIG.steps
        assert npz["rng"].dtype == np.uint64 and npz["log/loss"].shape == (CONFIG.steps,)
    for prefix in ("params/", "ema/", "opt/"):
        assert any(n.startswith(prefix) for n in names), prefix
    assert load_checkpoint(tmp_path / "checkpoint.npz")["config"]["train"]["steps"] == CONFIG.steps
    head = load_checkpoint(tmp_path / "checkpoint.npz", arrays=False)  # what resume reads for the settings
    assert set(head) == {"path", "config", "step", "rng"} and head["step"] == CONFIG.steps


def test_samples_of_points_are_clipped_to_the_training_data_bound(tmp_path):
    """The checkpoint records data_bound = max |x| of the training points; refdiff.generate's clip_x0="auto"
    bounds predicted points by it (images by 1), so an undertrained model's points stay inside the data's
    box, and clip_x0=None lets them out."""
    from refdiff.generate import generate, load_model

    x, y = _toy_data()
    train(CONFIG, MODEL, x, y, tmp_path, progress=False)
    loaded = load_model(tmp_path / "checkpoint.npz")
    assert loaded.data_bound == float(np.max(np.abs(x)))
    labels = np.arange(64) % 2
    clipped = generate(loaded, (64, 2), labels, "ddim", 10)
    free = generate(loaded, (64, 2), labels, "ddim", 10, clip_x0=None)
    assert np.max(np.abs(clipped)) <= loaded.data_bound * (1 + 1e-6) < np.max(np.abs(free))


def test_a_model_trained_with_the_hybrid_loss_samples_with_its_learned_variance(tmp_path):
    """generate reads the checkpoint's parameterization (TrainConfig.parameterization): a model whose loss
    trained (N, 2C) learned-range outputs samples with every sampler, to finite (N, C) points."""
    from refdiff.generate import SAMPLERS, generate, load_model

    x, y = _toy_data()
    cfg = dataclasses.replace(CONFIG, steps=3, warmup_steps=1, loss="hybrid")
    train(cfg, dataclasses.replace(MODEL, learn_sigma=True), x, y, tmp_path, progress=False)
    loaded = load_model(tmp_path / "checkpoint.npz")
    for sampler in SAMPLERS:
        samples = generate(loaded, (4, 2), np.arange(4) % 2, sampler, 3)
        assert samples.shape == (4, 2) and np.all(np.isfinite(samples)), sampler


def test_sampling_settings_are_checked_naming_the_setting_and_its_range():
    """check_sampling (what generate and the demo check before work): a known sampler, steps in [1, T] for
    ddim and ddpm (they respace the model's T steps) and >= 1 for the sigma-space samplers, guidance a
    finite number >= 0."""
    check_sampling("ddim", 1000, 0.0, 1000)
    check_sampling("euler", 5000, 3.0, 1000)
    for args, match in [(("plms", 10, 1.0, 1000), "sampler must be one of ddim, ddpm, euler"),
                        (("ddim", 0, 1.0, 1000), r"steps must be an integer in \[1, 1000\] for ddim"),
                        (("ddpm", 1001, 1.0, 1000), r"steps must be an integer in \[1, 1000\] for ddpm"),
                        (("heun", 0, 1.0, 1000), r"steps must be an integer in \[1, 10000\] for heun, got 0"),
                        (("euler", 100_000_000, 1.0, 1000), r"steps must be an integer in \[1, 10000\] for euler"),
                        (("ddim", 2.5, 1.0, 1000), "steps must be an integer"),
                        (("ddim", 10, -1.0, 1000), "guidance must be a finite number >= 0"),
                        (("ddim", 10, float("inf"), 1000), "guidance must be a finite number >= 0")]:
        with pytest.raises(ValueError, match=match):
            check_sampling(*args)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")  # the blow-up on purpose
def test_non_finite_loss_stops_training_naming_the_step_and_keeps_the_last_checkpoint(tmp_path):
    """Three good steps, then a learning rate of 1e30 blows the parameters up (|w| ~ 1e30, still finite):
    training stops with a TrainingError naming the step, the exploded state is never saved, and the
    last good checkpoint (step 3) loads and takes a step with a finite loss."""
    x, y = _toy_data()
    cfg = TrainConfig(steps=50, batch_size=16, lr=1e-3, warmup_steps=0, T=50, checkpoint_every=1, grad_clip=1e30)
    train(dataclasses.replace(cfg, steps=3), MODEL, x, y, tmp_path, progress=False)
    cfg = dataclasses.replace(cfg, lr=1e30)
    with pytest.raises(TrainingError, match=r"at step \d+.*last good checkpoint is .*checkpoint.npz"):
        train(cfg, MODEL, x, y, tmp_path, resume=True, progress=False)
    ckpt = load_checkpoint(tmp_path / "checkpoint.npz")
    assert ckpt["step"] == 3 and all(np.all(np.isfinite(v)) for v in ckpt["log"].values())
    state = resume_state(ckpt, cfg)
    assert np.isfinite(train_step(dataclasses.replace(cfg, lr=1e-3), MODEL, cfg.schedule_obj(), state, x, y))


def test_a_checkpoint_with_non_finite_parameters_is_refused_naming_the_file_and_array(tmp_path):
    """load_checkpoint of a file whose params, EMA or optimizer state hold NaN or inf raises a ValueError
    naming the file and the array; a finite one loads."""
    path = tmp_path / "checkpoint.npz"
    for group in ("params", "ema", "opt"):
        save_checkpoint(path, {}, 1, np.zeros(6, dtype=np.uint64), {group: {"w": np.array([1.0, np.inf])}})
        with pytest.raises(ValueError, match=f"checkpoint {path} holds non-finite values in {group}/w"):
            load_checkpoint(path)
    save_checkpoint(path, {}, 1, np.zeros(6, dtype=np.uint64), {"params": {"w": np.array([1.0, 2.0])}})
    assert load_checkpoint(path)["params"]["w"].tolist() == [1.0, 2.0]


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")
def test_data_that_overflow_stop_training_naming_the_step_or_the_data(tmp_path):
    """Data at 1e30 make the gradient norm overflow: training stops at step 0 with a TrainingError naming
    the step, instead of "training" with zero steps; data beyond float32's range or NaN are refused."""
    x, y = _toy_data()
    with pytest.raises(TrainingError, match=r"at step 0"):
        train(CONFIG, MODEL, x * 1e30, y, tmp_path / "a", progress=False)
    assert not (tmp_path / "a" / "checkpoint.npz").exists()
    for bad in (x * 1e300, np.where(x > 0.5, np.nan, x)):
        with pytest.raises(ValueError, match=r"x must be finite in float32 \(data in \[-1, 1\]\), got max"):
            train(CONFIG, MODEL, bad, y, tmp_path / "b", progress=False)


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
        while not list(tmp_path.glob("*" + TMP_SUFFIX)) and proc.poll() is None:
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


def test_an_existing_checkpoint_is_never_overwritten_without_overwrite_true(tmp_path):
    """Training into a folder that holds a checkpoint, without resume, is refused and leaves the file's
    bytes as they were; overwrite=True trains anew and replaces it."""
    x, y = _toy_data()
    short = dataclasses.replace(CONFIG, steps=4)
    train(short, MODEL, x, y, tmp_path, progress=False)
    before = (tmp_path / "checkpoint.npz").read_bytes()
    with pytest.raises(ValueError, match=r"checkpoint.npz exists: resume it, or train into another folder"):
        train(short, MODEL, x, y, tmp_path, progress=False)
    assert (tmp_path / "checkpoint.npz").read_bytes() == before
    train(dataclasses.replace(short, steps=3, checkpoint_every=1), MODEL, x, y, tmp_path, progress=False,
          overwrite=True)
    assert load_checkpoint(tmp_path / "checkpoint.npz")["step"] == 3


def test_resume_refuses_other_diffusion_model_or_data_settings_and_takes_new_steps_and_lr(tmp_path):
    """What the checkpoint's state means must match (T, schedule, prediction, loss, weighting, timesteps,
    the model config, one sample's shape): each difference is named with both values; the number of
    steps and the optimiser's settings may change."""
    x, y = _toy_data()
    train(dataclasses.replace(CONFIG, steps=4), MODEL, x, y, tmp_path, progress=False)
    for cfg, model, data, named in [
            (dataclasses.replace(CONFIG, T=60), MODEL, x, "T 50 -> 60"),
            (dataclasses.replace(CONFIG, prediction="v", schedule="linear"), MODEL, x,
             "schedule 'cosine' -> 'linear'; prediction 'eps' -> 'v'"),
            (CONFIG, dataclasses.replace(MODEL, hidden=16), x, "model.hidden 32 -> 16"),
            (CONFIG, MODEL, np.concatenate([x, x], axis=1), "sample shape (2,) -> (4,)")]:
        with pytest.raises(ValueError, match="cannot resume a checkpoint trained with other settings") as err:
            train(cfg, model, data, y, tmp_path, resume=True, progress=False)
        assert named in str(err.value)
    state = train(dataclasses.replace(CONFIG, steps=6, lr=5e-4, batch_size=8), MODEL, x, y, tmp_path, resume=True,
                  progress=False)
    assert state.step == 6 and load_checkpoint(tmp_path / "checkpoint.npz")["config"]["train"]["lr"] == 5e-4


def test_bad_train_config_raises_naming_the_argument():
    """Every invalid setting is refused when the config is built, naming the field and what it allows."""
    for kwargs, match in [({"steps": 0}, r"steps must be an integer in \[1, 10000000\], got 0"),
                          ({"lr": -1.0}, "lr must be a positive"),
                          ({"batch_size": 2.0}, r"batch_size must be an integer in \[1, 65536\]"),
                          ({"batch_size": 10**9}, r"batch_size must be an integer in \[1, 65536\], got 1000000000"),
                          ({"T": 10**9}, r"T must be an integer in \[1, 100000\], got 1000000000"),
                          ({"checkpoint_every": 0}, "checkpoint_every must be an integer >= 1, got 0"),
                          ({"warmup_steps": -1}, "warmup_steps must be an integer >= 0, got -1"),
                          ({"steps": 5, "warmup_steps": 5}, "warmup_steps must be < steps = 5, got 5"),
                          ({"grad_clip": 0.0}, "grad_clip must be a positive finite number"),
                          ({"weight_decay": -0.1}, "weight_decay must be a finite number >= 0"),
                          ({"ema_decay": 1.5}, r"ema_decay must lie in \[0, 1\], got 1.5"),
                          ({"label_dropout": 1.0}, r"label_dropout must lie in \[0, 1\)"),
                          ({"text_lr_scale": 0.0}, "text_lr_scale must be a positive finite number, got 0.0"),
                          ({"lr_decay": "step"}, "lr_decay must be one of constant, cosine, linear"),
                          ({"schedule": "quad"}, "schedule must be one of linear, cosine, sigmoid, scaled_linear"),
                          ({"prediction": "score"}, "prediction must be one of eps, x0, v"),
                          ({"loss": "l1"}, "loss must be one of mse, hybrid, kl"),
                          ({"weighting": "snr"}, "weighting must be one of none, min_snr"),
                          ({"dtype": "float16"}, "dtype must be one of float32, float64"),
                          ({"timesteps": "loss"}, "timesteps must be one of uniform, importance"),
                          ({"sample_every": -1}, "sample_every must be an integer >= 0")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**kwargs)


def test_parameterization_reads_prediction_and_whether_the_loss_learns_the_variance():
    """TrainConfig.parameterization(variance) == Parameterization(prediction, learned_range) for the losses
    that train variance channels (hybrid, kl), else Parameterization(prediction, variance); convention openai."""
    for prediction in ("eps", "x0", "v"):
        for loss, variance, expected in [("mse", "fixed_small", "fixed_small"),
                                         ("mse", "fixed_large", "fixed_large"),
                                         ("hybrid", "fixed_large", "learned_range"),
                                         ("kl", "fixed_small", "learned_range")]:
            cfg = dataclasses.replace(CONFIG, prediction=prediction, loss=loss)
            assert cfg.parameterization(variance) == Parameterization(prediction, expected, "openai")
    assert CONFIG.parameterization() == Parameterization()


# ---------------------------------------------------------------------------- a text model on captions

def _tiny_text_config():
    """A text-conditional U-Net for 3x16x16 captioned shapes, small enough for a test (base 8, width 8)."""
    from refdiff.data.captions import CONTEXT, VOCAB
    from refdiff.models.text_encoder import TextEncoderConfig
    from refdiff.models.text_unet import TextUNetConfig

    return TextUNetConfig(unet=UNetConfig(in_channels=3, out_channels=3, image_size=16, base_channels=8,
                                          channel_mult=(1, 2), attention_resolutions=(8,), groups=4,
                                          time_embed_dim=16, dropout=0.1),
                          text=TextEncoderConfig(vocab_size=len(VOCAB), context_length=CONTEXT, width=8, layers=1,
                                                 heads=2, mlp_ratio=1))


def test_a_text_model_trains_on_captions_and_resumes_bit_for_bit(tmp_path):
    """train() on (x, tokens) from load_captions and tokenize runs the text-conditional U-Net through the
    registry: stopped after 2 steps and resumed to 4 it repeats an uninterrupted run bit for bit (caption
    dropout and U-Net dropout included), and the checkpoint samples with prompts and guidance 3."""
    from refdiff.data.captions import load_captions, tokenize
    from refdiff.generate import generate, load_model

    x, captions, _ = load_captions(32, seed=0)
    tokens, _ = tokenize(captions)
    cfg, model_cfg = dataclasses.replace(CONFIG, steps=4, batch_size=4, warmup_steps=1, checkpoint_every=2), \
        _tiny_text_config()
    full = train(cfg, model_cfg, x, tokens, tmp_path / "full", progress=False)
    train(cfg, model_cfg, x, tokens, tmp_path / "split", progress=False, stop_at=2)
    _assert_same_state(train(cfg, model_cfg, x, tokens, tmp_path / "split", progress=False, resume=True), full)
    loaded = load_model(tmp_path / "split" / "checkpoint.npz")
    assert loaded.model_cfg == model_cfg
    prompts, _ = tokenize(["small red circle top left", "cyan ring"])
    samples = generate(loaded, (2, 3, 16, 16), prompts, "ddim", steps=2, guidance=3.0)
    assert samples.shape == (2, 3, 16, 16) and np.all(np.isfinite(samples))


def test_text_lr_scale_scales_the_encoders_steps_alone():
    """optimizer_step with text_lr_scale s moves every "text.*" parameter (the encoder) by s times its
    step at s = 1, and every other parameter (the U-Net, the caption's projection) by the same step."""
    from refdiff.backend import Generator
    from refdiff.models.text_unet import init_params

    model_cfg = _tiny_text_config()
    params = init_params(model_cfg, Generator(0), np.float64)
    grads = {k: np.random.default_rng(1).standard_normal(v.shape) for k, v in params.items()}
    moved = {}
    for scale in (1.0, 0.1):
        cfg = dataclasses.replace(CONFIG, dtype="float64", text_lr_scale=scale, grad_clip=1e9)
        state = init_state(cfg, model_cfg, params)
        state.step = cfg.warmup_steps  # the full rate
        train_module.optimizer_step(cfg, state, grads)
        moved[scale] = {k: state.params[k] - params[k] for k in params}
    assert any(k.startswith("text.") for k in params) and "text_embed.w" in params
    for key in params:
        np.testing.assert_allclose(moved[0.1][key], moved[1.0][key] * (0.1 if key.startswith("text.") else 1.0),
                                   rtol=1e-9, atol=1e-14)  # p + step - p: rounding of p, ~1e-16


def test_caption_dropout_replaces_whole_captions_by_the_empty_one():
    """draw_batch with tokens (N, L) and the padding token as the null condition: each row is its caption
    unchanged or, with probability p, the empty caption (all padding), never a mix; the fraction is p
    within 5 standard errors (B = 4000)."""
    cfg, p = dataclasses.replace(CONFIG, batch_size=4000), 0.2
    tokens = np.tile(np.array([[3, 9, 15, 0]]), (10, 1))
    _, y = train_module.draw_batch(cfg, np.zeros((10, 2)), tokens, 0, p, train_module.Generator(0), None)
    empty = np.all(y == 0, axis=1)
    assert np.all(empty | np.all(y == tokens[0], axis=1))
    assert abs(empty.mean() - p) < 5 * np.sqrt(p * (1 - p) / cfg.batch_size)


# ---------------------------------------------------------------- an inpainting model fine-tuned from a text model

def _tiny_inpainting_start(seed=0):
    """(tiny text model config, its inpainting config, the widened random text parameters) for fine-tuning."""
    from refdiff.backend import Generator
    from refdiff.models.text_inpaint import inpaint_config, inpaint_params
    from refdiff.models.text_unet import init_params

    text = _tiny_text_config()
    return text, inpaint_config(text), inpaint_params(init_params(text, Generator(seed)), text)


def test_an_inpainting_model_fine_tunes_from_init_and_resumes_bit_for_bit(tmp_path):
    """train(init=widened text params): step 0's state holds init exactly; stopped after 2 steps and resumed
    to 4 it repeats an uninterrupted run bit for bit (the masks are drawn from the checkpointed stream); the
    first convolution's weights of the new channels, zero at the start, have moved (the gradient reaches them)."""
    from refdiff.data.captions import load_captions, tokenize

    x, captions, _ = load_captions(32, seed=0)
    tokens, _ = tokenize(captions)
    _, model_cfg, init = _tiny_inpainting_start()
    cfg = dataclasses.replace(CONFIG, steps=4, batch_size=4, warmup_steps=1, checkpoint_every=2)
    start = init_state(cfg, model_cfg, init)
    for key, value in init.items():
        np.testing.assert_array_equal(start.params[key], value.astype(np.float32), err_msg=key)
    full = train(cfg, model_cfg, x, tokens, tmp_path / "full", progress=False, init=init)
    train(cfg, model_cfg, x, tokens, tmp_path / "split", progress=False, stop_at=2, init=init)
    _assert_same_state(train(cfg, model_cfg, x, tokens, tmp_path / "split", progress=False, resume=True), full)
    assert np.all(np.abs(full.params["input.conv.w"][:, :, 3:]).sum(axis=(0, 1, 3)) > 0)
    assert load_checkpoint(tmp_path / "full" / "checkpoint.npz", arrays=False)["config"]["model"]["inpaint"]


def test_an_inpainting_step_shows_the_model_x0_where_keep_is_1_and_the_mask(monkeypatch):
    """train_step of an inpainting model hands loss_gradient a batch whose cond is [x0 * keep; keep]: keep a
    random_keep mask, x0 itself where keep = 1 and 0 in the region;
    a text model's batch has cond None."""
    from refdiff import schedules
    from refdiff.data.captions import load_captions, tokenize

    x, captions, _ = load_captions(16, seed=1)
    tokens, _ = tokenize(captions)
    text, model_cfg, init = _tiny_inpainting_start()
    cfg = dataclasses.replace(CONFIG, batch_size=6)
    seen = []
    monkeypatch.setattr(train_module, "loss_gradient", lambda *args: seen.append(args[-2]) or
                        (dict(args[3]), np.zeros(args[-2].x0.shape[0])))
    monkeypatch.setattr(train_module, "optimizer_step", lambda *args: None)
    schedule = schedules.by_name(cfg.schedule, cfg.T)
    for model, params in ((model_cfg, init), (text, None)):
        train_step(cfg, model, schedule, init_state(cfg, model, params), x, tokens)
    inpainting, plain = seen
    assert plain.cond is None and inpainting.cond.shape == (6, 4, 16, 16)
    keep = inpainting.cond[:, 3:]
    assert set(np.unique(keep)) == {0.0, 1.0} and np.all(keep.min(axis=(1, 2, 3)) == 0)
    np.testing.assert_array_equal(inpainting.cond[:, :3], inpainting.x0 * keep)


def test_init_is_checked_against_the_model_and_refused_with_resume(tmp_path):
    """init_state refuses parameters of another model naming the keys; train refuses init with resume."""
    text, model_cfg, init = _tiny_inpainting_start()
    with pytest.raises(ValueError, match=r"init must hold the model's parameters.*1 keys .*: input.conv.w"):
        init_state(CONFIG, text, {**init})
    with pytest.raises(ValueError, match="init starts a run from given parameters; resume continues"):
        train(CONFIG, model_cfg, np.zeros((4, 3, 16, 16)), None, tmp_path, resume=True, init=init)

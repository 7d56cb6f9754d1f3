"""Specification of refdiff.cli.clip: ``refdiff train-clip`` and ``refdiff sample --clip CKPT --clip-scale S``,
run in-process on a text model and a CLIP of a few steps each."""

import numpy as np
import pytest

from refdiff.cli import main
from refdiff.clip_train import load_clip

PROMPT = "large red circle top left"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(folder, the text model's checkpoint, the CLIP's): 2 steps each at batch 4, T = 20 for both."""
    folder = tmp_path_factory.mktemp("clipcli")
    assert main(["train", "--data", "captions", "--steps", "2", "--batch-size", "4", "--T", "20",
                 "--out", str(folder / "text")]) == 0
    assert main(["train-clip", "--steps", "2", "--batch-size", "4", "--train-size", "8", "--T", "20",
                 "--out", str(folder / "clip")]) == 0
    return folder, str(folder / "text" / "checkpoint.npz"), str(folder / "clip" / "checkpoint.npz")


def _error(capsys) -> str:
    """The one line a failed command wrote to stderr."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_train_clip_writes_a_clip_checkpoint_and_never_overwrites_it(checkpoints, capsys):
    """train-clip writes OUT/checkpoint.npz of kind ClipConfig with its run's settings, steps done and loss log,
    which load_clip reads back; a second run into the folder is refused and leaves the checkpoint as it was."""
    folder, _, clip = checkpoints
    trained = load_clip(clip)
    assert type(trained.cfg).__name__ == "ClipConfig" and trained.cfg.image_size == 16
    assert trained.train_cfg.T == 20 and trained.train_cfg.batch_size == 4 and trained.train_cfg.steps == 2
    assert len(trained.losses) == 2 and np.all(np.isfinite(trained.losses))
    assert trained.info["steps_done"] == 2
    before = (folder / "clip" / "checkpoint.npz").read_bytes()
    capsys.readouterr()
    assert main(["train-clip", "--steps", "2", "--batch-size", "4", "--train-size", "8", "--out",
                 str(folder / "clip")]) == 1
    assert "holds a checkpoint already" in _error(capsys)
    assert (folder / "clip" / "checkpoint.npz").read_bytes() == before


def test_train_clip_stops_at_its_time_budget(tmp_path):
    """--max-seconds stops the run after the step during which the budget ran out: with a budget of
    a microsecond, one step of the 50 is done and saved (the learning-rate schedule still spans 50)."""
    assert main(["train-clip", "--steps", "50", "--batch-size", "4", "--train-size", "8", "--max-seconds", "1e-6",
                 "--out", str(tmp_path / "c")]) == 0
    trained = load_clip(tmp_path / "c" / "checkpoint.npz")
    assert trained.info["steps_done"] == 1 and len(trained.losses) == 1 and trained.train_cfg.steps == 50


def test_clip_guidance_changes_the_samples_and_scale_zero_is_none(checkpoints):
    """sample --clip CLIP --clip-scale S with the same seed: S = 0 gives the unguided samples exactly (with CFG
    and with --guidance 0), S = 50 other, finite samples, both with CFG off (CLIP alone) and on, DDIM and DDPM."""
    folder, text, clip = checkpoints

    def images(*flags):
        out = folder / "s.npz"
        assert main(["sample", text, "--prompt", PROMPT, "--count", "2", "--steps", "3", "--force",
                     "--out", str(out), *flags]) == 0
        with np.load(out, allow_pickle=False) as npz:
            return npz["images"]

    for sampler in ("ddim", "ddpm"):
        for guidance in ("0", "3"):
            plain = images("--sampler", sampler, "--guidance", guidance)
            np.testing.assert_array_equal(images("--sampler", sampler, "--guidance", guidance, "--clip", clip,
                                                 "--clip-scale", "0"), plain)
            guided = images("--sampler", sampler, "--guidance", guidance, "--clip", clip, "--clip-scale", "50")
            assert guided.shape == plain.shape and np.all(np.isfinite(guided))
            assert np.max(np.abs(guided - plain)) > 1e-3


def test_clip_flags_errors_name_what_to_fix(checkpoints, tmp_path, capsys):
    """One line naming the flag: a CLIP checkpoint of another kind, a scale < 0 or not finite, --clip-scale
    without --clip, a sampler without gradient guidance, no prompt, a CLIP of another T or image size than
    the text model's; train-clip on other data or with a bad size names its flag too."""
    folder, text, clip = checkpoints
    assert main(["train-clip", "--steps", "1", "--batch-size", "4", "--train-size", "8", "--T", "20",
                 "--image-size", "24", "--out", str(tmp_path / "c24")]) == 0
    assert main(["train-clip", "--steps", "1", "--batch-size", "4", "--train-size", "8",
                 "--out", str(tmp_path / "c1000")]) == 0
    capsys.readouterr()
    sample = ["sample", text, "--prompt", PROMPT, "--count", "1", "--steps", "2", "--out", str(tmp_path / "e.png")]
    cases = [(sample + ["--clip", text], "does not hold a CLIP (model kind 'TextUNetConfig'"),
             (sample + ["--clip", clip, "--clip-scale", "-1"], "--clip-scale must be a finite number >= 0"),
             (sample + ["--clip", clip, "--clip-scale", "inf"], "--clip-scale must be a finite number >= 0"),
             (sample + ["--clip-scale", "2"], "--clip-scale 2.0 needs --clip"),
             (sample + ["--clip", clip, "--sampler", "heun"], "--clip needs --sampler ddim or ddpm"),
             (["sample", text, "--count", "1", "--steps", "2", "--clip", clip, "--out", str(tmp_path / "e.png")],
              "--clip needs --prompt"),
             (sample + ["--clip", str(tmp_path / "c24" / "checkpoint.npz")],
              "the CLIP's image shape is (3, 24, 24), the text model's is (3, 16, 16)"),
             (sample + ["--clip", str(tmp_path / "c1000" / "checkpoint.npz")],
              "the CLIP's diffusion steps T is 1000, the text model's is 20"),
             (sample + ["--clip", str(tmp_path / "missing.npz")], "does not exist"),
             (["train-clip", "--data", "digits", "--out", str(tmp_path / "d")], "--data must be captions"),
             (["train-clip", "--batch-size", "1", "--out", str(tmp_path / "d")], "--batch-size must be an integer >= 2"),
             (["train-clip", "--max-seconds", "0", "--out", str(tmp_path / "d")], "--max-seconds must be a positive"),
             (["train-clip", "--preset", "text16", "--out", str(tmp_path / "d")], "--preset must be one of shapes16_clip")]
    for argv, message in cases:
        assert main(argv) == 1, argv
        assert message in _error(capsys), (argv, message)
    assert not (tmp_path / "e.png").exists() and not (tmp_path / "d" / "checkpoint.npz").exists()

"""Specification of `refdiff inpaint` and of `refdiff train --inpaint --init`: fine-tuning GLIDE's inpainting model
from a text model's checkpoint, repainting a mask's white region by it or by replacement, and the errors."""

import re

import numpy as np
import pytest
from PIL import Image

from refdiff.checkpoint import load_checkpoint
from refdiff.cli import main
from refdiff.data.captions import load_captions

PROMPT = "small blue square bottom right"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-step text model on captions (T = 20), its inpainting model fine-tuned 2 steps from it with --init, a
    16x16 captioned image and masks (white: the bottom-right quadrant; one with a grey pixel; one 8x8)."""
    folder = tmp_path_factory.mktemp("inpaint")
    assert main(["train", "--data", "captions", "--steps", "2", "--batch-size", "4", "--T", "20",
                 "--out", str(folder / "text")]) == 0
    assert main(["train", "--data", "captions", "--inpaint", "--init", str(folder / "text" / "checkpoint.npz"),
                 "--steps", "2", "--batch-size", "4", "--T", "20", "--out", str(folder / "inpaint")]) == 0
    x, _, _ = load_captions(1, seed=3)
    Image.fromarray(np.round((x[0].transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8)).save(folder / "in.png")
    mask = np.zeros((16, 16), np.uint8)
    mask[8:, 8:] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    mask[0, 0] = 128
    Image.fromarray(mask).save(folder / "grey.png")
    Image.fromarray(mask[8:, 8:]).save(folder / "small.png")  # all white
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "black.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "in8.png")
    (folder / "not.png").write_text("not an image")
    return folder


def _png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def test_fine_tuned_inpainting_model_and_replacement_repaint_the_white_region(runs, tmp_path):
    """train --inpaint --init makes an inpainting checkpoint (2C + 1 input channels, zero-widened from the text
    model) that resumes; `refdiff inpaint` with it and with the text model writes a 16x16 PNG, replacement equal
    to the input on every black mask pixel, and with two prompts and --count 2 a grid."""
    ckpt = load_checkpoint(runs / "inpaint" / "checkpoint.npz", arrays=False)
    assert ckpt["config"]["model"]["inpaint"] and ckpt["config"]["model"]["unet"]["in_channels"] == 7
    assert main(["train", "--resume", "--steps", "3", "--out", str(runs / "inpaint")]) == 0
    common = ["--image", str(runs / "in.png"), "--mask", str(runs / "mask.png"), "--prompt", PROMPT, "--steps", "3"]
    for name in ("text", "inpaint"):
        out = tmp_path / f"{name}.png"
        assert main(["inpaint", str(runs / name / "checkpoint.npz"), *common, "--out", str(out)]) == 0
        assert _png(out).shape == (16, 16, 3)
    replaced, given = _png(tmp_path / "text.png"), _png(runs / "in.png")
    np.testing.assert_array_equal(replaced[:8], given[:8])
    np.testing.assert_array_equal(replaced[:, :8], given[:, :8])
    grid = tmp_path / "grid.png"
    assert main(["inpaint", str(runs / "inpaint" / "checkpoint.npz"), *common, "--prompt", "large red ring",
                 "--count", "2", "--out", str(grid)]) == 0
    assert grid.read_bytes()[:4] == b"\x89PNG" and _png(grid).shape[0] > 16


def test_inpaint_and_train_errors_name_the_flag(runs, tmp_path, capsys):
    """Masks of another size, with grey pixels or all black, an image of another size than the model's, a file
    that is no image, a missing one, RePaint flags for an inpainting model, a sampler other than DDPM for
    replacement, `refdiff sample` of an inpainting model, sample grids while training one, and --inpaint / --init
    misuse each exit 1 with one line saying what to fix."""
    text, inpaint = str(runs / "text" / "checkpoint.npz"), str(runs / "inpaint" / "checkpoint.npz")
    out = ["--out", str(tmp_path / "o.png")]

    def edit(ckpt, image="in.png", mask="mask.png", *more):
        return ["inpaint", ckpt, "--image", str(runs / image), "--mask", str(runs / mask), "--prompt", PROMPT,
                "--steps", "2", *more, *out]

    cases = [
        (edit(inpaint, "in.png", "small.png"), "--mask .*small.png is 8x8 pixels, but --image .* is 16x16"),
        (edit(inpaint, "in.png", "grey.png"), r"black \(0: keep\) and white \(255: repaint\) only, got 1 pixels"),
        (edit(inpaint, "in.png", "black.png"), "is all black: paint the region to repaint white"),
        (edit(inpaint, "in8.png", "small.png"), "--image .* is 8x8 pixels, but the model draws 16x16 images"),
        (edit(inpaint, "not.png"), "--image .*not.png: not an image Pillow reads"),
        (edit(inpaint, "missing.png"), "--image .*missing.png: no such file"),
        (edit(inpaint, "in.png", "mask.png", "--resample", "2"), "--resample and --jump-length are replacement's"),
        (edit(text, "in.png", "mask.png", "--sampler", "ddim"), "--sampler ddim: replacement inpainting"),
        (["sample", inpaint, "--prompt", PROMPT, "--count", "1", "--steps", "2", *out],
         r"x must be \(N, 7, H, W\) for an inpainting model.*`refdiff inpaint` samples it"),
        (["train", "--inpaint", "--out", str(tmp_path / "r")], "--inpaint .* needs --data captions, got --data digits"),
        (["train", "--resume", "--init", text, "--out", str(runs / "inpaint")], "--init and --inpaint start a new run"),
        (["train", "--resume", "--steps", "9", "--sample-every", "1", "--out", str(runs / "inpaint")],
         "sample_every: an inpainting model's previews would need an image and a mask"),
        (["train", "--data", "captions", "--init", text, "--preset", "text16", "--out", str(tmp_path / "r")],
         "leave out --preset text16"),
        (["train", "--data", "captions", "--image-size", "32", "--inpaint", "--init", text, "--out",
          str(tmp_path / "r")], r"was trained on samples of shape \(3, 16, 16\), but --data gives \(3, 32, 32\)"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert re.search(message, err), (message, err)

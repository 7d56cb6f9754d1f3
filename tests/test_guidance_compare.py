"""Specification of refdiff.guidance_compare: classifier-free against CLIP guidance at equal sampler, steps,
prompts and noise, scored; the CLIP's retrieval. A tiny text U-Net and a tiny CLIP of random parameters."""

import dataclasses

import numpy as np
import pytest

from refdiff import schedules
from refdiff.clip_train import ClipTrainConfig, TrainedClip
from refdiff.data import tokenize
from refdiff.generate import LoadedModel, generate
from refdiff.data import load_captions
from refdiff.guidance_compare import (Setting, attribute_labels, chance, compare, markdown_table, palette_error,
                                      plot_comparison, retrieval, retrieval_table, sample_setting, sweep)
from refdiff.models import clip as M
from refdiff.models import text_unet
from refdiff.models.text_encoder import TextEncoderConfig
from refdiff.models.unet import UNetConfig
from refdiff.train import TrainConfig
from support import random_params

PROMPTS = ("small red circle top left", "large blue square bottom right")
T = 20


@pytest.fixture(scope="module")
def models():
    """(LoadedModel of a tiny random text U-Net on 3x16x16 and T = 20, a tiny random CLIP that fits it)."""
    cfg = text_unet.TextUNetConfig(unet=UNetConfig(in_channels=3, out_channels=3, image_size=16, base_channels=8,
                                         channel_mult=(1, 2), groups=4, time_embed_dim=16),
                         text=TextEncoderConfig(vocab_size=19, context_length=6, width=8, layers=1, heads=2))
    params = {k: v.astype(np.float32) for k, v in random_params(text_unet.param_shapes(cfg), 0).items()}
    train_cfg = dataclasses.asdict(TrainConfig(T=T))
    loaded = LoadedModel(text_unet.text_unet_model(params, cfg), cfg, train_cfg, (3, 16, 16), schedules.by_name("cosine", T),
                         next(iter(params.values())))
    clip_cfg = M.ClipConfig(embed_dim=4, base_channels=8, channel_mult=(1,), groups=4, time_embed_dim=16,
                            text_width=8, text_layers=1, text_heads=2, text_mlp_ratio=2)
    clip_params = {k: v.astype(np.float32) for k, v in random_params(M.param_shapes(clip_cfg), 1).items()}
    return loaded, TrainedClip(clip_params, clip_cfg, ClipTrainConfig(T=T), [])


def test_sweep_lists_both_methods_and_rejects_negative_scales():
    """sweep gives classifier-free at each s (no CLIP) then CLIP at each lambda on the base scale; a negative
    or infinite scale is a ValueError naming the list."""
    assert sweep([1, 3], [0, 10], base=0) == [Setting("classifier-free", 1, 1, 0.0), Setting("classifier-free", 3, 3, 0.0),
                                              Setting("CLIP", 0, 0, 0), Setting("CLIP", 10, 0, 10)]
    with pytest.raises(ValueError, match="clip_scales must hold finite numbers >= 0"):
        sweep([1], [-1])
    with pytest.raises(ValueError, match="base must hold finite numbers >= 0"):
        sweep([1], [1], base=float("inf"))


def test_both_methods_start_from_the_same_noise_and_the_clip_moves_the_samples(models):
    """At equal seed the classifier-free s = 1 samples equal CLIP lambda = 0 on base 1 and generate's plain
    conditional samples; CLIP lambda > 0 gives other, finite samples in [-1, 1]; a CLIP setting without a CLIP,
    or with a CLIP of another T, is refused."""
    loaded, clip = models
    cfg_one = sample_setting(loaded, clip, Setting("classifier-free", 1, 1, 0), PROMPTS, 2, 3, seed=5)
    clip_zero = sample_setting(loaded, clip, Setting("CLIP", 0, 1, 0), PROMPTS, 2, 3, seed=5)
    tokens, _ = tokenize(list(np.repeat(np.array(PROMPTS), 2)))
    plain = np.clip(generate(loaded, (4, 3, 16, 16), tokens, "ddim", 3, guidance=1, seed=5), -1, 1)
    np.testing.assert_array_equal(cfg_one, clip_zero)
    np.testing.assert_array_equal(cfg_one, plain)
    guided = sample_setting(loaded, clip, Setting("CLIP", 50, 1, 50), PROMPTS, 2, 3, seed=5)
    assert guided.shape == (4, 3, 16, 16) and np.all(np.abs(guided) <= 1)
    assert np.max(np.abs(guided - plain)) > 1e-3
    with pytest.raises(ValueError, match="needs a CLIP"):
        sample_setting(loaded, None, Setting("CLIP", 5, 1, 5), PROMPTS, 2, 3, seed=5)
    other = dataclasses.replace(clip, train_cfg=ClipTrainConfig(T=1000))
    with pytest.raises(ValueError, match="diffusion steps T is 1000, the text model's is 20"):
        sample_setting(loaded, other, Setting("CLIP", 5, 1, 5), PROMPTS, 2, 3, seed=5)


def test_compare_scores_every_setting_and_writes_the_table_and_the_plot(models, tmp_path):
    """compare gives a report per setting, in order, with its method, scale, seconds and load, fractions in
    [0, 1] and a diversity >= 0 for the seen and the held-out prompt; the table has a row per setting and
    group; the plot is a PNG; each() is called once per setting with its images."""
    loaded, clip = models
    settings = sweep([1, 3], [10])
    seen = []
    rows = compare(loaded, clip, settings, 2, 2, prompts=(PROMPTS[0], "large red square top left"),
                   each=lambda s, images, report: seen.append((s, images.shape)))
    assert [s for s, _ in seen] == settings and all(shape == (4, 3, 16, 16) for _, shape in seen)
    assert [(r["method"], r["scale"]) for r in rows] == [("classifier-free", 1), ("classifier-free", 3), ("CLIP", 10)]
    for r in rows:
        assert r["seconds"] > 0 and r["load"] >= 0 and r["palette_error"] > 0
        for group in ("seen", "held_out"):
            assert all(0 <= v <= 1 for v in r[group]["fraction"].values()) and r[group]["diversity"] >= 0
    table = markdown_table(rows).splitlines()
    assert len(table) == 2 + 2 * len(rows) and table[-1].startswith("| CLIP | 10 | held-out |")
    path = plot_comparison(rows, tmp_path / "p.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_retrieval_reports_accuracy_and_chance_at_each_t(models):
    """retrieval gives one row per t with an accuracy in [0, 1] and the chance of its groups; chance is 1 for
    a group of equal labels and 1 / n for distinct ones; attribute_labels are equal exactly for equal attributes."""
    _, clip = models
    clip16 = dataclasses.replace(clip, cfg=dataclasses.replace(clip.cfg, image_size=16))
    rows = retrieval(clip16, [0, 10], count=16, n=8)
    assert [r["t"] for r in rows] == [0, 10]
    assert all(0 <= r["accuracy"] <= 1 and 1 / 8 <= r["chance"] <= 1 for r in rows)
    assert "| accuracy (caption -> image among 32) |" in retrieval_table(rows)
    assert chance(np.zeros(8, int), 4) == 1 and chance(np.arange(8), 4) == 0.25
    labels = attribute_labels({"size": np.array([0, 0, 1]), "colour": np.array([2, 2, 2]),
                               "shape": np.array([3, 3, 3]), "position": np.array([1, 1, 1])})
    assert labels[0] == labels[1] != labels[2]


def test_palette_error_is_zero_on_data_and_measures_the_distance_off_the_colours():
    """Training images (shapes at every coverage, edges included) score 0; an image of one grey pixel
    (0.5, 0.5, 0.5) and black elsewhere scores 1/8: the grey's distance to its nearest colour segment is 1/2
    (yellow's at a = 1/2 leaves (0, 0, 1/2); red's leaves (0, 1/2, 1/2)), and the RMS over 16 pixels is
    sqrt(1/4 / 16)."""
    x, _, _ = load_captions(64, seed=2)
    assert palette_error(x) < 1e-12
    grey = -np.ones((1, 3, 4, 4))
    grey[0, :, 1, 2] = 0.0
    np.testing.assert_allclose(palette_error(grey), 1 / 8, rtol=1e-12)

"""refdiff.demo's text demo (issue 14): its prompts, its scores, and the files a short run writes."""

import json

import numpy as np
import pytest

from refdiff.captions_eval import NAMES, shape_classifier
from refdiff.data.captions import ATTRIBUTES, HELD_OUT, load_captions, parse_captions
from refdiff.demo import (HELD_OUT_PROMPTS, SEEN_PROMPTS, TEXT_DEMO_SAMPLER, TEXT_OUTPUTS, is_held_out,
                          run_text_demo, score_prompts)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_prompts_name_every_attribute_and_the_held_out_ones_are_exactly_held_out():
    """Every prompt names all four attributes; the seen prompts name no pair of HELD_OUT and together every
    size, colour, shape and position; the held-out prompts name exactly the pairs of HELD_OUT."""
    for prompts, held in ((SEEN_PROMPTS, False), (HELD_OUT_PROMPTS, True)):
        named = parse_captions(prompts)
        assert all(np.all(named[k] >= 0) for k in ATTRIBUTES)
        assert [is_held_out(p) for p in prompts] == [held] * len(prompts)
    seen = parse_captions(SEEN_PROMPTS)
    for key, names in NAMES.items():
        assert set(seen[key]) == set(range(len(names))), key
    held = parse_captions(HELD_OUT_PROMPTS)
    pairs = {(NAMES["colour"][c], NAMES["shape"][s]) for c, s in zip(held["colour"], held["shape"])}
    assert pairs == set(HELD_OUT) and len(HELD_OUT_PROMPTS) == len(HELD_OUT)


def test_real_images_score_their_own_captions_with_seen_and_held_out_apart():
    """score_prompts of clean images against their full captions (one image a prompt): size, colour and position
    are right for every image, the shape for at least 95% (the shape classifier's accuracy is 99.87%), in each
    group; the groups hold the train split's and the held-out split's captions; diversity is None for one
    image a prompt."""
    x_seen, seen, _ = load_captions(24, p_keep=1.0, shuffle=False, seed=3)
    x_held, held, _ = load_captions(8, split="held_out", p_keep=1.0, shuffle=False, seed=3)
    prompts = (*seen, *held)
    report = score_prompts(np.concatenate([x_seen, x_held]), prompts, 1, shape_classifier())
    assert report["seen"]["prompts"] == list(seen) and report["held_out"]["prompts"] == list(held)
    for group, n in (("seen", 24), ("held_out", 8)):
        fraction = report[group]["fraction"]
        assert [fraction[k] for k in ("size", "colour", "position")] == [1.0, 1.0, 1.0]
        assert fraction["shape"] >= 0.95 and report[group]["named"]["all"] == n
        assert report[group]["diversity"] is None


def test_a_short_text_demo_writes_its_files_and_scores_seen_and_held_out_prompts(tmp_path, capsys):
    """run_text_demo with a few steps writes TEXT_OUTPUTS: PNGs, samples.npz with (12 prompts * 2, 3, 16, 16)
    images in [-1, 1] and their prompts as a string array (loaded without pickle), and metrics.json with
    per-attribute and all-correct fractions in [0, 1] and a diversity for seen and held-out prompts apart,
    printed as a table, and the sampler and its steps."""
    out = tmp_path / "text"
    paths = run_text_demo(out, steps=3, per_prompt=2, sample_steps=2, progress=False)
    assert sorted(p.name for p in paths.values()) == sorted(TEXT_OUTPUTS)
    for name in ("loss_curve.png", "samples.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE, name
    with np.load(out / "samples.npz", allow_pickle=False) as saved:
        images, prompts = saved["images"], saved["prompts"]
    assert images.shape == (24, 3, 16, 16) and np.all(np.abs(images) <= 1)
    assert list(prompts) == list(np.repeat(SEEN_PROMPTS + HELD_OUT_PROMPTS, 2))
    metrics = json.loads((out / "metrics.json").read_text())
    for group, prompts in (("seen", SEEN_PROMPTS), ("held_out", HELD_OUT_PROMPTS)):
        assert metrics[group]["prompts"] == list(prompts)
        assert metrics[group]["named"]["all"] == 2 * len(prompts)
        assert all(0 <= metrics[group]["fraction"][k] <= 1 for k in (*ATTRIBUTES, "all"))
        assert metrics[group]["diversity"] > 0
    assert metrics["train_steps"] == 3 and metrics["demo_seconds"] > 0
    assert (metrics["sampler"], metrics["sample_steps"]) == (TEXT_DEMO_SAMPLER, 2)
    assert "held-out compositions" in capsys.readouterr().out


def test_text_demo_settings_are_checked_before_training(tmp_path):
    """per_prompt 0, a negative guidance and 0 sampling steps are ValueErrors naming the setting, raised
    before anything is written."""
    for kwargs, message in (({"per_prompt": 0}, "per_prompt must be an integer >= 1"),
                            ({"guidance": -1.0}, "guidance must be a finite number >= 0"),
                            ({"sample_steps": 0}, "steps must be an integer in [1, 1000]")):
        with pytest.raises(ValueError, match=message.replace("[", r"\[")):
            run_text_demo(tmp_path / "text", steps=2, **kwargs)
        assert not (tmp_path / "text").exists()

"""Specification of refdiff.captions_eval: the shape classifier (shipped, and its training path), the
caption-fidelity score and the diversity of samples of one prompt.

Oracles: real captioned images and their ground truth (they score the readers' accuracy, 1.0, and the
classifier's stored accuracy on its fresh images), shuffled captions (chance), blank images (wrong),
identical samples (diversity 0) and real images spread over more places (more diverse).
"""

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdiff.captions_eval import (SHAPE_CLASSIFIER_TRAIN, SHAPE_TEST, SHAPE_TRAIN, SHIPPED_SHAPE_CLASSIFIER,
                                   caption_fidelity, diversity, format_fidelity, read_attributes, shape_classifier,
                                   shape_data)
from refdiff.classifier_train import ClassifierTrainConfig, save_classifier, train_classifier
from refdiff.data import load_captions, parse_captions
from refdiff.data.captions import ATTRIBUTES

SHORT = dataclasses.replace(SHAPE_CLASSIFIER_TRAIN, steps=20)  # the training path, in a few seconds


@pytest.fixture(scope="module")
def classifier():
    """The shipped shape classifier."""
    return shape_classifier()


def test_the_shipped_shape_classifier_is_the_recipes_and_reaches_99_percent(classifier):
    """shape_classifier() loads the classifier refdiff ships: made with SHAPE_CLASSIFIER_TRAIN on
    SHAPE_TRAIN's images (its stored recipe), 6 classes of 3x16x16 images; on the fresh images of
    SHAPE_TEST caption_fidelity against the ground truth reads size, colour and position right for every
    image (the readers' documented accuracy) and the shape for at least 99%, the accuracy it stores."""
    trained = classifier.trained
    recipe = dataclasses.replace(trained.train_cfg, backend=SHAPE_CLASSIFIER_TRAIN.backend,
                                 dtype=SHAPE_CLASSIFIER_TRAIN.dtype)
    assert SHIPPED_SHAPE_CLASSIFIER.is_file() and recipe == SHAPE_CLASSIFIER_TRAIN
    assert trained.info["train_images"] == SHAPE_TRAIN and trained.info["test_images"] == SHAPE_TEST
    assert (trained.cfg.in_channels, trained.cfg.image_size, trained.cfg.num_classes) == (3, 16, 6)
    x, _, truth = load_captions(SHAPE_TEST["n"], held_out=(), seed=SHAPE_TEST["seed"])
    report = caption_fidelity(x, truth, classifier)
    print(format_fidelity(report))
    assert report["fraction"]["shape"] == classifier.test_accuracy >= 0.99
    assert all(report["fraction"][k] == 1.0 for k in ("size", "colour", "position"))
    assert report["named"] == {k: SHAPE_TEST["n"] for k in (*ATTRIBUTES, "all")}


def test_the_shape_classifier_reads_held_out_compositions(classifier):
    """The classifier saw every (colour, shape) pair: on fresh images of only the held-out pairs it reads
    at least 99% of the shapes right, as on the others."""
    x, _, truth = load_captions(1200, split="held_out", seed=7)
    assert np.mean(classifier.predict(x) == truth["shape"]) >= 0.99


def test_shape_classifier_trains_a_recipe_and_caches_it(tmp_path, classifier):
    """shape_classifier(path) with no file there trains the given recipe (here 20 steps) on SHAPE_TRAIN's
    images, stores the recipe, its accuracy on SHAPE_TEST's images and its time, and writes the file;
    called again it loads the file: the same features, accuracy and time."""
    path = tmp_path / "shapes.npz"
    trained = shape_classifier(path, train_cfg=SHORT)
    x_test, y_test = shape_data(**SHAPE_TEST)
    assert path.is_file() and trained.trained.train_cfg == SHORT and len(trained.trained.losses) == SHORT.steps
    assert trained.test_accuracy == float(np.mean(trained.predict(x_test) == y_test))
    loaded = shape_classifier(path, train_cfg=SHORT)
    np.testing.assert_array_equal(loaded.features(x_test[:20]), trained.features(x_test[:20]))
    assert (loaded.test_accuracy, loaded.train_seconds) == (trained.test_accuracy, trained.train_seconds)
    assert not np.array_equal(loaded.features(x_test[:20]), classifier.features(x_test[:20]))


@pytest.mark.slow
def test_shape_classifier_retrained_from_the_recipe_reaches_99_percent(tmp_path):
    """The full recipe SHAPE_CLASSIFIER_TRAIN, trained from scratch here, reads at least 99% of the fresh
    images' shapes right (the machine's floating-point sums may move the weights, not the bar)."""
    trained = shape_classifier(tmp_path / "shapes.npz")
    print(f"shape classifier: {trained.test_accuracy:.2%} on fresh images, trained in {trained.train_seconds:.1f} s")
    assert trained.test_accuracy >= 0.99


def test_shape_classifier_rejects_a_cache_of_another_classifier(tmp_path):
    """A cache file holding a classifier of other data (here 8x8 digits, 10 classes) raises ValueError
    naming the file."""
    from refdiff.data import load_digits
    from refdiff.models.presets import digits8_classifier

    x, y = load_digits()
    trained = train_classifier(ClassifierTrainConfig(steps=1, batch_size=4, noisy=False), digits8_classifier(), x, y)
    save_classifier(tmp_path / "digits.npz", trained)
    with pytest.raises(ValueError, match="must hold a shape classifier"):
        shape_classifier(tmp_path / "digits.npz")


def test_real_images_score_their_own_captions(classifier):
    """Clean captioned images against their own captions (p_keep = 0.8: some attributes not named):
    every named size, colour and position is right, at least 99% of the shapes; each attribute is
    counted over the captions that name it, "all" over those that name any."""
    x, captions, _ = load_captions(600, seed=3)
    report = caption_fidelity(x, captions, classifier)
    named = parse_captions(captions)
    assert all(report["fraction"][k] == 1.0 for k in ("size", "colour", "position"))
    assert report["fraction"]["shape"] >= 0.99 and report["fraction"]["all"] >= 0.99
    assert report["named"] == {**{k: int(np.sum(named[k] >= 0)) for k in ATTRIBUTES},
                               "all": int(np.sum(np.any([named[k] >= 0 for k in ATTRIBUTES], axis=0)))}
    assert report["samples"] == 600 and report["named"]["all"] < 600  # p_keep = 0.8 leaves a caption or two empty


@given(seed=st.integers(0, 10_000))
def test_shuffled_captions_score_near_chance(classifier, seed):
    """Clean images against the captions of other images (a random derangement) score near chance:
    size near 1/2, colour and shape near 1/6, position near 1/4, all four rarely right together."""
    x, _, truth = load_captions(240, held_out=(), seed=seed)
    other = (np.arange(240) + np.random.default_rng(seed).integers(1, 240)) % 240  # no image keeps its own
    report = caption_fidelity(x, {k: v[other] for k, v in truth.items()}, classifier)
    fraction = report["fraction"]
    assert fraction["size"] < 0.65 and fraction["colour"] < 0.3 and fraction["shape"] < 0.3
    assert fraction["position"] < 0.4 and fraction["all"] < 0.05


def test_a_blank_image_counts_as_wrong(classifier):
    """A black image reads -1 for every attribute, so it is wrong for each attribute its prompt names:
    blanking one image takes exactly one off every count of right answers, and none off the named counts."""
    x, captions, _ = load_captions(50, held_out=(), p_keep=1.0, seed=5)
    before = caption_fidelity(x, captions, classifier)
    assert before["fraction"]["all"] == 1.0
    x[7] = -1.0
    after = caption_fidelity(x, captions, classifier)
    assert {k: v[7] for k, v in read_attributes(x, classifier).items()} == {k: -1 for k in ATTRIBUTES}
    assert after["correct"] == {k: v - 1 for k, v in before["correct"].items()} and after["named"] == before["named"]


def test_prompts_as_one_str_captions_or_attributes_agree(classifier):
    """One str scores like that str repeated; captions score like their parsed attribute dict; an
    attribute no prompt names has fraction None, and format_fidelity says "not named" for it."""
    x, captions, _ = load_captions(30, seed=2)
    report = caption_fidelity(x, list(captions), classifier)
    assert caption_fidelity(x, parse_captions(captions), classifier) == report
    one = caption_fidelity(x, "red circle", classifier)
    assert one == caption_fidelity(x, ["red circle"] * 30, classifier)
    assert one["fraction"]["size"] is None and one["named"]["colour"] == 30
    text = format_fidelity(one)
    assert "not named" in text and f"{one['correct']['colour']:>6} / 30" in text


def test_errors_name_the_argument(classifier):
    """images of the wrong shape, dtype or range, prompts of the wrong count or grammar, and fewer than two
    samples for a diversity raise ValueError naming the argument and what is allowed."""
    x, captions, truth = load_captions(4, seed=0)
    cases = [(lambda: caption_fidelity(x[:, :1], captions, classifier), r"images must be \(N, 3, 16, 16\)"),
             (lambda: caption_fidelity(x.astype(int), captions, classifier), "images must be .* floating"),
             (lambda: caption_fidelity(x * 1.5, captions, classifier), r"images must hold finite values in \[-1, 1\]"),
             (lambda: caption_fidelity(np.full_like(x, np.nan), captions, classifier), "images must hold finite"),
             (lambda: caption_fidelity(x, captions[:3], classifier), r"prompts must hold one prompt per image \(4\)"),
             (lambda: caption_fidelity(x, ["red blob"] * 4, classifier), "prompts must be captions .* 'blob'"),
             (lambda: caption_fidelity(x, {**truth, "size": truth["size"][:2]}, classifier),
              r"prompts\['size'\] must be \(4,\) integers in \[-1, 2\)"),
             (lambda: diversity(x[:1]), "images must be .* N >= 2")]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_diversity_is_zero_for_identical_samples():
    """D = mean_{i<j} ||x_i - x_j|| / sqrt(3 H W) is exactly 0 for copies of one image, does not depend on
    the order, and is the RMS pixel difference for two images."""
    x, _, _ = load_captions(12, seed=4)
    assert diversity(np.repeat(x[:1], 8, axis=0)) == 0.0
    assert diversity(x[::-1]) == pytest.approx(diversity(x), rel=1e-12)
    assert diversity(x[:2]) == pytest.approx(float(np.sqrt(np.mean((x[0].astype(float) - x[1]) ** 2))), rel=1e-12)


@given(seed=st.integers(0, 10_000))
def test_diversity_grows_with_the_variety_of_real_images(seed):
    """Real images of one (colour, shape, size) in one quadrant are less diverse than as many of them
    spread over all four quadrants (the property held for 200 of 200 seeds in a check by hand)."""
    x, _, truth = load_captions(2880, held_out=(), seed=seed)
    same = np.all([truth[k] == truth[k][0] for k in ("colour", "shape", "size")], axis=0)  # ~40 images
    quadrant = same & (truth["position"] == truth["position"][0])  # ~10 images
    n = int(quadrant.sum())
    assert 0 < diversity(x[quadrant][:n]) < diversity(x[same][:n])

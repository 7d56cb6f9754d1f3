"""Specification of refdiff.digits_eval: the digit classifier, trained from scratch here (its held-out accuracy,
its cache, and the Frechet distance of its features), and the sample report built on it (with precision, recall
and the Inception-Score analogue)."""

import dataclasses
import time

import numpy as np
import pytest

from refdiff.classifier_train import ClassifierTrainConfig
from refdiff.digits_eval import (DIGIT_CLASSIFIER_TRAIN, SAMPLE_RANGE_TOLERANCE, SHIPPED_CLASSIFIER,
                                 check_digit_samples, digit_classifier, digit_sample_report, digit_split,
                                 format_precision_recall, per_class_coverage)
from refdiff.metrics import class_fraction, frechet_distance_of_samples


@pytest.fixture(scope="module")
def trained_digits(tmp_path_factory):
    """(DigitClassifier trained from scratch with DIGIT_CLASSIFIER_TRAIN, wall seconds, its cache path)."""
    path = tmp_path_factory.mktemp("classifier") / "digits.npz"
    start = time.perf_counter()
    classifier = digit_classifier(path)
    return classifier, time.perf_counter() - start, path


def test_digit_classifier_trained_from_scratch_reaches_97_percent(trained_digits):
    """The digit classifier trained from scratch (800 steps, seed 0, t = 0, training split only) classifies at
    least 97% of the 180 held-out digits right; the accuracy it stores is the one measured here."""
    classifier, seconds, _ = trained_digits
    _, x_test, _, y_test = digit_split()
    accuracy = float(np.mean(classifier.predict(x_test) == y_test))
    print(f"digit classifier: {accuracy:.2%} held-out accuracy, trained in {seconds:.1f} s")
    assert accuracy >= 0.97
    assert classifier.test_accuracy == accuracy and x_test.shape[0] == 180


def test_the_shipped_digit_classifier_is_the_recipes_and_reaches_97_percent():
    """digit_classifier() loads the classifier refdiff ships (no training): a 10-class classifier of 1x8x8
    images made with DIGIT_CLASSIFIER_TRAIN (its stored recipe is that one), classifying at least 97% of
    the 180 held-out digits right, the accuracy it stores."""
    classifier = digit_classifier()
    _, x_test, _, y_test = digit_split()
    accuracy = float(np.mean(classifier.predict(x_test) == y_test))
    recipe = dataclasses.replace(classifier.trained.train_cfg, backend=DIGIT_CLASSIFIER_TRAIN.backend,
                                 dtype=DIGIT_CLASSIFIER_TRAIN.dtype)
    assert SHIPPED_CLASSIFIER.is_file() and recipe == DIGIT_CLASSIFIER_TRAIN
    assert accuracy >= 0.97 and classifier.test_accuracy == accuracy
    assert (classifier.trained.cfg.in_channels, classifier.trained.cfg.num_classes) == (1, 10)


def test_digit_classifier_cache_gives_the_same_classifier(trained_digits):
    """digit_classifier(path) on the file it wrote loads instead of training: the same features, the same
    stored accuracy and training time; a cache holding another kind of classifier is refused."""
    classifier, _, path = trained_digits
    _, x_test, _, _ = digit_split()
    loaded = digit_classifier(path)
    np.testing.assert_array_equal(loaded.features(x_test[:20]), classifier.features(x_test[:20]))
    assert loaded.test_accuracy == classifier.test_accuracy and loaded.train_seconds == classifier.train_seconds
    assert loaded.trained.train_cfg.steps == DIGIT_CLASSIFIER_TRAIN.steps


def test_digit_frechet_distance_is_zero_to_itself_and_grows_with_perturbation(trained_digits):
    """On the classifier's pooled features: FD(held-out, held-out) ~ 0; the floor (two class-stratified
    halves) and the class-matched real digits' FD are positive and small (< 1, where tr(S) is about 40);
    FD(held-out + noise, held-out) increases with the noise's std and passes the floor;
    the class fraction of the held-out digits with their own labels is the test accuracy, with shuffled
    labels far lower."""
    classifier, _, _ = trained_digits
    x_train, x_test, y_train, y_test = digit_split()
    report = digit_sample_report(classifier, x_test, y_test, (x_test, y_test), reference=(x_train, y_train))
    print({k: round(v, 4) for k, v in report.items()})
    assert report["fd"] < 1e-8 and 0 < report["fd_floor"] < 1 and 0 < report["fd_real"] < 1
    assert report["class_fraction"] == classifier.test_accuracy
    assert (report["samples"], report["held_out"]) == (180, 180)
    rng = np.random.default_rng(0)
    fds = [frechet_distance_of_samples(classifier.features, np.clip(x_test + s * rng.standard_normal(x_test.shape),
                                                                    -1, 1).astype(np.float32), x_test)
           for s in (0.1, 0.3, 0.6, 1.0)]
    assert fds[0] < fds[1] < fds[2] < fds[3] and fds[3] > report["fd_floor"], (fds, report)
    assert class_fraction(classifier.predict, x_test, rng.permutation(y_test)) < 0.3


def test_digit_classifier_rejects_a_cache_of_another_classifier(tmp_path):
    """A cache file holding a classifier of other data (here 2 classes) raises ValueError naming the file."""
    cfg = ClassifierTrainConfig(steps=1, batch_size=4, noisy=False)
    from refdiff.classifier_train import save_classifier, train_classifier
    from refdiff.models.presets import digits8_classifier

    x_train, _, y_train, _ = digit_split()
    keep = y_train < 2
    trained = train_classifier(cfg, digits8_classifier(num_classes=2), x_train[keep], y_train[keep])
    save_classifier(tmp_path / "other.npz", trained)
    with pytest.raises(ValueError, match="must hold a digit classifier"):
        digit_classifier(tmp_path / "other.npz")


def test_samples_beyond_minus_one_to_one_are_refused_and_rounding_is_clipped():
    """check_digit_samples (what digit_sample_report checks first) refuses samples beyond [-1, 1] by more than
    SAMPLE_RANGE_TOLERANCE (2^-10, one float16 step at 1), naming the range found; samples within it beyond
    +-1 come back clipped to [-1, 1], every other value unchanged."""
    x = digit_split()[1][:8]
    assert SAMPLE_RANGE_TOLERANCE == 2.0**-10 and x.min() == -1 and x.max() == 1
    with pytest.raises(ValueError, match=r"samples must lie in \[-1, 1\].*got values in \[-1.5, 1.5\]"):
        check_digit_samples(1.5 * x, None)
    with pytest.raises(ValueError, match=r"got values in \[-0.99, 1.01\]"):
        check_digit_samples(x + np.float32(0.01), None)
    rounded = x * np.float32(1 + SAMPLE_RANGE_TOLERANCE / 2)
    clipped, _ = check_digit_samples(rounded, None)
    assert np.array_equal(clipped, np.where(np.abs(x) == 1, x, rounded))


def test_sample_report_gains_precision_recall_and_inception_score():
    """With the shipped classifier: the held-out digits against themselves have precision = recall = 1 and an
    Inception-Score analogue equal to the held-out one, above 8 (confident, balanced classes; at most 10); samples
    of one class only keep precision high but cover at most about a tenth of the data (recall), and score an
    Inception Score near 1. The report keeps its earlier keys, and format_precision_recall prints the new ones."""
    classifier = digit_classifier()
    x_train, x_test, y_train, y_test = digit_split()
    report = digit_sample_report(classifier, x_test, y_test, (x_test, y_test))
    assert {"fd", "fd_floor", "class_fraction", "classifier_test_accuracy", "samples", "held_out"} <= set(report)
    assert report["precision"] == report["recall"] == 1.0
    assert report["inception_score"] == report["inception_score_held_out"] and 8 < report["inception_score"] <= 10
    ones = x_train[y_train == 1][:60]
    single = digit_sample_report(classifier, ones, np.ones(60, np.int64), (x_test, y_test))
    print({k: round(v, 3) for k, v in single.items()})
    assert single["precision"] > 0.8 and single["recall"] < 0.2 and single["inception_score"] < 1.5
    text = format_precision_recall(single)
    assert "precision (k = 3)" in text and "recall (k = 3)" in text and "Inception-Score analogue" in text


def test_per_class_coverage_is_one_for_the_held_out_digits_and_falls_for_a_collapsed_class():
    """With the shipped classifier: the held-out digits as their own samples cover every class (recall 1) and are
    classified as their label as often as the classifier gets that class right; replacing the samples of class 3 by
    copies of one digit 3 (a collapsed class) keeps its fraction but drops its recall below 0.5, the other classes'
    rows unchanged. Fewer than 4 samples of a class is an error naming it."""
    classifier = digit_classifier()
    _, x_test, _, y_test = digit_split()
    rows = per_class_coverage(classifier, x_test, y_test, (x_test, y_test))
    predicted = classifier.predict(x_test)
    assert [k for k, _, _ in rows] == list(range(10)) and all(r == 1.0 for _, r, _ in rows)
    assert [f for _, _, f in rows] == [float(np.mean(predicted[y_test == k] == k)) for k in range(10)]
    threes = np.flatnonzero(y_test == 3)
    collapsed = x_test.copy()
    collapsed[threes] = x_test[threes[0]]
    after = per_class_coverage(classifier, collapsed, y_test, (x_test, y_test))
    assert after[3][1] < 0.5 and after[3][2] == float(predicted[threes[0]] == 3)
    assert [r for k, *r in after if k != 3] == [r for k, *r in rows if k != 3]
    with pytest.raises(ValueError, match="at least 4 of every held-out class, got 3 of class 0"):
        keep = np.concatenate([np.flatnonzero(y_test == 0)[:3], np.flatnonzero(y_test != 0)])
        per_class_coverage(classifier, x_test[keep], y_test[keep], (x_test, y_test))

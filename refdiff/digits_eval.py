"""Scoring samples of the 8x8 digits: the digit classifier and the sample report built on it.

The digit classifier (``digit_classifier``) is the digits8 classifier trained at t = 0 on the embedded
digits' training split, nothing downloaded. refdiff ships it (``SHIPPED_CLASSIFIER``, made by
``digit_classifier(path)`` with the default recipe DIGIT_CLASSIFIER_TRAIN, 178 of the 180 held-out
digits right), so every score is read with the same classifier whatever the machine: retrained, the
classifier moves with the order of floating-point sums (a 1-BLAS-thread run of the same recipe scored
98.3% instead of 98.9%), and scores with it. Its pooled features give the Frechet
distance of 8x8 samples (refdiff.metrics) and their improved precision and recall, its predictions the
fraction of samples classified as their label, its posteriors the Inception-Score analogue.
``digit_sample_report`` computes them, with the floor set by two halves of the held-out digits; it is what
``refdiff demo`` and ``refdiff eval --samples`` print (``format_sample_report``; precision, recall and the
Inception-Score analogue through ``format_precision_recall``); ``per_class_coverage`` reads recall class by
class.
"""

from __future__ import annotations

import dataclasses
import math
from importlib.resources import files
from pathlib import Path
from typing import Any, Callable

import numpy as np

from refdiff.backend import asarray
from refdiff.classifier_train import (ClassifierTrainConfig, TrainedClassifier, load_classifier, predict_logits,
                                      save_classifier, train_classifier)
from refdiff.metrics import (class_fraction, features, frechet_distance, gaussian_statistics, inception_score,
                             precision_recall)
from refdiff.models.classifier import classifier_features

# 800 AdamW steps at batch 64 (about 32 epochs of the 1617 training digits), clean images (t = 0): 175 to 178
# of the 180 held-out digits (97.2% to 98.9%) over seeds 0-3, seed 0 178; 600 steps gave 175-177 (seed 0:
# 175, the least that reaches 97%), 1000 steps 174-177. About 20 s on one CPU core.
DIGIT_CLASSIFIER_TRAIN = ClassifierTrainConfig(steps=800, batch_size=64, lr=2e-3, noisy=False, seed=0)
# That recipe's classifier, trained once and shipped with the package (data/digit_classifier.npz).
SHIPPED_CLASSIFIER = Path(str(files("refdiff.data") / "digit_classifier.npz"))
# How far samples may stray beyond [-1, 1]: one float16 rounding step at 1 (2^-10), so samples computed in any
# float precision pass, while images of another range (0..255, unclipped) do not.
SAMPLE_RANGE_TOLERANCE = 2.0**-10


@dataclasses.dataclass(frozen=True)
class ScoringClassifier:
    """A classifier trained at t = 0 to score samples (the digit and the shape classifier): ``features`` (its
    pooled penultimate layer) and ``predict``; ``test_accuracy`` on fresh images and ``train_seconds`` from its
    training run."""

    trained: TrainedClassifier

    def features(self, x) -> np.ndarray:
        """Pooled features (N, C) float64 of host images x (N, C_in, S, S) in [-1, 1], at t = 0."""
        return features(self._features, x)

    def predict(self, x) -> np.ndarray:
        """Predicted labels (N,) int64 of host images x (N, C_in, S, S) in [-1, 1]."""
        return np.argmax(predict_logits(self.trained, np.asarray(x)), axis=1)

    def _features(self, xb: np.ndarray):
        like = self.trained.like
        xb = asarray(xb, like=like, dtype=like.dtype)
        t = asarray(np.zeros(xb.shape[0], dtype=np.int64), like=like)
        return classifier_features(self.trained.params, self.trained.cfg, xb, t)

    @property
    def test_accuracy(self) -> float:
        return float(self.trained.info["test_accuracy"])

    @property
    def train_seconds(self) -> float:
        return float(self.trained.info.get("train_seconds", math.nan))


def load_or_train(cache: str | Path, train_cfg: ClassifierTrainConfig, check: Callable[[TrainedClassifier], None],
                  train: Callable[[], TrainedClassifier]) -> TrainedClassifier:
    """The classifier saved at ``cache`` (on train_cfg's backend and dtype, vetted by check, which raises) when
    that file exists; else train()'s, saved there."""
    if Path(cache).is_file():
        trained = load_classifier(cache, backend=train_cfg.backend, dtype=train_cfg.dtype)
        check(trained)
        return trained
    trained = train()
    save_classifier(cache, trained)
    return trained


@dataclasses.dataclass(frozen=True)
class DigitClassifier(ScoringClassifier):
    """A classifier of the 8x8 digits at t = 0 (ScoringClassifier: features (N, 32) and predict of (N, 1, 8, 8)
    images), and its class posteriors."""

    def posteriors(self, x) -> np.ndarray:
        """Class posteriors p(y | x) (N, 10) float64 of host images x (N, 1, 8, 8) in [-1, 1]: the softmax of the
        logits, max-subtracted (every exp argument <= 0)."""
        z = predict_logits(self.trained, np.asarray(x))
        e = np.exp(z - np.max(z, axis=1, keepdims=True))  # (N, 10)
        return e / np.sum(e, axis=1, keepdims=True)


def digit_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The embedded digits split as the demo and ``refdiff train --data digits`` split them:
    (x_train, x_test, y_train, y_test) = train_test_split(x, y, test_fraction=0.1, seed=0)."""
    from refdiff.data import load_digits, train_test_split

    x, y = load_digits()
    return train_test_split(x, y, test_fraction=0.1, seed=0)


def digit_classifier(cache: str | Path | None = None, train_cfg: ClassifierTrainConfig = DIGIT_CLASSIFIER_TRAIN,
                     progress: bool = False) -> DigitClassifier:
    """The digit classifier: the shipped one (SHIPPED_CLASSIFIER) when ``cache`` is None; else loaded
    from ``cache`` when that file exists, or trained from scratch (deterministically, on the training
    split of ``digit_split``) and saved there.

    Training uses the digits8_classifier preset and train_cfg (DIGIT_CLASSIFIER_TRAIN: about 15 s on one
    CPU core); its accuracy on the held-out split is measured once and kept with the weights
    (info["test_accuracy"]). Nothing is downloaded. A cache file must hold a 10-class classifier of
    1x8x8 images (save_classifier's format), else ValueError.
    """
    from refdiff.models.presets import digits8_classifier

    cache = SHIPPED_CLASSIFIER if cache is None else cache

    def check(trained: TrainedClassifier) -> None:
        c = trained.cfg
        if (c.in_channels, c.num_classes) != (1, 10) or "test_accuracy" not in trained.info:
            raise ValueError(f"cache {cache} must hold a digit classifier (1 channel, 10 classes, with its "
                             f"test accuracy), got {c.in_channels} channels and {c.num_classes} classes")

    def train() -> TrainedClassifier:
        x_train, x_test, y_train, y_test = digit_split()
        trained = train_classifier(train_cfg, digits8_classifier(), x_train, y_train, progress=progress)
        trained.info["test_accuracy"] = float(np.mean(np.argmax(predict_logits(trained, x_test), axis=1) == y_test))
        return trained

    return DigitClassifier(load_or_train(cache, train_cfg, check, train))


def digit_sample_report(classifier: DigitClassifier, samples, labels, held_out, reference=None,
                        seed: int = 0) -> dict[str, Any]:
    """The sample-quality numbers of ``refdiff eval --samples`` and ``refdiff demo``, as a dict:

      fd              Frechet distance (squared) of the samples' features vs the held-out digits' features
      fd_floor        the same between two halves of the held-out digits, each class split in two at random
                      (by ``seed``): what finite samples of real digits score from within-class sampling
                      noise alone. (Unstratified halves also differ in class proportions, which moves the
                      class-clustered features' mean so much that the floor swings between 1.5 and 3.7.)
      fd_real         (when ``reference`` = (x, y) is given, e.g. the training split) the fd of real digits
                      drawn from it, as many of each class as the samples have: what a perfect
                      class-conditional sampler scores at the same sample size and class counts
      class_fraction  the fraction of samples the classifier assigns to their label
      precision, recall   improved precision and recall (k = 3) of the samples' features against the held-out
                      digits' features (refdiff.metrics.precision_recall)
      inception_score the Inception-Score analogue of the samples' class posteriors, and inception_score_held_out
                      that of the held-out digits (what real digits score at that set size; at most 10)
      classifier_test_accuracy, samples, held_out   the classifier's held-out accuracy and the set sizes

    samples: (N, 1, 8, 8) host images in [-1, 1], N >= 4 (precision and recall need k + 1 = 4); labels: (N,)
    ints in [0, 10), or None (unlabelled samples: no class_fraction, and fd_real draws N reference digits at
    random); held_out: (x (M, 1, 8, 8), y (M,)) with at least 4 images in all.
    """
    samples, labels = check_digit_samples(samples, labels)
    x_held, y_held = (np.asarray(a) for a in held_out)
    if x_held.shape[0] < 4 or y_held.shape != (x_held.shape[0],):
        raise ValueError(f"held_out must be (x, y) with at least 4 images and one label each, got shapes "
                         f"{x_held.shape} and {y_held.shape}")
    rng = np.random.default_rng(seed)
    f_held = classifier.features(x_held)
    held = gaussian_statistics(f_held)
    half_a, half_b = _stratified_halves(y_held, rng)
    f_samples = classifier.features(samples)
    report = {"fd": frechet_distance(*gaussian_statistics(f_samples), *held),
              "fd_floor": frechet_distance(*gaussian_statistics(f_held[half_a]), *gaussian_statistics(f_held[half_b]))}
    if reference is not None:
        real = _class_matched_draw(reference, labels, rng) if labels is not None else \
            np.asarray(reference[0])[rng.choice(len(reference[0]), samples.shape[0], replace=False)]
        report["fd_real"] = frechet_distance(*gaussian_statistics(classifier.features(real)), *held)
    if labels is not None:
        report["class_fraction"] = class_fraction(classifier.predict, samples, labels)
    report["precision"], report["recall"] = precision_recall(f_held, f_samples, k=3)
    report["inception_score"] = inception_score(classifier.posteriors(samples))
    report["inception_score_held_out"] = inception_score(classifier.posteriors(x_held))
    report.update({"classifier_test_accuracy": classifier.test_accuracy, "samples": int(samples.shape[0]),
                   "held_out": int(x_held.shape[0])})
    return report


def per_class_coverage(classifier: DigitClassifier, samples, labels, held_out) -> list[tuple[int, float, float]]:
    """Class by class: (class k, the recall (k = 3) of the held-out digits of class k by the samples labelled k, the
    fraction of those samples classified as k), on the classifier's features. A class the sampler collapsed (all
    its samples alike) keeps a high fraction but a low recall: the GAN's failure mode, read per class.

    samples, labels: as digit_sample_report's, labels required, at least 4 samples of every class in held_out (the
    k-NN radii need k + 1); held_out: (x (M, 1, 8, 8), y (M,)).
    """
    samples, labels = check_digit_samples(samples, labels)
    if labels is None:
        raise ValueError("labels must be given: the coverage is per class")
    x_held, y_held = (np.asarray(a) for a in held_out)
    f_samples, f_held = classifier.features(samples), classifier.features(x_held)
    predicted = classifier.predict(samples)
    rows = []
    for k in np.unique(y_held):
        mine = labels == k
        if np.sum(mine) < 4:
            raise ValueError(f"samples must hold at least 4 of every held-out class, got {int(np.sum(mine))} of "
                             f"class {k}")
        _, recall = precision_recall(f_held[y_held == k], f_samples[mine], k=3)
        rows.append((int(k), float(recall), float(np.mean(predicted[mine] == k))))
    return rows


def check_digit_samples(samples, labels) -> tuple[np.ndarray, np.ndarray | None]:
    """(samples (N, 1, 8, 8) finite floats in [-1, 1], N >= 4; labels (N,) ints in [0, 10) or None), or a clear
    error. Samples within SAMPLE_RANGE_TOLERANCE beyond +-1 are clipped to [-1, 1]."""
    samples = np.asarray(samples)
    if samples.ndim != 4 or samples.shape[1:] != (1, 8, 8) or samples.shape[0] < 4 or samples.dtype.kind != "f":
        raise ValueError(f"samples must be (N, 1, 8, 8) floating images of the 8x8 digits with N >= 4 (the digit "
                         f"classifier's input), got shape {samples.shape} and dtype {samples.dtype}")
    if not np.all(np.isfinite(samples)):
        raise ValueError(f"samples must be finite, got {int(np.sum(~np.isfinite(samples)))} NaN or inf values")
    low, high = float(np.min(samples)), float(np.max(samples))
    if low < -1 - SAMPLE_RANGE_TOLERANCE or high > 1 + SAMPLE_RANGE_TOLERANCE:
        raise ValueError(f"samples must lie in [-1, 1] (the digits' range, refdiff sample's), got values in "
                         f"[{low:.6g}, {high:.6g}]")
    samples = np.clip(samples, -1, 1)
    if labels is None:
        return samples, None
    labels = np.asarray(labels)
    if labels.shape != (samples.shape[0],) or labels.dtype.kind not in "iu" or np.any((labels < 0) | (labels >= 10)):
        raise ValueError(f"labels must be ({samples.shape[0]},) integers in [0, 10) (one per sample) or None, "
                         f"got shape {labels.shape} and dtype {labels.dtype}")
    return samples, labels


def format_sample_report(report: dict[str, Any]) -> str:
    """digit_sample_report's numbers as the lines ``refdiff eval --samples`` and ``refdiff demo`` print."""
    n, m = report["samples"], report["held_out"]
    rows = [(f"Frechet distance, {n} samples vs {m} held-out digits", f"{report['fd']:.4f}"),
            ("  floor: two class-stratified halves of the held-out digits", f"{report['fd_floor']:.4f}")]
    if "fd_real" in report:
        which = "of the samples' class counts" if "class_fraction" in report else "at random"
        rows.append((f"  {n} real training digits ({which}) vs held-out", f"{report['fd_real']:.4f}"))
    if "class_fraction" in report:
        rows.append(("class fraction: samples classified as their label", f"{report['class_fraction']:.2%}"))
    rows.append(("digit classifier's held-out accuracy", f"{report['classifier_test_accuracy']:.2%}"))
    return _aligned(rows)


def format_precision_recall(report: dict[str, Any]) -> str:
    """digit_sample_report's precision, recall and Inception-Score analogue as aligned lines (the families'
    example prints them under format_sample_report's; refdiff eval and the demo keep them in metrics.json)."""
    return _aligned([("precision (k = 3): samples on the held-out digits' manifold", f"{report['precision']:.2%}"),
                     ("recall (k = 3): held-out digits on the samples' manifold", f"{report['recall']:.2%}"),
                     ("Inception-Score analogue (at most 10)", f"{report['inception_score']:.3f}"),
                     ("  held-out digits' score", f"{report['inception_score_held_out']:.3f}")])


def _aligned(rows: list[tuple[str, str]]) -> str:
    """(label, value) rows as lines "label:  value", the values right-aligned in one column."""
    width = max(len(label) for label, _ in rows) + 1
    return "\n".join(f"{label + ':':<{width}} {value:>8}" for label, value in rows)


def _stratified_halves(y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint index sets with floor(n_k / 2) images of each class k each, drawn at random."""
    a, b = [], []
    for k in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == k))
        half = idx.size // 2
        a.append(idx[:half])
        b.append(idx[half : 2 * half])
    return np.concatenate(a), np.concatenate(b)


def _class_matched_draw(reference, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Images of reference = (x, y), as many of each class as ``labels`` holds (without replacement
    where the class has enough)."""
    x, y = (np.asarray(a) for a in reference)
    picks = []
    for k, count in zip(*np.unique(labels, return_counts=True)):
        pool = np.flatnonzero(y == k)
        if pool.size == 0:
            raise ValueError(f"reference must hold images of every sampled class, found none of class {k}")
        picks.append(rng.choice(pool, size=count, replace=bool(count > pool.size)))
    return x[np.concatenate(picks)]

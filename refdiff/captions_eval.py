"""Scoring captioned-shape samples against their prompts: the shape classifier, the caption-fidelity
score and a diversity measure (issue 14, "Scoring"; GLIDE, Nichol et al. 2021, at toy scale).

A text-conditional sample is right when it shows what its prompt names. Three of the four attributes
are read from the pixels by refdiff.data.captions (read_size, read_colour, read_position); the fourth,
the shape, by the shape classifier (``shape_classifier``): the shapes16_classifier preset trained at
t = 0 on clean captioned shapes of all 36 (colour, shape) pairs, held-out pairs included, so that it
reads a shape whatever its colour. refdiff ships it (``SHIPPED_SHAPE_CLASSIFIER``, made by
``shape_classifier(path)`` with SHAPE_CLASSIFIER_TRAIN), for the reason refdiff.digits_eval ships the
digit classifier: retrained on another machine the weights move with the order of floating-point sums,
and every score read with them moves too; here more than there, as the recipe is seed-sensitive (the
comment at SHAPE_CLASSIFIER_TRAIN).

``caption_fidelity`` compares what is read with what each prompt names, per attribute and all at once;
``diversity`` is the mean pairwise distance between samples of one prompt, in pixels, the other side of
classifier-free guidance's trade. The page beside this module: docs/captions.md, "Scoring".
"""

from __future__ import annotations

import dataclasses
import math
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial.distance import pdist

from refdiff.classifier_train import ClassifierTrainConfig, TrainedClassifier, predict_logits, train_classifier
from refdiff.data.captions import (ATTRIBUTES, COLOURS, POSITIONS, SIZES, load_captions, parse_captions, read_colour,
                                   read_position, read_size)
from refdiff.data.shapes import SHAPES
from refdiff.digits_eval import ScoringClassifier, load_or_train

# 600 AdamW steps at batch 64 (6.4 epochs of 6000 images), clean images (t = 0): 99.87% of the 6000 fresh images
# (8 mistakes, all small shapes of 9 to 15 pixels: between circle and diamond, and diamond and cross; 99.88%
# on another 6000, seed 2). About 40 s of one CPU core. The recipe is seed-sensitive: the loss sits at ln 6 for
# 100 to 300 steps (the pooled features of a group-normalised map carry little besides the shape's area, which
# the data makes the same for every shape), and an escape that comes late leaves shapes merged: seed 1 gave
# 97.2%; lr 2e-3 or 5e-3 90.4% and 96.6%; 400 steps 68.8%; 100 warm-up steps 52.5%, 99.7%, 90.4% for seeds 0-2.
SHAPE_CLASSIFIER_TRAIN = ClassifierTrainConfig(steps=600, batch_size=64, lr=3e-3, noisy=False, seed=0)
SHAPE_TRAIN = {"n": 6000, "seed": 0}  # load_captions(held_out=()) arguments of the training images ...
SHAPE_TEST = {"n": 6000, "seed": 1}  # ... and of the fresh images its accuracy is measured on
SHIPPED_SHAPE_CLASSIFIER = Path(str(files("refdiff.data") / "shape_classifier.npz"))
NAMES = {"size": SIZES, "colour": COLOURS, "shape": SHAPES, "position": POSITIONS}  # index -> name per attribute


@dataclasses.dataclass(frozen=True)
class ShapeClassifier(ScoringClassifier):
    """A classifier of the captioned shapes at t = 0 (refdiff.digits_eval.ScoringClassifier): ``features`` (its
    pooled penultimate layer, (N, 32)) and ``predict`` (indices into SHAPES) of host images (N, 3, 16, 16) in
    [-1, 1]; ``test_accuracy`` on fresh images (SHAPE_TEST) and ``train_seconds`` from its run."""


def shape_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Captioned shapes of all 36 (colour, shape) pairs and their shape labels: (x (n, 3, 16, 16), y (n,))."""
    x, _, attributes = load_captions(n, held_out=(), seed=seed)
    return x, attributes["shape"]


def shape_classifier(cache: str | Path | None = None, train_cfg: ClassifierTrainConfig = SHAPE_CLASSIFIER_TRAIN,
                     progress: bool = False) -> ShapeClassifier:
    """The shape classifier: the shipped one (SHIPPED_SHAPE_CLASSIFIER) when ``cache`` is None; else loaded
    from ``cache`` when that file exists, or trained from scratch and saved there.

    Training: the shapes16_classifier preset, train_cfg (SHAPE_CLASSIFIER_TRAIN) on shape_data(**SHAPE_TRAIN);
    its accuracy on the fresh images shape_data(**SHAPE_TEST) is measured once and kept with the weights
    (info["test_accuracy"]). A cache file must hold a 6-class classifier of 3x16x16 images with its
    accuracy (save_classifier's format), else ValueError naming the file.
    """
    from refdiff.models.presets import shapes16_classifier

    cache = SHIPPED_SHAPE_CLASSIFIER if cache is None else cache

    def check(trained: TrainedClassifier) -> None:
        c = trained.cfg
        if (c.in_channels, c.image_size, c.num_classes) != (3, 16, len(SHAPES)) or "test_accuracy" not in trained.info:
            raise ValueError(f"cache {cache} must hold a shape classifier (3x16x16 images, {len(SHAPES)} classes, with "
                             f"its test accuracy), got {c.in_channels}x{c.image_size}x{c.image_size} images and "
                             f"{c.num_classes} classes")

    def train() -> TrainedClassifier:
        trained = train_classifier(train_cfg, shapes16_classifier(), *shape_data(**SHAPE_TRAIN), progress=progress)
        x_test, y_test = shape_data(**SHAPE_TEST)
        trained.info.update(test_accuracy=float(np.mean(np.argmax(predict_logits(trained, x_test), axis=1) == y_test)),
                            train_images=SHAPE_TRAIN, test_images=SHAPE_TEST)
        return trained

    return ShapeClassifier(load_or_train(cache, train_cfg, check, train))


def _check_images(images, least: int) -> np.ndarray:
    """images as a host array, or ValueError naming the argument: (N, 3, 16, 16) floats in [-1, 1], N >= least."""
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[1:] != (3, 16, 16) or x.shape[0] < least or x.dtype.kind != "f":
        raise ValueError(f"images must be (N, 3, 16, 16) floating RGB images with N >= {least} (the shape "
                         f"classifier's input), got shape {x.shape} and dtype {x.dtype}")
    outside = ~(np.abs(x) <= 1)  # NaN included
    if np.any(outside):
        raise ValueError(f"images must hold finite values in [-1, 1] (clip samples first), got {int(outside.sum())} "
                         f"values outside, e.g. {float(x[outside][0])}")
    return x


def read_attributes(images, classifier: ShapeClassifier | None = None) -> dict[str, np.ndarray]:
    """Every attribute of every image, read back: size, colour and position from the pixels (the readers of
    refdiff.data.captions), the shape from the shape classifier (the shipped one if None).

    images: (N, 3, 16, 16) in [-1, 1]. Returns a dict of (N,) int64 arrays "size", "colour", "shape",
    "position" (indices into SIZES, COLOURS, SHAPES, POSITIONS), -1 where nothing is drawn to read (no
    pixel above the readers' FLOOR for size, position and shape; none above 1/2 for the colour).
    """
    x = _check_images(images, 1)
    classifier = shape_classifier() if classifier is None else classifier
    position = read_position(x)
    shape = np.where(position >= 0, classifier.predict(x), -1)  # a blank image has no shape to classify
    return {"size": read_size(x), "colour": read_colour(x), "shape": shape.astype(np.int64), "position": position}


def _named(prompts, n: int) -> dict[str, np.ndarray]:
    """The attributes the prompts name, (N,) int64 each (-1: not named), from captions or an attribute dict."""
    if isinstance(prompts, dict):
        named = {key: np.asarray(prompts.get(key, np.zeros(0))) for key in ATTRIBUTES}
        for key, values in named.items():
            if values.shape != (n,) or values.dtype.kind not in "iu" or np.any((values < -1) | (values >= len(NAMES[key]))):
                raise ValueError(f"prompts[{key!r}] must be ({n},) integers in [-1, {len(NAMES[key])}) (one per image, "
                                 f"-1: not named), got shape {values.shape} and dtype {values.dtype}")
        return named
    try:
        named = parse_captions([prompts] * n if isinstance(prompts, str) else prompts)
    except (TypeError, ValueError) as error:
        raise ValueError(f"prompts must be captions of the grammar of docs/captions.md: {error}") from None
    count = named["size"].shape[0]
    if count != n:
        raise ValueError(f"prompts must hold one prompt per image ({n}), or be one str for all, got {count}")
    return named


def caption_fidelity(images, prompts, classifier: ShapeClassifier | None = None) -> dict[str, Any]:
    """How often each sample shows what its prompt names, per attribute and all at once.

    Math: for attribute k, named_k = {n : prompt n names k}; fraction_k = |{n in named_k : read_k(x_n) ==
          prompt_k(n)}| / |named_k|. "all": over the samples whose prompt names at least one attribute,
          the fraction with every named attribute read right. Attributes a prompt leaves out are not scored.

    images: (N, 3, 16, 16) in [-1, 1] (samples clipped to the data range); prompts: N captions of the grammar
    (a sequence of str), one str for every image, or a dict of (N,) int arrays "size", "colour", "shape",
    "position" with -1 where not named (parse_captions' and load_captions' form); classifier: the shape
    classifier (the shipped one if None). A blank image reads -1 and so counts as wrong for every named
    attribute. Returns {"fraction": {k: float, or None where no prompt names k}, "correct": {k: int},
    "named": {k: int}, for k in ATTRIBUTES and "all"; "samples": N; "shape_classifier_accuracy": float}.
    """
    x = _check_images(images, 1)
    named = _named(prompts, x.shape[0])
    classifier = shape_classifier() if classifier is None else classifier
    read = read_attributes(x, classifier)
    mask = {k: named[k] >= 0 for k in ATTRIBUTES}  # (N,) bool: which prompts name k
    right = {k: read[k] == named[k] for k in ATTRIBUTES}
    mask["all"] = np.any([mask[k] for k in ATTRIBUTES], axis=0)
    right["all"] = np.all([right[k] | ~mask[k] for k in ATTRIBUTES], axis=0)  # every named attribute right
    counts = {k: int(mask[k].sum()) for k in mask}
    correct = {k: int((right[k] & mask[k]).sum()) for k in mask}
    return {"fraction": {k: correct[k] / counts[k] if counts[k] else None for k in mask}, "correct": correct,
            "named": counts, "samples": int(x.shape[0]), "shape_classifier_accuracy": classifier.test_accuracy}


def format_fidelity(report: dict[str, Any]) -> str:
    """caption_fidelity's numbers as printable lines: per attribute the fraction right, as right / named."""
    lines = [f"caption fidelity of {report['samples']} samples (right / named by the prompt):"]
    for k in (*ATTRIBUTES, "all"):
        label = "all named" if k == "all" else k
        fraction = report["fraction"][k]
        value = "not named" if fraction is None else f"{fraction:.2%}"
        lines.append(f"  {label:<10} {value:>9}  {report['correct'][k]:>6} / {report['named'][k]}")
    lines.append(f"  (the shape classifier reads {report['shape_classifier_accuracy']:.2%} of fresh real images right)")
    return "\n".join(lines)


def diversity(images) -> float:
    """The diversity of samples of one prompt: the mean pairwise RMS distance of their pixels.

    Math: D = 2 / (N (N - 1)) sum_{i < j} ||x_i - x_j||_2 / sqrt(3 H W), in the data's units (x in [-1, 1]).

    D = 0 for identical samples and grows as the shapes move apart, change size, colour or shape, up to
    where they stop overlapping: two images whose shapes do not overlap are as far apart as their areas
    make them, wherever the shapes lie. Pixels rather than the shape classifier's pooled features, because
    those features are trained to see the shape alone: among real images of one (colour, shape) they
    barely move with the size and the place (docs/captions.md, "Scoring").

    images: (N, 3, 16, 16) in [-1, 1] with N >= 2. Returns D >= 0 as a float.
    """
    x = _check_images(images, 2).astype(np.float64)
    n = x.shape[0]
    return float(np.mean(pdist(x.reshape(n, -1))) / math.sqrt(x[0].size))  # the N (N - 1) / 2 distances, i < j

"""``refdiff eval``: bits/dim of held-out data under a checkpoint's model, and scores of samples (the
Frechet distance and class fraction of digits, distances of 2-D points)."""

from __future__ import annotations

import argparse
import os

from refdiff.cli.common import _add_image_size, _check_image_size, _check_output_file


def cmd_eval(args: argparse.Namespace) -> int:
    """Bits/dim of held-out data under a checkpoint's model, and/or the Frechet distance and class fraction
    of a samples .npz (--samples) against the held-out digits."""
    from pathlib import Path

    if args.checkpoint is None and args.samples is None:
        raise ValueError("give a checkpoint (bits/dim of held-out data), --samples FILE (Frechet distance and "
                         "class fraction of samples), or both")
    if args.image_size is not None and args.checkpoint is None:
        raise ValueError(f"--image-size {args.image_size} resizes the --data of a checkpoint's bits/dim; --samples "
                         "are scored at their own size: leave it out")
    if args.samples_range is not None and (args.samples is None or args.data.startswith("toy2d:")):
        what = "no --samples FILE" if args.samples is None else f"--data {args.data} scores 2-D points"
        raise ValueError(f"--samples-range {args.samples_range} says how to read the digit images of --samples FILE, "
                         f"but there are none ({what}): leave it out")
    if args.classifier is not None and not Path(args.classifier).is_file():  # trained, then written there
        _check_output_file("--classifier", args.classifier)
    if args.checkpoint is not None:
        _eval_bits_per_dim(args)
    if args.samples is not None:
        _eval_samples(args)
    return 0


def _eval_samples(args: argparse.Namespace) -> None:
    """Print digit_sample_report for the samples .npz of ``refdiff sample`` (images, labels)."""
    from refdiff.checkpoint import read_arrays
    from refdiff.digits_eval import (check_digit_samples, digit_classifier, digit_sample_report, digit_split,
                                     format_sample_report)

    if args.data != "digits" and not args.data.startswith("toy2d:"):
        raise ValueError(f"--samples needs --data digits (the digit classifier knows the 8x8 digits) or "
                         f"toy2d:NAME (2-D points), got {args.data!r}")
    npz = read_arrays(args.samples, "--samples")
    if "images" not in npz:
        raise ValueError(f"--samples {args.samples} must hold an 'images' array (refdiff sample --out FILE.npz), "
                         f"got {sorted(npz)}")
    images = npz["images"]
    labels = npz["labels"] if "labels" in npz and npz["labels"].size else None
    try:  # the samples' shape, dtype and labels, checked before a classifier is loaded or trained
        if args.data.startswith("toy2d:"):
            print(_toy2d_report(args.data[len("toy2d:"):], images, args.seed))
            return
        images, labels = check_digit_samples(images, labels)
        images = _signed_samples(images, args.samples_range)
    except ValueError as err:
        raise ValueError(f"--samples {args.samples}: {err}") from None
    classifier = digit_classifier(args.classifier, progress=True)
    x_train, x_test, y_train, y_test = digit_split()
    report = digit_sample_report(classifier, images, labels, (x_test, y_test), reference=(x_train, y_train),
                                 seed=args.seed)
    print(format_sample_report(report))


def _signed_samples(images, samples_range: str | None):
    """Digit samples already in [-1, 1] (check_digit_samples) as the classifier takes them: [0, 1] images mapped
    by 2 x - 1 for --samples-range 01; without --samples-range, images with no value below 0 are refused, as
    [0, 1] images are the likely cause, which scored as [-1, 1] would give wrong numbers without a word."""
    import numpy as np

    from refdiff.digits_eval import SAMPLE_RANGE_TOLERANCE

    low, high = float(np.min(images)), float(np.max(images))
    if samples_range == "01":
        if low < -SAMPLE_RANGE_TOLERANCE:
            raise ValueError(f"--samples-range 01 takes images in [0, 1], got values in [{low:.6g}, {high:.6g}]")
        return np.clip(2 * images - 1, -1, 1)  # the clip removes the tolerance's overshoot
    if samples_range is None and low >= -SAMPLE_RANGE_TOLERANCE:
        raise ValueError(f"its values lie in [{low:.3g}, {high:.3g}], none below 0, as in [0, 1] images; the digit "
                         "classifier takes [-1, 1] images (refdiff sample's, background -1): map them by 2 x - 1, or "
                         "give --samples-range 01 to have eval map them (--samples-range pm1 if they are [-1, 1] "
                         "images with no value below 0)")
    return images


def _toy2d_report(name: str, samples, seed: int) -> str:
    """Sliced W2 and MMD^2 of 2-D samples (n, 2) to n fresh points of toy2d NAME, next to the floor: the same
    distances between two fresh draws of n points (finite samples are never at distance 0).

    The fresh points come from seeds 10^6 + seed and 10^6 + seed + 1, which no ``refdiff train --data
    toy2d:NAME --seed S`` (training draws seed S) with a small S shares.
    """
    import numpy as np

    from refdiff.data import load_toy2d
    from refdiff.metrics import mmd_rbf, sliced_wasserstein

    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 2 or samples.shape[1] != 2 or samples.shape[0] < 2:
        raise ValueError(f"the samples must hold (n, 2) points with n >= 2 for toy2d data, got {samples.shape}")
    n = samples.shape[0]
    held_out, other = (load_toy2d(name, n, seed=10**6 + seed + k, dtype=np.float64)[0] for k in (0, 1))
    rows = [("sliced W2", sliced_wasserstein(samples, held_out), sliced_wasserstein(other, held_out)),
            ("MMD^2 (RBF, median bandwidth)", mmd_rbf(samples, held_out), mmd_rbf(other, held_out))]
    return "\n".join([f"{n} samples vs {n} fresh {name} points (floor: {n} other fresh points vs the same):"] +
                     [f"  {label}: {value:.4f} (floor {floor:.4f})" for label, value, floor in rows])


def _eval_bits_per_dim(args: argparse.Namespace) -> None:
    """Print the bits/dim of held-out data under a checkpoint's model: the full variational bound over all t."""
    import numpy as np

    from refdiff.backend import Generator, asarray
    from refdiff.generate import load_model
    from refdiff.likelihood import bits_per_dim
    from refdiff.train import TrainConfig

    for name in ("count", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 1, got {getattr(args, name)}")
    loaded = load_model(args.checkpoint, use_ema=not args.raw, backend=args.backend, dtype="float64")
    param = TrainConfig(**loaded.train_cfg).parameterization(args.variance)
    x, levels = _held_out(args.data, args.image_size)
    if tuple(x.shape[1:]) != tuple(loaded.data_shape):
        resize = len(loaded.data_shape) == 3 and x.shape[1] == loaded.data_shape[0]  # images of its channels
        hint = " (--image-size resizes a .npz file or a folder)" if resize else ""
        raise ValueError(f"--data {args.data} gives samples of shape {tuple(x.shape[1:])}, but the model of "
                         f"{args.checkpoint} was trained on samples of shape {tuple(loaded.data_shape)}: evaluate it "
                         f"on data of that shape{hint}")
    x = x[: args.count]
    generator, totals = Generator(args.seed), []
    for start in range(0, x.shape[0], args.batch_size):
        x0 = asarray(x[start : start + args.batch_size].astype(np.float64), like=loaded.like)
        result = bits_per_dim(loaded.model, loaded.schedule, x0, generator, param=param, levels=levels, progress=True)
        totals.append(np.asarray(result.total, dtype=np.float64))
    total = np.concatenate(totals)
    se = total.std(ddof=1) / np.sqrt(total.size) if total.size > 1 else float("nan")
    print(f"bits/dim on {total.size} held-out samples ({levels} levels, {param.variance} variance): "
          f"{total.mean():.4f} +- {se:.4f} (standard error)")


def _held_out(spec: str, image_size: int | None = None):
    """(x, levels) of the held-out data for --data: the digits' test split (17 grey levels), an .npz or a
    folder of images (256 levels; resized to image_size when given)."""
    from pathlib import Path

    from refdiff import data

    _check_image_size(spec, image_size)
    if spec == "digits":
        from refdiff.data.digits import LEVELS

        x, y = data.load_digits()
        return data.train_test_split(x, y, test_fraction=0.1, seed=0)[1], LEVELS
    if spec.endswith(".npz"):
        return data.load_npz(spec, size=image_size)[0], 256
    if Path(spec).is_dir():
        return data.load_image_folder(spec, size=image_size)[0], 256
    if "/" in spec or os.sep in spec:
        raise FileNotFoundError(f"--data {spec}: no such folder")
    raise ValueError(f"--data must be digits, a .npz file or a folder of images, got {spec!r}")


def _add_eval(subparsers: argparse._SubParsersAction) -> None:
    """Register ``refdiff eval``."""
    parser = subparsers.add_parser("eval", help="bits/dim of held-out data, Frechet distance of samples",
                                   description="With a checkpoint: bits/dim of held-out data, the full variational "
                                               "bound (prior, every KL term, the discretized decoder), with the null "
                                               "label for class-conditional models. With --samples: the Frechet "
                                               "distance of the samples vs the held-out digits on a digit "
                                               "classifier's features (next to its floor) and the fraction of "
                                               "samples classified as their label, on the digit classifier refdiff "
                                               "ships (or --classifier FILE).")
    parser.add_argument("checkpoint", nargs="?", default=None, help="path to checkpoint.npz (bits/dim)")
    parser.add_argument("--samples", default=None, metavar="FILE",
                        help="a samples .npz of `refdiff sample --out FILE.npz` (images, labels) to score")
    parser.add_argument("--samples-range", default=None, choices=("pm1", "01"),
                        help="the range of the --samples images: pm1 for [-1, 1] (refdiff sample's), 01 for [0, 1] "
                             "(mapped by 2 x - 1) (default: [-1, 1], refusing images with no value below 0, the "
                             "sign of [0, 1] images)")
    parser.add_argument("--classifier", default=None, metavar="FILE",
                        help="another digit classifier: loaded when FILE exists, else trained (the shipped "
                             "one's recipe) and saved there (default: the shipped one)")
    parser.add_argument("--data", default="digits",
                        help="digits (its held-out split), a .npz file or a folder of images (bits/dim), or "
                             "toy2d:NAME (--samples of 2-D points: sliced W2 and MMD to fresh points, next to "
                             "their floor)")
    _add_image_size(parser)
    parser.add_argument("--count", type=int, default=180, help="held-out samples to evaluate (default: 180)")
    parser.add_argument("--batch-size", type=int, default=180)
    parser.add_argument("--variance", default="fixed_large", choices=("fixed_small", "fixed_large"),
                        help="reverse variance of a model without learned variances (default: fixed_large)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    parser.add_argument("--backend", default="numpy", choices=("numpy", "cupy"))
    parser.set_defaults(func=cmd_eval)

"""Time to a good sample: the demo's model trained for several lengths, each scored as the demo scores it.

Run: python benchmarks/bench_quality.py [--steps 300 400 600 800] [--seeds 0 1 2] [--batch-size 64]
                                        [--lr 4e-3] [--per-class 30] [--weighting none] [--out DIR] [--json FILE]
(about a minute per run of 600 steps on a 2-core CPU, with sampling and scoring)

For every training length and seed, a fresh run of ``refdiff demo``'s training (digits8 U-Net,
class-conditional, the demo's TrainConfig with the options given; the learning rate warms up over
min(100, steps / 5) steps and decays to 0 at the run's end, so a 500-step run is a whole run, not
the first quarter of a 2000-step one) is timed, then sampled as the demo samples (DDIM, classifier-free
guidance, EMA weights, ``--per-class`` per class: 30 by default, three times the demo's, so that the
scores' own noise is smaller than the differences they judge) and scored with the digit classifier: the Frechet
distance to the 180 held-out digits and the fraction of samples classified as their label, beside
the real-digit reference (real training digits of the same class counts) and the floor.

Prints a row per run, then per length the mean and the range over the seeds; writes
``quality_curve.png`` (Frechet distance and class fraction against training seconds) into ``--out``.
Training time excludes sampling and scoring.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

from refdiff import parallel
from refdiff.data.digits import NUM_CLASSES
from refdiff.demo import DEMO_TRAIN
from refdiff.digits_eval import digit_classifier, digit_sample_report, digit_split
from refdiff.generate import generate, load_model
from refdiff.models.presets import PRESETS
from refdiff.plot import curves
from refdiff.train import train


def run(steps: int, seed: int, args, split: tuple, classifier) -> dict:
    """Train one demo model for ``steps`` steps, sample and score it; returns its row."""
    x_train, x_test, y_train, y_test = split
    cfg = dataclasses.replace(DEMO_TRAIN, steps=steps, seed=seed, batch_size=args.batch_size, lr=args.lr,
                              warmup_steps=min(DEMO_TRAIN.warmup_steps, steps // 5), weighting=args.weighting,
                              ema_decay=args.ema_decay, checkpoint_every=steps)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        state = train(cfg, PRESETS["digits8"](num_classes=NUM_CLASSES), x_train, y_train, tmp, progress=False)
        train_s = time.perf_counter() - start
        loaded = load_model(pathlib.Path(tmp) / "checkpoint.npz")
    labels = np.repeat(np.arange(NUM_CLASSES), args.per_class)
    start = time.perf_counter()
    images = generate(loaded, (labels.size, *loaded.data_shape), labels, "ddim", args.sample_steps,
                      guidance=args.guidance, seed=seed)
    sample_s = time.perf_counter() - start
    report = digit_sample_report(classifier, images, labels, (x_test, y_test), reference=(x_train, y_train),
                                 seed=seed)
    return {"steps": steps, "seed": seed, "train_s": train_s, "sample_s": sample_s, "loss": state.losses[-1],
            "frechet": report["fd"], "class_fraction": report["class_fraction"], "reference": report["fd_real"],
            "floor": report["fd_floor"]}


def summarize(rows: list[dict], lengths: list[int]) -> list[dict]:
    """Per length: mean and range over the seeds of each number."""
    out = []
    for steps in lengths:
        group = [r for r in rows if r["steps"] == steps]
        out.append({"steps": steps, **{key: (statistics.mean(r[key] for r in group), min(r[key] for r in group),
                                             max(r[key] for r in group))
                                       for key in ("train_s", "frechet", "class_fraction", "reference")}})
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[300, 400, 600, 800])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=DEMO_TRAIN.batch_size)
    parser.add_argument("--lr", type=float, default=DEMO_TRAIN.lr)
    parser.add_argument("--ema-decay", type=float, default=DEMO_TRAIN.ema_decay)
    parser.add_argument("--weighting", default=DEMO_TRAIN.weighting, choices=("none", "min_snr"))
    parser.add_argument("--per-class", type=int, default=30, help="samples per class")
    parser.add_argument("--sample-steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("out/bench_quality"))
    parser.add_argument("--json", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    split, classifier = digit_split(), digit_classifier(args.out / "digit_classifier.npz")
    results = {"command": " ".join(["python", "benchmarks/bench_quality.py"] + sys.argv[1:]),
               "threads": parallel.get_num_threads(), "load_before": os.getloadavg(), "runs": []}
    print(f"{os.cpu_count()} cores, load average {results['load_before'][0]:.2f}; demo model, batch "
          f"{args.batch_size}, lr {args.lr:g}, EMA {args.ema_decay:g}, weighting {args.weighting}, DDIM "
          f"{args.sample_steps} steps, guidance {args.guidance:g}, {args.per_class} samples per class")
    print("| steps | seed | train s | sample s | final loss | Frechet | class fraction | real-digit reference |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for steps in args.steps:
        for seed in args.seeds:
            r = run(steps, seed, args, split, classifier)
            results["runs"].append(r)
            print(f"| {steps} | {seed} | {r['train_s']:.1f} | {r['sample_s']:.1f} | {r['loss']:.4f} | "
                  f"{r['frechet']:.3f} | {100 * r['class_fraction']:.0f}% | {r['reference']:.3f} |", flush=True)
    results["summary"] = summary = summarize(results["runs"], args.steps)
    print("\n| steps | train s | Frechet, mean (range) | class fraction, mean (range) | reference, mean |")
    print("|---:|---:|---:|---:|---:|")
    for s in summary:
        fd, cf = s["frechet"], s["class_fraction"]
        print(f"| {s['steps']} | {s['train_s'][0]:.1f} | {fd[0]:.3f} ({fd[1]:.3f}-{fd[2]:.3f}) | "
              f"{100 * cf[0]:.1f}% ({100 * cf[1]:.0f}-{100 * cf[2]:.0f}%) | {s['reference'][0]:.3f} |")
    seconds = np.array([s["train_s"][0] for s in summary])
    curves({"Frechet distance (mean over seeds)": (seconds, np.array([s["frechet"][0] for s in summary])),
            "real-digit reference": (seconds, np.array([s["reference"][0] for s in summary])),
            "1 - class fraction": (seconds, 1 - np.array([s["class_fraction"][0] for s in summary]))},
           args.out / "quality_curve.png", xlabel="training seconds", ylabel="score (lower is better)")
    results["load_after"] = os.getloadavg()
    print(f"wrote {args.out / 'quality_curve.png'}; load average after {results['load_after'][0]:.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()

"""Batch parts on one core, on threads and in worker processes: the denoisers' step, interleaved.

Run: python benchmarks/bench_parts.py [--presets digits8 mnist28 text16] [--repeats 10]
     [--min-part-pixels 2500 1000] [--json FILE]          (about 2 minutes on a 2-core CPU)

For each preset, a float32 training forward and backward at its batch (digits8 and mnist28: 64,
text16: 32 with captions) and a sampling forward (200, 256, 192), timed in rounds that run every
layout once each (so a burst of load from another process hits them alike), medians printed:

- ``one core``: refdiff.parallel.set_num_threads(1): the batch in cache-sized parts, one after another;
- ``threads``: the parts on refdiff's threads (set_processes(False));
- ``processes``: the parts beyond the first in worker processes (refdiff.workers; the default);

each with refdiff.parallel's own least pixels a part (MIN_PART_PIXELS on threads, MIN_PART_PIXELS_PROCESSES
in processes: whether a small batch is split at all), or at every ``--min-part-pixels`` given. The
parts' numbers are the same in every layout (tests/test_workers.py); only the time differs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

from refdiff import parallel
from refdiff.backend import Generator
from refdiff.data.captions import load_captions, tokenize
from refdiff.models import registry
from refdiff.models.presets import PRESETS, TEXT_PRESETS

BATCHES = {"digits8": (64, 200), "mnist28": (64, 256), "text16": (32, 192)}  # (training, sampling)
LAYOUTS = ("one core", "threads", "processes")


def _model(preset: str):
    """(cfg, family, params, training inputs, sampling inputs): float32, inputs (x, t, y or None)."""
    cfg = (TEXT_PRESETS if preset in TEXT_PRESETS else PRESETS)[preset]()
    family = registry.family(cfg, "denoiser")
    params = family.init_params(cfg, Generator(0))
    rng = np.random.default_rng(1)
    params = {k: v + np.float32(0.01) * rng.standard_normal(v.shape, dtype=np.float32) for k, v in params.items()}
    inputs = []
    for N in BATCHES[preset]:
        if preset in TEXT_PRESETS:
            x, captions, _ = load_captions(N, seed=2)
            y = tokenize(captions)[0]
        else:
            x = rng.standard_normal((N, cfg.in_channels, cfg.image_size, cfg.image_size), dtype=np.float32)
            y = None
        inputs.append((x.astype(np.float32), rng.integers(0, 1000, N), y))
    return cfg, family, params, inputs


DEFAULT_PIXELS = (parallel.MIN_PART_PIXELS, parallel.MIN_PART_PIXELS_PROCESSES)


def _layout(name: str, threads: int, min_pixels: int | None) -> None:
    """Set refdiff.parallel to a layout, with its default least pixels a part or min_pixels for both."""
    parallel.set_num_threads(1 if name == "one core" else threads)
    parallel.set_processes(name == "processes")
    parallel.MIN_PART_PIXELS, parallel.MIN_PART_PIXELS_PROCESSES = DEFAULT_PIXELS if min_pixels is None else (
        min_pixels, min_pixels)


def measure(preset: str, args) -> dict:
    """{(layout, min pixels): {"train": [s, ...], "sample": [s, ...], "parts": (train, sample)}}."""
    cfg, family, params, (train_in, sample_in) = _model(preset)
    forward, backward = family.in_parts()

    def train():
        out, cache = forward(params, cfg, *train_in, train=True)
        backward(out, cache)

    def sample():
        forward(params, cfg, *sample_in, keep_cache=False)

    settings = [(name, pixels) for pixels in args.min_part_pixels for name in LAYOUTS
                if not (name == "one core" and pixels != args.min_part_pixels[0])]
    times = {s: {"train": [], "sample": []} for s in settings}
    for round_ in range(args.repeats + 1):  # round 0 warms up (and starts the workers)
        for setting in settings:
            _layout(setting[0], args.threads, setting[1])
            for kind, fn in (("train", train), ("sample", sample)):
                start = time.perf_counter()
                fn()
                if round_:
                    times[setting][kind].append(time.perf_counter() - start)
    for setting in settings:
        _layout(setting[0], args.threads, setting[1])
        times[setting]["parts"] = tuple(len(parallel.batch_parts(x.shape[0], x)) for x, _, _ in (train_in, sample_in))
    return times


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(BATCHES), choices=list(BATCHES))
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds (default 10)")
    parser.add_argument("--threads", type=int, default=parallel.get_num_threads(),
                        help="threads or executors for the split layouts (default: refdiff's default)")
    parser.add_argument("--min-part-pixels", type=int, nargs="+", default=[None], metavar="P",
                        help="least pixels a part, for threads and processes alike (default: refdiff's own, "
                             f"{parallel.MIN_PART_PIXELS} and {parallel.MIN_PART_PIXELS_PROCESSES})")
    parser.add_argument("--json", help="also write the times to this file")
    args = parser.parse_args(argv)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f} "
          f"before; threads {args.threads}; medians of {args.repeats} interleaved rounds, ms; "
          f"BLAS: {parallel.blas_summary()}")
    results = {}
    for preset in args.presets:
        results[preset] = measure(preset, args)
        train_n, sample_n = BATCHES[preset]
        print(f"\n{preset}: training forward + backward, batch {train_n}; sampling forward, batch {sample_n}")
        print(f"{'layout':>10} {'min pixels':>10} {'parts':>9} {'train':>8} {'sample':>8}")
        for (name, pixels), t in results[preset].items():
            print(f"{name:>10} {pixels or 'default':>10} {'%d, %d' % t['parts']:>9} {statistics.median(t['train']) * 1e3:8.1f} "
                  f"{statistics.median(t['sample']) * 1e3:8.1f}")
    print(f"\nload {os.getloadavg()[0]:.2f} after")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({p: {f"{n} {px or 'default'}": t for (n, px), t in r.items()} for p, r in results.items()}, f, indent=1)
    return results


if __name__ == "__main__":
    main()

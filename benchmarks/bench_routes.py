"""Which speed-up does what: the U-Net training step and sampling forward from the reference path to
the speed layer, one route switched on at a time, timed in one run, interleaved, next to PyTorch.

Run: python benchmarks/bench_routes.py [--threads 2] [--repeats 7] [--json FILE]
(about 4 minutes on a 2-core CPU)

Configurations, each adding one route to the one before:

  reference     refdiff's reference path (refdiff.speed.reference_path): every layer's textbook form,
                the whole batch as one part, BLAS on one thread (refdiff.parallel's thread layout)
  +fast layers  the speed forms of the layers (refdiff/layers/fast.py and conv.py's speed section:
                fused group norm, sums as ones-vector products, in-place SiLU backward, the conv
                backward as larger products, im2col for thin inputs); still one part, one thread
  +parts        the batch split into parts of PART_SIZE images, run one after the other (caches)
  +threads      the parts on --threads worker threads, BLAS on one thread in each: refdiff as it is

glibc malloc tuning (refdiff.parallel._keep_freed_memory) is process-wide: once the first speed-layer
round (in the warm-up) has applied it, every timed row (PyTorch's too) runs with it. Run with REFDIFF_MALLOC_TUNING=0 for
the table without it, and compare. PyTorch (the twin of benchmarks/torch_twin.py, --threads threads)
is timed in every round. Median ms over --repeats.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import statistics
import sys
import time

import numpy as np

from refdiff import backend as bk
from refdiff import parallel, speed
from refdiff.models import unet as U
from refdiff.models.presets import PRESETS

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_unet  # noqa: E402


# ------------------------------------------------------------------ switching routes

ROUTES = ("reference", "+fast layers", "+parts", "+threads")
FAST, PARTS, THREADS = 1, 2, 3  # the level from which each route is on


@contextlib.contextmanager
def one_part():
    """batch_parts returns the whole batch for the duration of the block."""
    saved = parallel.batch_parts
    parallel.batch_parts = lambda N, like: [slice(0, N)]
    try:
        yield
    finally:
        parallel.batch_parts = saved


@contextlib.contextmanager
def route(level: int, threads: int):
    """refdiff with the first ``level`` + 1 configurations of ROUTES switched on."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(speed.reference_path(level < FAST))
        if level < PARTS:
            stack.enter_context(one_part())
        parallel.set_num_threads(threads if level >= THREADS else 1)
        yield


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--sample-batch", type=int, default=256)
    parser.add_argument("--json", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    cfg = PRESETS["mnist28"]()
    flop = 2 * U.flops(cfg)[1]
    params = U.init_params(cfg, bk.Generator(0))
    rng = np.random.default_rng(1)
    params = {k: v + 0.01 * rng.standard_normal(v.shape, dtype=np.float32) for k, v in params.items()}
    batch, sample = bench_unet._data(cfg, args.batch, 2), bench_unet._data(cfg, args.sample_batch, 3)
    numpy_backend = bk.get_backend("numpy")
    ours = bench_unet.RefdiffModel(numpy_backend, cfg, params, batch, sample)
    theirs = bench_unet.TorchModel("cpu", cfg, params, batch, sample)
    tuning = os.environ.get("REFDIFF_MALLOC_TUNING") != "0"
    results = {"command": " ".join(["python", "benchmarks/bench_routes.py"] + sys.argv[1:]),
               "threads": args.threads, "load_before": os.getloadavg(), "part_size": parallel.PART_SIZE,
               "malloc_tuning": tuning}
    for key, N, factor in (("train", args.batch, 3), ("forward", args.sample_batch, 1)):
        fn = "train_step" if key == "train" else "forward"
        times = {name: [] for name in ROUTES + ("torch",)}
        for r in range(args.repeats + 1):  # round 0 warms up
            for level, name in enumerate(ROUTES):
                with route(level, args.threads):
                    start = time.perf_counter()
                    getattr(ours, fn)()
                    times[name].append(time.perf_counter() - start)
            start = time.perf_counter()
            getattr(theirs, fn)()
            times["torch"].append(time.perf_counter() - start)
        torch_ms = 1e3 * statistics.median(times["torch"][1:])
        results[key] = {name: {"median_ms": 1e3 * statistics.median(ts[1:]),
                               "gflop_per_s": factor * flop * N / statistics.median(ts[1:]) / 1e9,
                               "ratio_to_torch": 1e3 * statistics.median(ts[1:]) / torch_ms}
                        for name, ts in times.items()}
    parallel.set_num_threads(args.threads)
    results["load_after"] = os.getloadavg()
    print(f"mnist28, {args.threads} threads, PART_SIZE {parallel.PART_SIZE}, malloc tuning "
          f"{'on (from the warm-up on, for every row)' if tuning else 'off'}, load "
          f"{results['load_before'][0]:.2f} -> {results['load_after'][0]:.2f}")
    print(f"| configuration | train step b{args.batch} ms | GFLOP/s | / PyTorch | forward b{args.sample_batch} ms "
          "| GFLOP/s | / PyTorch |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in ROUTES + ("torch",):
        tr, fw = results["train"][name], results["forward"][name]
        print(f"| {name} | {tr['median_ms']:.0f} | {tr['gflop_per_s']:.0f} | {tr['ratio_to_torch']:.2f} "
              f"| {fw['median_ms']:.0f} | {fw['gflop_per_s']:.0f} | {fw['ratio_to_torch']:.2f} |")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()

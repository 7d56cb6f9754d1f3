"""A sampling forward's normalize-and-activate steps: group_norm_silu against the layers in turn.

Run: python benchmarks/bench_norm_silu.py [--preset digits8] [--batch 200] [--rounds 20]

Times the U-Net's sampling forward (``keep_cache=False``, one BLAS thread, one part) with each block's
group norm, AdaGN and SiLU as refdiff runs them there (refdiff.layers.norm.group_norm_silu, its speed
form fused) and as the layers' own speed forms in turn (what a training forward runs), alternated call
by call in one process so that load from other processes hits both alike; each timed call follows an
untimed one of the same kind. Then the step alone at the preset's activation shapes (fastest of 7).
Prints medians, their ratio and the largest difference between the two forwards' outputs.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import statistics
import sys
import time
import timeit

import numpy as np

from refdiff import backend as bk
from refdiff import parallel
from refdiff.layers import basic, norm
from refdiff.models import blocks as B
from refdiff.models import unet as U
from refdiff.models.presets import PRESETS

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_unet as BU  # noqa: E402  (the same models and batches as bench_unet.py)

FUSED = B._norm_silu


def layers_in_turn(x, gamma, beta, groups, keep_cache, scale=None, shift=None):
    """blocks._norm_silu as a cache-keeping forward runs it: the layers one after the other."""
    return FUSED(x, gamma, beta, groups, True, scale, shift)


def whole_forward(model, rounds: int) -> dict:
    """{"layers": seconds, "fused": seconds} of model.forward(), alternated call by call."""
    times = {"layers": [], "fused": []}
    for _ in range(rounds):
        for name, form in (("layers", layers_in_turn), ("fused", FUSED)):
            B._norm_silu = form
            model.forward()
            start = time.perf_counter()
            model.forward()
            times[name].append(time.perf_counter() - start)
    B._norm_silu = FUSED
    return {name: statistics.median(t) for name, t in times.items()}


def one_step(shape: tuple, groups: int) -> dict:
    """Seconds of silu(GN(x)) at shape (N, H, W, C): fused, and the two layers' forwards in turn."""
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    gamma, beta = np.ones(shape[-1], np.float32), np.zeros(shape[-1], np.float32)
    calls = {"layers": lambda: basic.silu_forward(norm.group_norm_forward(x, gamma, beta, groups)[0]),
             "fused": lambda: norm.group_norm_silu(x, gamma, beta, groups)}
    n = max(3, int(3e7 // x.size))
    return {name: min(timeit.repeat(call, number=n, repeat=7)) / n for name, call in calls.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="digits8", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)

    parallel.set_num_threads(1)
    cfg = PRESETS[args.preset]()
    params = U.init_params(cfg, bk.Generator(0))
    rng = np.random.default_rng(1)  # away from the zero-initialised output conv, so outputs differ from 0
    params = {k: v + (0.3 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in params.items()}
    model = BU.RefdiffModel(bk.get_backend("numpy"), cfg, params, BU._data(cfg, 64, 2), BU._data(cfg, args.batch, 3))
    load = os.getloadavg()[0]
    B._norm_silu = layers_in_turn
    y_layers = model.forward()
    B._norm_silu = FUSED
    y_fused = model.forward()
    medians = whole_forward(model, args.rounds)
    with parallel.one_blas_thread():  # the layout the forwards ran in
        blas = parallel.blas_summary()
    print(f"{args.preset} sampling forward, batch {args.batch}, one thread ({blas}):")
    print(f"  layers in turn {1e3 * medians['layers']:.2f} ms, group_norm_silu {1e3 * medians['fused']:.2f} ms, "
          f"ratio {medians['fused'] / medians['layers']:.3f} (medians of {args.rounds})")
    print(f"  max |difference| / max |output|: {np.abs(y_fused - y_layers).max() / np.abs(y_layers).max():.1e}")
    print("| activation (N, H, W, C) | layers in turn us | group_norm_silu us | ratio |\n|---|---:|---:|---:|")
    with parallel.one_blas_thread():
        for shape in sorted({(args.batch, s, s, c) for s, c in activation_shapes(cfg)}, key=lambda s: -math.prod(s)):
            t = one_step(shape, cfg.groups)
            print(f"| {shape} | {1e6 * t['layers']:.0f} | {1e6 * t['fused']:.0f} | {t['fused'] / t['layers']:.2f} |")
    print(f"load average (1 min) before / after: {load:.2f} / {os.getloadavg()[0]:.2f}")


def activation_shapes(cfg) -> list[tuple[int, int]]:
    """(side, channels) of every ResBlock's two normalize-and-activate steps in the U-Net's plan."""
    return [(cfg.image_size >> step.level, c) for step in U.unet_plan(cfg) if step.kind == "res"
            for c in (step.c_in, step.c_out)]


if __name__ == "__main__":
    main()

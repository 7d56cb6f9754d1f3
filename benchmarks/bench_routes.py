"""Which speed-up did what: the U-Net training step and sampling forward with each route of issue 3
switched on in turn, timed in one run, interleaved, next to PyTorch.

Run: python benchmarks/bench_routes.py [--threads 2] [--repeats 7] [--json FILE]
(about 4 minutes on a 2-core CPU)

Configurations, each adding one route to the one before (the first is the code before issue 3; the
order puts the routes that change how the work is scheduled before the conv backward, whose
products are sized for one BLAS thread on a part of the batch):

  baseline      group norm as the step-by-step chain with reductions over two axes at once, sigmoid
                as exp(-|x|) with a where(), conv backward = conv2d_backward_reference (per-image dw
                products summed, dx scattered window by window), nine depth-1 products for the
                1-channel input conv, the whole batch at once, BLAS on --threads threads
  +elementwise  group norm: per-channel sums as products with a ones vector (column_sums), the
                closed-form backward; sigmoid via tanh; SiLU backward in place (refdiff.layers.norm,
                .basic)
  +parts        the batch split into parts of PART_SIZE images, run one after the other (caches),
                BLAS still on --threads threads
  +threads      the parts run on --threads worker threads, BLAS on one thread in each
                (refdiff.parallel.parallel_map)
  +conv         conv2d_backward: dw one long product per offset, dx as the correlation of dy with
                the flipped kernel, db as column_sums; im2col for thin inputs (refdiff.layers.conv):
                refdiff as it is

glibc malloc tuning (refdiff.parallel._keep_freed_memory) is process-wide: once the first threaded
round has applied it, every row (PyTorch's too) runs with it. Run with REFDIFF_MALLOC_TUNING=0 for
the table without it, and compare.

The "before" versions of the elementwise layers are written out below (the code refdiff had before
issue 3); the conv reference is refdiff's own conv2d_backward_reference. PyTorch (the twin of
benchmarks/torch_twin.py, --threads threads) is timed in every round. Median ms over --repeats.
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
from threadpoolctl import threadpool_limits

from refdiff import backend as bk
from refdiff import parallel
from refdiff.layers import basic, conv, norm
from refdiff.models import blocks, unet
from refdiff.models import unet as U
from refdiff.models.presets import PRESETS

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_unet


# ------------------------------------------------------------- the layers before issue 3

def sigmoid_before(x):
    xp = bk.namespace(x)
    z = xp.exp(-xp.abs(x))  # in (0, 1]
    return xp.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z))


def silu_backward_before(dy, cache):
    x, sig = cache
    return dy * (sig * (1.0 + x * (1.0 - sig)))


def group_norm_forward_before(x, gamma, beta, groups, eps=1e-5):
    xp = bk.namespace(x, gamma, beta)
    N, C = x.shape[0], x.shape[-1]
    S = int(np.prod(x.shape[1:-1]))
    xg = xp.reshape(x, (N, S, groups, C // groups))
    mu = xp.mean(xg, axis=(1, 3), keepdims=True)
    xc = xg - mu
    var = xp.mean(xc * xc, axis=(1, 3), keepdims=True)
    rstd = 1.0 / xp.sqrt(var + eps)
    y = xp.reshape(xc * rstd, tuple(x.shape)) * gamma + beta
    return y, norm.GroupNormCache(xc, rstd, gamma, tuple(x.shape))


def group_norm_backward_before(dy, cache):
    xp = bk.namespace(dy)
    xc, rstd, gamma, x_shape = cache
    N, S, G, Cg = xc.shape
    M = S * Cg
    xhat = xp.reshape(xc * rstd, (N * S, G * Cg))
    dy2 = xp.reshape(dy, (N * S, G * Cg))
    dgamma, dbeta = xp.sum(dy2 * xhat, axis=0), xp.sum(dy2, axis=0)
    dxhat = xp.reshape(dy2 * gamma, (N, S, G, Cg))
    dxc = dxhat * rstd
    drstd = xp.sum(dxhat * xc, axis=(1, 3), keepdims=True)
    dvar = -0.5 * rstd * rstd * rstd * drstd
    dxc = dxc + (2.0 / M) * xc * dvar
    dmu = -xp.sum(dxc, axis=(1, 3), keepdims=True)
    return xp.reshape(dxc + dmu / M, x_shape), dgamma, dbeta


# ------------------------------------------------------------------ switching routes

ROUTES = ("baseline", "+elementwise", "+parts", "+threads", "+conv")
ELEMENTWISE, PARTS, THREADS, CONV = 1, 2, 3, 4  # the level from which each route is on


@contextlib.contextmanager
def patched(module, **names):
    """Replace module-level names for the duration of the block."""
    saved = {name: getattr(module, name) for name in names}
    for name, value in names.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


@contextlib.contextmanager
def route(level: int, threads: int):
    """refdiff with the first ``level`` + 1 configurations of ROUTES switched on."""
    with contextlib.ExitStack() as stack:
        enter = stack.enter_context
        if level < ELEMENTWISE:  # the elementwise layers before issue 3, wherever the blocks call them
            enter(patched(basic, sigmoid=sigmoid_before, silu_backward=silu_backward_before))
            for module in (blocks, norm):
                enter(patched(module, group_norm_forward=group_norm_forward_before,
                              group_norm_backward=group_norm_backward_before))
            enter(patched(blocks, silu_backward=silu_backward_before))
        if level < PARTS:
            enter(patched(parallel, batch_parts=lambda N, like: [slice(0, N)]))
        parallel.set_num_threads(threads if level >= THREADS else 1)
        if level < CONV:
            for module in (blocks, unet, conv):
                enter(patched(module, conv2d_backward=conv.conv2d_backward_reference))
            enter(patched(conv, IM2COL_DEPTH=0))
        enter(threadpool_limits(limits=threads, user_api="blas"))  # parallel_map sets 1 inside
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
          f"{'on (from the first threaded round on, for every row)' if tuning else 'off'}, load "
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

"""Where a U-Net step's time goes, layer by layer: refdiff against its PyTorch twin, one thread each.

Run: python benchmarks/bench_layers.py [--preset digits8] [--forward] [--repeats 10]

Times the training step at batch 64 (or, with ``--forward``, the sampling forward at batch 200 for
digits8, 256 otherwise) of refdiff and of benchmarks/torch_twin.py, interleaved, one BLAS / OpenMP
thread each (the comparison least sensitive to other load on the machine), and prints the medians
and a table of per-layer milliseconds: refdiff's from cProfile's cumulative time per layer function,
PyTorch's from torch.profiler's self-CPU time per aten operator, each as a share of its profiled run
scaled to its unprofiled median (profilers add overhead per call; shares are what they measure best).
"Rest" is the step's median minus the layers listed: Python between layers, concatenations,
residual additions, the loss, and on PyTorch's side the operators not listed.

Then the convolutions one level down: every matrix product refdiff's conv layers made in one such call
(recorded from refdiff.layers.conv and conv_grid: the forward's and dx's k*k products of depth C_in, or
one im2col product for thin inputs; dw's k*k products of depth N*Ho*Wo; a sampling forward's Upsample's
16 products of depth C_in), each timed as a plain 2-D product
(M, K) @ (K, N) through NumPy's BLAS and through torch.matmul (fastest of ``repeats``), so that the BLAS
libraries are compared on the same arithmetic, apart from the windows, copies and additions around it.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import os
import pathlib
import pstats
import re
import statistics
import sys

import numpy as np
from threadpoolctl import threadpool_limits

from refdiff import backend as bk
from refdiff import parallel
from refdiff.layers import conv as C
from refdiff.layers import conv_grid as G
from refdiff.models import unet as U
from refdiff.models.presets import PRESETS

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_unet as BU  # noqa: E402  (the same models and batches as bench_unet.py)
from bench_load import time_steps  # noqa: E402

# layer: (refdiff functions, cumulative; PyTorch aten operators, self time; None: not separable)
LAYERS = {
    "conv forward": (["conv2d_forward_fast"], ["aten::mkldnn_convolution"]),
    "conv backward": (["conv2d_backward_fast"], ["aten::convolution_backward"]),
    "group norm (forward + backward)": (["group_norm_forward", "group_norm_backward"],
                                        ["aten::native_group_norm", "aten::native_group_norm_backward"]),
    "SiLU (forward + backward)": (["silu_forward", "silu_backward"], ["aten::silu", "aten::silu_backward"]),
    "AdaGN scale-shift": (["scale_shift_forward", "scale_shift_backward"], None),
    "GN + AdaGN + SiLU fused (sampling forward)": (["group_norm_silu"], None),
    "attention": (["self_attention_forward", "self_attention_backward"], None),
    "optimizer (Adam)": (["adamw_step"], "Optimizer.step"),
}


def refdiff_layers(fn, repeats: int, median: float) -> dict:
    """ms per call of each LAYERS entry: cProfile's cumulative share scaled to the unprofiled median."""
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(repeats):
        fn()
    profile.disable()
    stats = pstats.Stats(profile).stats
    total = sum(entry[2] for entry in stats.values())  # own times add up to the profiled run

    def cumulative(name: str) -> float:  # the outermost entry of a name (the textbook form calls the fast one)
        return max([entry[3] for key, entry in stats.items() if key[2] == name] or [0.0])

    return {layer: 1e3 * median * sum(cumulative(n) for n in names) / total for layer, (names, _) in LAYERS.items()}


def torch_layers(fn, repeats: int, median: float) -> dict:
    """ms per call of each LAYERS entry from torch.profiler, scaled to the unprofiled median."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            fn()
    events = prof.key_averages()
    own = {e.key: e.self_cpu_time_total for e in events}
    total = sum(own.values())
    out = {}
    for layer, (_, ops) in LAYERS.items():
        if ops is None:
            out[layer] = float("nan")
        elif isinstance(ops, str):  # the optimizer step: its whole time, children included
            out[layer] = 1e3 * median * sum(e.cpu_time_total for e in events if e.key.startswith(ops)) / total
        else:
            out[layer] = 1e3 * median * sum(own.get(op, 0.0) for op in ops) / total
    return out


def conv_products(fn) -> collections.Counter:
    """{(M, K, N): count} of the (M, K) @ (K, N) products refdiff's convolutions make in one call of fn
    (on the flat grid M counts its padding positions: the products are that long)."""
    products = collections.Counter()
    correlate, shifted, backward = C._correlate, G.shifted_products, C.conv2d_backward_fast

    def correlate_counted(a_pad, w, stride, Ho, Wo):  # the forward off the grid, and dx at stride 1
        k, C_in, C_out = w.shape[0], w.shape[2], w.shape[3]
        M = a_pad.shape[0] * Ho * Wo
        if k > 1 and k * k * C_in <= C.IM2COL_DEPTH:
            products[(M, k * k * C_in, C_out)] += 1  # im2col: one product of depth k*k*C_in
        else:
            products[(M, C_in, C_out)] += k * k  # one product per kernel offset
        return correlate(a_pad, w, stride, Ho, Wo)

    def shifted_counted(grid_rows, taps, m, P):  # on the grid: the forward, its dx, the Upsample's phases
        C_in, C_out = taps[0][1].shape
        products[(P, C_in, C_out)] += len(taps)  # one product per tap
        return shifted(grid_rows, taps, m, P)

    def backward_counted(dy, cache):
        N, Ho, Wo, C_out = dy.shape
        k, C_in = cache.w.shape[0], cache.w.shape[2]
        M = N * (Ho + k // 2) * (Wo + k // 2) if cache.x_pad.ndim == 2 else N * Ho * Wo  # grid or windows
        products[(C_in, M, C_out)] += k * k  # dw[i, j] = X_ij^T dY
        if cache.stride != 1 or cache.padding > k - 1:  # dx by taps (stride 1: a correlation, counted there)
            products[(N * Ho * Wo, C_out, C_in)] += k * k
        return backward(dy, cache)

    C._correlate, G.shifted_products, C.conv2d_backward_fast = correlate_counted, shifted_counted, backward_counted
    try:
        fn()
    finally:
        C._correlate, G.shifted_products, C.conv2d_backward_fast = correlate, shifted, backward
    return products


def product_seconds(products: dict, repeats: int) -> dict:
    """{(M, K, N): (NumPy s, PyTorch s)} for one (M, K) @ (K, N) float32 product, fastest of ``repeats``."""
    import torch

    rng, out = np.random.default_rng(0), {}
    for M, K, N in products:
        a, b = rng.standard_normal((M, K), dtype=np.float32), rng.standard_normal((K, N), dtype=np.float32)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        out[(M, K, N)] = (min(time_steps(lambda: a @ b, repeats)), min(time_steps(lambda: ta @ tb, repeats)))
    return out


def print_products(products: dict, seconds: dict) -> None:
    """The products as a Markdown table, the most NumPy time first, and their totals."""
    import torch

    torch_blas = re.findall(r"BLAS_INFO=\w+", torch.__config__.show())
    print(f"\nconv products as 2-D products, one thread: NumPy ({parallel.blas_summary()}) against torch.matmul "
          f"({', '.join(torch_blas)})")
    print("| (M, K) @ (K, N) | count | NumPy GFLOP/s | PyTorch GFLOP/s | NumPy ms | PyTorch ms |\n|---|---:|---:|---:|---:|---:|")
    total = {"flop": 0.0, "numpy": 0.0, "torch": 0.0}
    for (M, K, N), count in sorted(products.items(), key=lambda kv: -seconds[kv[0]][0] * kv[1]):
        flop, (ours, theirs) = 2.0 * M * K * N, seconds[(M, K, N)]
        total["flop"] += flop * count
        total["numpy"] += ours * count
        total["torch"] += theirs * count
        print(f"| ({M}, {K}) @ ({K}, {N}) | {count} | {flop / ours / 1e9:.0f} | {flop / theirs / 1e9:.0f} | "
              f"{1e3 * ours * count:.1f} | {1e3 * theirs * count:.1f} |")
    print(f"all {sum(products.values())} products, {total['flop'] / 1e9:.2f} GFLOP: NumPy {1e3 * total['numpy']:.1f} ms, "
          f"PyTorch {1e3 * total['torch']:.1f} ms ({total['numpy'] / total['torch']:.2f}x)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="digits8", choices=sorted(PRESETS))
    parser.add_argument("--forward", action="store_true", help="the sampling forward instead of the training step")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    parallel.set_num_threads(1)
    cfg = PRESETS[args.preset]()
    params = U.init_params(cfg, bk.Generator(0))
    sample = 200 if args.preset == "digits8" else 256
    batch, sampled = BU._data(cfg, 64, 2), BU._data(cfg, sample, 3)
    ours = BU.RefdiffModel(bk.get_backend("numpy"), cfg, params, batch, sampled)
    twin = BU.TorchModel("cpu", cfg, params, batch, sampled)
    name = "forward" if args.forward else "train_step"
    calls = {"refdiff": getattr(ours, name), "torch": getattr(twin, name)}
    load = os.getloadavg()
    with threadpool_limits(limits=1, user_api="blas"):
        times = BU.interleaved(calls, args.repeats, lambda: None)
        medians = {k: statistics.median(v) for k, v in times.items()}
        rows = {"refdiff": refdiff_layers(calls["refdiff"], args.repeats, medians["refdiff"]),
                "torch": torch_layers(calls["torch"], args.repeats, medians["torch"])}
    what = f"forward b{sample}" if args.forward else "train step b64"
    print(f"{args.preset} {what}, one thread each: refdiff {1e3 * medians['refdiff']:.1f} ms, "
          f"PyTorch {1e3 * medians['torch']:.1f} ms (medians of {args.repeats})")
    print("| layer | refdiff ms | PyTorch ms |\n|---|---:|---:|")
    for layer in LAYERS:
        print(f"| {layer} | {rows['refdiff'][layer]:.1f} | {rows['torch'][layer]:.1f} |")
    rest = {k: 1e3 * medians[k] - float(np.nansum(list(rows[k].values()))) for k in rows}
    print(f"| rest | {rest['refdiff']:.1f} | {rest['torch']:.1f} |")
    with threadpool_limits(limits=1, user_api="blas"):
        products = conv_products(calls["refdiff"])
        print_products(products, product_seconds(products, args.repeats))
    print(f"load average (1 min) before / after: {load[0]:.2f} / {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
